"""The benchmark task (``data_prep.synthetic --task bench``): real formats, seeded, an actor only inside its
segments, classes that no colour names, and segments that vary in position and length."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from data_prep import bench_task, media
from data_prep.labels import load_activitynet_json, read_classes
from data_prep.synthetic import generate, make_shards
from data_prep_helpers import decoded_frames

KW = {"videos": 16, "classes": 8, "duration": (6.0, 9.0), "size": (96, 72), "fps": 8, "task": "bench"}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate(tmp_path_factory.mktemp("bench") / "a", seed=3, **KW)


def stripes(rgb: np.ndarray) -> float:
    """Share of pixels on a dark/bright edge: the actor's stripes (the background is smooth, distractors solid)."""
    grey = rgb.mean(axis=2)
    dark = grey < 45
    edge = np.zeros_like(dark)
    edge[:, 1:] |= dark[:, 1:] != dark[:, :-1]
    edge[1:, :] |= dark[1:, :] != dark[:-1, :]
    return float(edge.mean())


def test_classes_are_arrangements_not_colours(dataset: Path) -> None:
    names = bench_task.class_names(8)
    assert len(names) == 8 == len(set(names)) and names == sorted(names)
    assert read_classes(dataset.parent / "classInd.txt") == names == load_activitynet_json(dataset).classes
    data = json.loads(dataset.read_text())["database"]
    assert {a["label"] for v in data.values() for a in v["annotations"]} <= set(names)
    with pytest.raises(ValueError, match="at most|1 to 8"):
        bench_task.class_names(9)


def test_actor_only_inside_segments(dataset: Path) -> None:
    data = json.loads(dataset.read_text())["database"]
    inside, outside = [], []
    for vid, video in data.items():
        times, frames = decoded_frames(dataset.parent / "videos" / f"v_{vid}.mp4")
        spans = [a["segment"] for a in video["annotations"]]
        for t, frame in zip(times, frames):
            near = any(s - 0.2 <= t <= e + 0.2 for s, e in spans)
            if any(s + 0.2 <= t <= e - 0.2 for s, e in spans):
                inside.append(stripes(frame.astype(float)))
            elif not near:
                outside.append(stripes(frame.astype(float)))
    assert inside and outside
    # every action frame shows the striped actor; background frames almost never look like one
    assert np.percentile(inside, 5) > 3 * np.percentile(outside, 95), (np.percentile(inside, 5),
                                                                       np.percentile(outside, 95))


def test_segments_vary_and_fit(dataset: Path) -> None:
    data = json.loads(dataset.read_text())["database"]
    shares, starts = [], []
    for video in data.values():
        spans = [a["segment"] for a in video["annotations"]]
        assert all(0 <= s < e <= video["duration"] for s, e in spans)
        shares.append(sum(e - s for s, e in spans) / video["duration"])
        starts.append(spans[0][0] / video["duration"])
    assert min(shares) < 0.35 and max(shares) > 0.4  # short and long actions
    assert max(starts) > 0.4 and min(starts) < 0.2  # early and late starts


def test_seeded_and_sharded(dataset: Path, tmp_path: Path) -> None:
    # In the same process, after other encodes: the same bytes (with x264's mbtree on, data_prep.media, they were
    # not: the encoder's output depended on what the process had encoded before)
    again = generate(tmp_path / "b", seed=3, **KW)
    assert json.loads(again.read_text()) == json.loads(dataset.read_text())
    videos = sorted((dataset.parent / "videos").iterdir())
    assert videos and all(v.read_bytes() == (again.parent / "videos" / v.name).read_bytes() for v in videos)
    summary = make_shards(dataset, tmp_path / "shards", use_ray=False)
    assert summary["written"] == 16


def test_cli_refuses_too_many_classes(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "data_prep.synthetic", "--task", "bench", "--out", str(tmp_path / "x"),
                           "--classes", "9"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        "error: --classes: the bench task has at most 8 classes, not 9"]
    assert not (tmp_path / "x").exists()



def test_frames_drawn_ahead_give_the_serial_bytes_and_its_errors(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """write_video draws frames in a thread while x264 encodes (data_prep.media._ahead): the bytes are those of drawing
    them in the caller, a generator's error reaches the caller, and no thread outlives the call."""
    segments = [[1.0, 3.0]]
    threaded = tmp_path / "threaded.mp4"
    bench_task.render(np.random.default_rng(5), threaded, 4.0, segments, "Disc, knob left", (96, 72), 8)
    with monkeypatch.context() as m:
        m.setattr(media, "_ahead", lambda frames: (frame for frame in frames))  # drawn in the caller, one by one
        serial = tmp_path / "serial.mp4"
        bench_task.render(np.random.default_rng(5), serial, 4.0, segments, "Disc, knob left", (96, 72), 8)
    assert threaded.read_bytes() == serial.read_bytes()

    def broken() -> Iterator[np.ndarray]:
        for i in range(3):
            yield media.index_frame(i)
        raise ValueError("frame 3 cannot be drawn")

    with pytest.raises(ValueError, match="frame 3 cannot be drawn"):
        media.write_video(tmp_path / "broken.mp4", broken(), fps=8)
    drawn = []

    def endless() -> Iterator[np.ndarray]:
        while True:
            drawn.append(len(drawn))
            yield media.index_frame(len(drawn) % 1000)

    ahead = media._ahead(endless(), depth=4)
    assert [media.read_index(next(ahead)) for _ in range(3)] == [1, 2, 3]
    ahead.close()  # the consumer leaves (an encode failed): the thread stops within a frame and the queue's depth
    assert len(drawn) <= 3 + 4 + 2
    assert not [t for t in threading.enumerate() if t.name.startswith("write_video-frames")]


def test_shape_masks_lie_inside_their_boxes() -> None:
    """render() computes each shape's mask in its _box only: the whole frame's mask is empty outside the box and the
    same inside it, at random centres and sizes (some off the frame) and at whole-pixel ones (edges on a pixel)."""
    height, width = 120, 160
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    rng = np.random.default_rng(0)
    cases = [(rng.uniform(-10, height + 10), rng.uniform(-10, width + 10), rng.uniform(1, 30)) for _ in range(300)]
    cases += [(50.0, 60.0, 10.0), (0.0, 0.0, 5.0), (119.0, 159.0, 7.0), (60.0, 80.0, 25.0)]
    for cy, cx, r in cases:
        box = bench_task._box(cy, cx, r, height, width)
        inside = np.zeros((height, width), bool)
        inside[box] = True
        for form in bench_task.FORMS:
            whole = bench_task._shape(form, ys, xs, cy, cx, r)
            assert not (whole & ~inside).any(), (form, cy, cx, r)
            assert np.array_equal(whole[box], bench_task._shape(form, ys[box], xs[box], cy, cx, r))
