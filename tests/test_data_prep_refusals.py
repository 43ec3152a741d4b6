"""Videos refused one by one: bad segments and missing labels go to report.json, never into a shard.

Real commands (``python -m data_prep.activitynet`` / ``data_prep.sports1m``, ``--no-ray``) on annotation files
written here in the exact formats, with the shared clips as the videos; the shards are read back with
WebDataset. Also: how ``--new-classes`` makes or extends a class list, and a run that writes nothing exits 1.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from data_prep_helpers import run_module, shard_metas


def run(module: str, *args: str) -> subprocess.CompletedProcess:
    return run_module(module, *args, "--no-ray", "--no-progress", "--short-side", "32")


def reasons(out: Path) -> dict[str, str]:
    return {item["id"]: item["reason"] for item in json.loads((out / "report.json").read_text())["skipped"]}


@pytest.fixture()
def videos(tmp_path: Path, shared_dir: Path) -> Path:
    folder = tmp_path / "videos"
    (folder / "train").mkdir(parents=True)
    clip = shared_dir / "videos" / "carphone_distorted.mp4"
    for name in ("good", "inverted", "negative", "nan", "infinite", "unlabelled", "test1", "train/s1", "train/s2",
                 "c1", "c2", "c3"):
        os.symlink(clip, folder / f"{name}.mp4")
    return folder


def test_bad_segments_and_unlabelled_videos_are_refused_per_video(tmp_path: Path, videos: Path) -> None:
    def video(subset: str, *segments: list) -> str:
        annotations = ", ".join(f'{{"segment": [{s}, {e}], "label": "Biking"}}' for s, e in segments)
        return f'{{"subset": "{subset}", "duration": 4.0, "annotations": [{annotations}]}}'

    entries = {"good": video("training", (0.5, 2)), "inverted": video("training", (1, 2), (5, 2)),
               "negative": video("training", (-1, 3)), "nan": video("training", ("NaN", 3)),
               "infinite": video("training", (0, "Infinity")), "unlabelled": video("training"),
               "test1": video("testing")}
    annotation = tmp_path / "anet.json"  # NaN / Infinity as Python's json and many tools write them
    annotation.write_text('{"version": "VERSION 1.3", "taxonomy": [], "database": {'
                          + ", ".join(f'"{vid}": {text}' for vid, text in entries.items()) + "}}")
    out = tmp_path / "out"
    result = run("data_prep.activitynet", "--annotations", str(annotation), "--videos", str(videos), "--out",
                 str(out), "--subsets", "training", "testing")
    assert result.returncode == 0, result.stderr
    assert set(shard_metas(out)) == {"good", "test1"}
    assert shard_metas(out)["test1"]["labels"] == []  # testing videos are unlabelled by design
    why = reasons(out)
    assert why["inverted"] == "bad segment: [5.0, 2.0] ends before it starts"
    assert why["negative"] == "bad segment: [-1.0, 3.0] starts before 0"
    assert why["nan"].startswith("bad segment: [nan, 3.0] is not a finite")
    assert why["infinite"].startswith("bad segment: [0.0, inf] is not a finite")
    assert why["unlabelled"] == "no label: the annotation gives none"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["subsets"]["training"]["annotated"] == 6 and manifest["subsets"]["training"]["present"] == 6
    assert manifest["subsets"]["training"]["videos"] == 1


def test_list_lines_without_a_label_are_refused(tmp_path: Path, videos: Path) -> None:
    (tmp_path / "labels.txt").write_text("Biking\nRunning\n")
    (tmp_path / "train.csv").write_bytes(b"train/s1 100 1\r\ntrain/s2 100\r\n")  # mini-Sports1M format, CRLF
    out = tmp_path / "s1m"
    result = run("data_prep.sports1m", "--list", str(tmp_path / "train.csv"), "--classes", str(tmp_path / "labels.txt"),
                 "--videos", str(videos), "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert {vid: meta["labels"] for vid, meta in shard_metas(out).items()} == {"train/s1": [1]}
    assert reasons(out) == {"train/s2": "no label: the annotation gives none"}
    (tmp_path / "classInd.txt").write_text("0,Biking\n1,Running\n")
    (tmp_path / "anet_train_split.txt").write_text("good,100,1,0\nunlabelled,100\nnegative,100,\n")
    out = tmp_path / "split"
    result = run("data_prep.activitynet", "--annotations", str(tmp_path / "anet_train_split.txt"), "--classes",
                 str(tmp_path / "classInd.txt"), "--videos", str(videos), "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert {vid: meta["labels"] for vid, meta in shard_metas(out).items()} == {"good": [0, 1]}
    assert set(reasons(out)) == {"unlabelled", "negative"}


def test_new_classes_makes_or_extends_the_class_list_only_when_asked(tmp_path: Path, videos: Path) -> None:
    (tmp_path / "labels.txt").write_text("Running\nBiking\n")
    (tmp_path / "a.csv").write_text("path,label\nc1.mp4,Swimming\nc2.mp4,Biking\n")
    (tmp_path / "b.csv").write_text("c3.mp4,Archery\n")
    common = ["--videos", str(videos), "--subset", "training"]
    made = run("data_prep.sports1m", "--list", str(tmp_path / "a.csv"), str(tmp_path / "b.csv"), "--new-classes",
               *common, "--out", str(tmp_path / "made"))
    assert made.returncode == 0, made.stderr
    classes = json.loads((tmp_path / "made" / "manifest.json").read_text())["classes"]
    assert classes == ["Archery", "Biking", "Swimming"]  # both files' labels, sorted: one list for both
    extended = run("data_prep.sports1m", "--list", str(tmp_path / "a.csv"), "--classes", str(tmp_path / "labels.txt"),
                   "--new-classes", *common, "--out", str(tmp_path / "extended"))
    assert extended.returncode == 0, extended.stderr
    manifest = json.loads((tmp_path / "extended" / "manifest.json").read_text())
    assert manifest["classes"] == ["Running", "Biking", "Swimming"]  # the given ids stay, the new one is appended
    assert shard_metas(tmp_path / "extended")["c2"]["labels"] == [1]
    strict = run("data_prep.sports1m", "--list", str(tmp_path / "a.csv"), "--classes", str(tmp_path / "labels.txt"),
                 *common, "--out", str(tmp_path / "strict"))
    assert strict.returncode == 0, strict.stderr
    assert reasons(tmp_path / "strict") == {"c1": "label not in class list: ['Swimming']"}
    assert json.loads((tmp_path / "strict" / "manifest.json").read_text())["classes"] == ["Running", "Biking"]


def test_a_run_that_writes_nothing_exits_non_zero(tmp_path: Path) -> None:
    (tmp_path / "videos").mkdir()
    (tmp_path / "videos" / "v_empty.mp4").write_bytes(b"")
    (tmp_path / "anet.json").write_text(json.dumps({"database": {"empty": {
        "subset": "training", "annotations": [{"segment": [0, 1], "label": "Biking"}]}}}))
    result = run("data_prep.activitynet", "--annotations", str(tmp_path / "anet.json"), "--videos",
                 str(tmp_path / "videos"), "--out", str(tmp_path / "out"))
    assert result.returncode == 1
    assert result.stderr.splitlines() == [f"error: nothing written to {tmp_path / 'out'}: all 1 videos were skipped "
                                          "(empty file (0 bytes) x1); see report.json"]
    assert reasons(tmp_path / "out") == {"empty": "empty file (0 bytes)"}
