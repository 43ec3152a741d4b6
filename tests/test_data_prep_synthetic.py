"""The synthetic dataset: real formats, seeded, and a class that shows only inside its segments."""

from __future__ import annotations

import colorsys
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest

from data_prep.labels import load_activitynet_json, read_classes
from data_prep.synthetic import class_names, generate, make_shards
from data_prep_helpers import decoded_frames

KW = {"videos": 8, "classes": 4, "duration": (5.0, 7.0), "size": (96, 72), "fps": 8}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate(tmp_path_factory.mktemp("syn") / "a", seed=1, **KW)


def saturated(rgb: np.ndarray) -> np.ndarray:
    """Pixels with strong colour (the background is greyish, the action shapes are saturated)."""
    image = rgb.astype(float)
    return (image.max(axis=2) - image.min(axis=2)) > 100


def test_activitynet_format(dataset: Path) -> None:
    data = json.loads(dataset.read_text())
    assert set(data) == {"version", "taxonomy", "database"} and len(data["database"]) == 8
    names = class_names(4)
    assert read_classes(dataset.parent / "classInd.txt") == names == sorted(names)
    assert load_activitynet_json(dataset).classes == names  # from the taxonomy's leaves
    assert {v["subset"] for v in data["database"].values()} == {"training", "validation"}
    ids = list(data["database"])
    assert ids[0].startswith("-") and all(re.fullmatch(r"[A-Za-z0-9_-]{11}", i) for i in ids)
    per_class = {name: 0 for name in names}
    for vid, video in data["database"].items():
        assert set(video) == {"subset", "duration", "resolution", "url", "annotations"}
        assert 5.0 <= video["duration"] <= 7.0 and video["resolution"] == "96x72"
        labels = {a["label"] for a in video["annotations"]}
        assert len(labels) == 1 and labels <= set(names)
        per_class[labels.pop()] += 1
        for start, end in (a["segment"] for a in video["annotations"]):
            assert 0 < start < end < video["duration"]
        path = dataset.parent / "videos" / f"v_{vid}.mp4"
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            assert container.format.name.startswith("mov,mp4") and stream.codec_context.name == "h264"
            assert (stream.width, stream.height) == (96, 72)
            assert float(stream.duration * stream.time_base) == pytest.approx(video["duration"], abs=0.15)
    assert set(per_class.values()) == {2}


def test_seeded(dataset: Path, tmp_path: Path) -> None:
    again = generate(tmp_path / "b", seed=1, **KW)
    assert again.read_text() == dataset.read_text()
    for vid in list(json.loads(dataset.read_text())["database"])[:3]:
        first = decoded_frames(dataset.parent / "videos" / f"v_{vid}.mp4")[1]
        second = decoded_frames(again.parent / "videos" / f"v_{vid}.mp4")[1]
        assert len(first) == len(second)
        assert max(np.abs(a.astype(int) - b.astype(int)).mean() for a, b in zip(first, second, strict=True)) < 3
    other = generate(tmp_path / "c", seed=2, **{**KW, "videos": 2})
    assert json.loads(other.read_text())["database"].keys() != json.loads(dataset.read_text())["database"].keys()


def test_class_colour_only_inside_segments(dataset: Path) -> None:
    database = json.loads(dataset.read_text())["database"]
    names = class_names(4)
    hues = {}
    for vid, video in database.items():
        segments = [a["segment"] for a in video["annotations"]]
        label = video["annotations"][0]["label"]
        times, frames = decoded_frames(dataset.parent / "videos" / f"v_{vid}.mp4")
        for t, rgb in zip(times, frames, strict=True):
            mask = saturated(rgb)
            margin = any(abs(t - edge) < 0.2 for segment in segments for edge in segment)
            if margin:
                continue
            if any(start <= t <= end for start, end in segments):
                assert mask.sum() > 60, (vid, t)  # the shape is there
                mean = rgb[mask].mean(axis=0) / 255
                hues.setdefault(label, []).append(colorsys.rgb_to_hsv(*mean)[0])
            else:
                assert mask.sum() < 10, (vid, t)  # background: no class colour anywhere
    centres = {name: np.median(values) for name, values in hues.items()}
    assert len(centres) == len(names)
    ordered = sorted(centres.values())
    assert min(b - a for a, b in zip(ordered, ordered[1:])) > 0.1  # four hues, well apart


def test_make_shards_in_process(dataset: Path, tmp_path: Path) -> None:
    summary = make_shards(dataset, tmp_path / "shards", use_ray=False)
    assert summary["written"] == 8 and summary["skipped"] == 0
    manifest = json.loads((tmp_path / "shards" / "manifest.json").read_text())
    assert manifest["classes"] == class_names(4) and manifest["params"]["short_side"] == 128
    assert manifest["params"]["shard_size"] == 8
    assert manifest["subsets"]["training"]["videos"] + manifest["subsets"]["validation"]["videos"] == 8


@pytest.mark.slow
def test_command_writes_dataset_and_shards_on_ray(tmp_path: Path) -> None:
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    command = [sys.executable, "-m", "data_prep.synthetic", "--out", str(tmp_path / "data"), "--videos", "6",
               "--classes", "3", "--seed", "4", "--min-duration", "3", "--max-duration", "4", "--shards",
               str(tmp_path / "shards"), "--shard-size", "2", "--num-cpus", "2", "--no-progress"]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "6 videos in" in result.stdout
    sizes = json.loads((tmp_path / "shards" / "sizes.json").read_text())
    assert sum(sizes.values()) == 6 and all(n <= 2 for n in sizes.values())
    assert (tmp_path / "data" / "activity_net.synthetic.json").is_file()
    nodes = json.loads((tmp_path / "shards" / "report.json").read_text())["nodes"]  # one node: this machine's Ray
    (ip, did), = nodes.items()
    assert sorted(did["shards"]) == sorted(sizes) and len(set(did["videos"])) == 6 and ip.count(".") == 3
