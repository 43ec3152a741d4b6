"""FCVID data prep: FCVID's own split list + label matrix, and the AR-Net lists, on real encoded videos.

The annotation files are written here in those formats (FCVID's download is broken, none ships with the repo); the
videos are real H.264 files in FCVID's category-folder layout; the shards are read back.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from data_prep.media import write_video
from data_prep_helpers import run_module, shard_metas

CLASSES = ["basketball", "birthday", "cooking", "dog"]


def _video(path: Path, frames: int = 40, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_video(path, (rng.integers(0, 255, (48, 64, 3), dtype=np.uint8) for _ in range(frames)), fps=8,
                container="mp4")


@pytest.fixture(scope="module")
def fcvid(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("fcvid")
    rows = [("basketball/b1.mp4", "train", [1, 0, 0, 0]), ("basketball/b2.mp4", "test", [1, 0, 0, 0]),
            ("birthday/p1.mp4", "train", [0, 1, 1, 0]),  # two labels: cooking at a birthday party
            ("cooking/c1.mp4", "test", [0, 1, 1, 0]), ("dog/d1.mp4", "train", [0, 0, 0, 1]),
            ("dog/d2.mp4", "test", [0, 0, 0, 0]),  # no label: reported, not written
            ("dog/missing.mp4", "train", [0, 0, 0, 1])]  # no file: reported
    for i, (path, _, _) in enumerate(rows):
        if "missing" not in path:
            _video(root / "videos" / path, seed=i)
    (root / "materials").mkdir()
    (root / "materials/FCVID_VideoName_TrainTestSplit.txt").write_text(
        "".join(f"{p} {s}\r\n" for p, s, _ in rows))  # CRLF, as files from Windows tools come
    (root / "materials/FCVID_Label.txt").write_text("".join(" ".join(map(str, f)) + "\n" for _, _, f in rows))
    (root / "materials/classes.txt").write_text("".join(f"{c}\n" for c in CLASSES))
    return root


def _official(root: Path, out: Path, *extra: str):
    m = root / "materials"
    return run_module("data_prep.fcvid", "--split", str(m / "FCVID_VideoName_TrainTestSplit.txt"), "--labels",
                      str(m / "FCVID_Label.txt"), "--classes", str(m / "classes.txt"), "--videos",
                      str(root / "videos"), "--out", str(out), "--no-ray", "--no-progress", "--min-frames", "4", *extra)


def test_official_files_to_shards_multi_label_kept(fcvid: Path, tmp_path: Path) -> None:
    out = tmp_path / "shards"
    proc = _official(fcvid, out)
    assert proc.returncode == 0, proc.stderr
    metas = shard_metas(out)
    assert sorted(metas) == ["basketball/b1", "basketball/b2", "birthday/p1", "cooking/c1", "dog/d1"]
    assert metas["birthday/p1"]["labels"] == [1, 2] and metas["cooking/c1"]["labels"] == [1, 2]
    assert metas["dog/d1"]["labels"] == [3] and metas["basketball/b2"]["subset"] == "testing"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["dataset"] == "fcvid" and manifest["classes"] == CLASSES
    report = json.loads((out / "report.json").read_text())
    reasons = {s["id"]: s["reason"] for s in report["skipped"]}
    assert "no label" in reasons["dog/d2"] and "dog/missing" in reasons
    again = _official(fcvid, out)  # resume: nothing lost, nothing doubled
    assert again.returncode == 0, again.stderr
    assert sorted(shard_metas(out)) == sorted(metas)


def test_arnet_lists(fcvid: Path, tmp_path: Path) -> None:
    lists = tmp_path / "lists"
    lists.mkdir()
    (lists / "classInd.txt").write_text("".join(f"{i},{c}\n" for i, c in enumerate(CLASSES)))
    (lists / "fcvid_train_split.txt").write_text("basketball/b1,40,0\nbirthday/p1,40,1,2\n")
    (lists / "fcvid_val_split.txt").write_text("dog/d1,40,3\n")
    out = tmp_path / "shards"
    proc = run_module("data_prep.fcvid", "--annotations", str(lists / "fcvid_train_split.txt"),
                      str(lists / "fcvid_val_split.txt"), "--classes", str(lists / "classInd.txt"), "--videos",
                      str(fcvid / "videos"), "--out", str(out), "--no-ray", "--no-progress", "--min-frames", "4")
    assert proc.returncode == 0, proc.stderr
    metas = shard_metas(out)
    assert {k: (m["subset"], m["labels"]) for k, m in metas.items()} == {
        "basketball/b1": ("training", [0]), "birthday/p1": ("training", [1, 2]), "dog/d1": ("validation", [3])}


@pytest.mark.parametrize("case, want", [
    ("short_labels", "FCVID_Label.txt: 6 label rows, but"),
    ("bad_subset", "FCVID_VideoName_TrainTestSplit.txt: line 2: expected '<video path> <train|test>'"),
    ("wide_row", "FCVID_Label.txt: line 3: 5 columns, the class list"),
    ("not_binary", "FCVID_Label.txt: line 1: values must be 0 or 1"),
])
def test_bad_files_are_one_line(fcvid: Path, tmp_path: Path, case: str, want: str) -> None:
    root = tmp_path / "copy"
    (root / "materials").mkdir(parents=True)
    (root / "videos").symlink_to(fcvid / "videos")
    split = (fcvid / "materials/FCVID_VideoName_TrainTestSplit.txt").read_text().splitlines()
    labels = (fcvid / "materials/FCVID_Label.txt").read_text().splitlines()
    if case == "short_labels":
        labels = labels[:-1]
    elif case == "bad_subset":
        split[1] = split[1].replace("test", "validation")
    elif case == "wide_row":
        labels[2] += " 0"
    else:
        labels[0] = labels[0].replace("1", "0.5", 1)
    (root / "materials/FCVID_VideoName_TrainTestSplit.txt").write_text("\n".join(split) + "\n")
    (root / "materials/FCVID_Label.txt").write_text("\n".join(labels) + "\n")
    (root / "materials/classes.txt").write_text((fcvid / "materials/classes.txt").read_text())
    proc = _official(root, tmp_path / "out")
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and want in lines[0], proc.stderr
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").glob("*.tar"))


def test_flags_that_do_not_go_together(fcvid: Path, tmp_path: Path) -> None:
    m = fcvid / "materials"
    proc = run_module("data_prep.fcvid", "--split", str(m / "FCVID_VideoName_TrainTestSplit.txt"), "--classes",
                      str(m / "classes.txt"), "--videos", str(fcvid / "videos"), "--out", str(tmp_path / "o"))
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        "error: --split and --labels go together (FCVID_VideoName_TrainTestSplit.txt, FCVID_Label.txt)"]
