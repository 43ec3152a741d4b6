"""--decode-timeout on inputs that really block: a FIFO with no writer (open blocks) and one whose writer stalls
halfway through a real video (read blocks). Every test is bounded: a hang fails by subprocess or wall-clock limit.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest
import webdataset as wds

from data_prep.deadline import Deadline, DeadlineExceeded
from data_prep.decode import VideoError, sample_video
from data_prep.labels import load_activitynet_json
from data_prep.media import index_frame, write_video
from data_prep.shards import PrepParams
from data_prep_helpers import run_module
from process_helpers import prepare_on_ray


def annotation(folder: Path, ids: list[str]) -> Path:
    database = {vid: {"subset": "training", "duration": 4.0,
                      "annotations": [{"segment": [0.0, 2.0], "label": "Biking"}]} for vid in ids}
    path = folder / "anet.json"
    path.write_text(json.dumps({"version": "VERSION 1.3", "taxonomy": [], "database": database}))
    return path


@pytest.fixture()
def videos(tmp_path: Path, shared_dir: Path) -> Path:
    folder = tmp_path / "videos"
    folder.mkdir()
    os.symlink(shared_dir / "videos" / "carphone_distorted.mp4", folder / "v_good.mp4")
    os.mkfifo(folder / "v_hang.mp4")  # open() blocks until a writer comes: none will
    return folder


def test_a_fifo_without_writer_is_skipped_after_the_timeout(tmp_path: Path, videos: Path) -> None:
    out = tmp_path / "out"
    start = time.monotonic()
    result = run_module("data_prep.activitynet", "--annotations", str(annotation(tmp_path, ["good", "hang"])),
                        "--videos", str(videos), "--out", str(out), "--decode-timeout", "2", "--no-ray",
                        "--no-progress", "--short-side", "32", timeout=120)
    elapsed = time.monotonic() - start
    assert result.returncode == 0, result.stderr
    assert elapsed < 30, elapsed
    skipped = json.loads((out / "report.json").read_text())["skipped"]
    assert [(item["id"], item["reason"].split(":")[0]) for item in skipped] == [("hang", "decode timeout")]
    keys = [s["__key__"] for s in wds.WebDataset(str(out / "training-000000.tar"), shardshuffle=False)]
    assert keys == ["good"]


def test_a_read_that_stalls_halfway_times_out(tmp_path: Path) -> None:
    clip = write_video(tmp_path / "clip.ts", [index_frame(i) for i in range(300)], fps=25, codec="mpeg2video",
                       container="mpegts")
    data = clip.read_bytes()
    fifo = tmp_path / "stalled.ts"
    os.mkfifo(fifo)
    release = threading.Event()

    def writer() -> None:  # half the video, then silence with the pipe held open, like a stalled mount
        with open(fifo, "wb") as pipe:
            pipe.write(data[: len(data) // 2])
            pipe.flush()
            release.wait(60)

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    previous = signal.getsignal(signal.SIGALRM)
    start = time.monotonic()
    try:
        with pytest.raises(VideoError, match="^decode timeout: no result after 1.5 s"):
            sample_video(str(fifo), fps=4.0, short_side=0, timeout=1.5)
    finally:
        release.set()
        thread.join(10)
    assert 1.5 <= time.monotonic() - start < 10  # about the timeout, at most twice it (see data_prep.deadline)
    assert signal.getsignal(signal.SIGALRM) == previous  # the handler is put back
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)  # and no alarm is left running
    assert len(sample_video(str(clip), fps=4.0, short_side=0, timeout=30).jpegs) == 48  # a good video is unaffected


def test_deadline_leaves_fast_work_alone_and_converts_errors_after_the_time() -> None:
    with Deadline(5) as deadline:
        assert deadline.io_timeout == 5 and not deadline.expired
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)
    with pytest.raises(DeadlineExceeded):
        with Deadline(0.2):
            while True:  # Python code that never ends: the alarm's exception stops it
                time.sleep(0.01)
    with pytest.raises(DeadlineExceeded, match="InterruptedError"):
        with Deadline(0.2):
            try:
                time.sleep(5)
            except DeadlineExceeded:  # swallowed, as when FFmpeg reports the interrupted call its own way
                pass
            raise InterruptedError("read interrupted")


@pytest.mark.slow
def test_the_timeout_works_in_ray_workers(tmp_path: Path, videos: Path) -> None:
    source = load_activitynet_json(annotation(tmp_path, ["good", "hang"]))
    start = time.monotonic()
    summary = prepare_on_ray(source, videos, tmp_path / "out", PrepParams(short_side=32, decode_timeout=2.0),
                             num_cpus=1, progress=False, timeout=300)
    assert summary["written"] == 1 and summary["skipped_by_reason"] == {"decode timeout": 1}
    assert time.monotonic() - start < 120
