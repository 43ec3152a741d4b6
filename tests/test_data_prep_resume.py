"""Kill a real run mid-way and rerun it; a worker that dies on a video. Both on a real local Ray."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import webdataset as wds

from data_prep.labels import load_activitynet_json
from data_prep.runner import prepare
from process_helpers import prepare_on_ray
from data_prep.shards import Job, PrepParams, plan_shards, video_key
from data_prep.synthetic import generate

pytestmark = pytest.mark.slow

PARAMS = ["--shard-size", "2", "--short-side", "256", "--fps", "4", "--min-frames", "16"]


def keys_by_shard(out: Path) -> dict[str, list[str]]:
    return {
        shard.name: [sample["__key__"] for sample in wds.WebDataset(str(shard), shardshuffle=False)]
        for shard in sorted(out.glob("*.tar"))
    }


def test_kill_and_resume_gives_the_same_samples(tmp_path: Path) -> None:
    annotation = generate(tmp_path / "data", videos=24, classes=3, seed=5, duration=(4.0, 6.0), size=(96, 72), fps=8)
    out = tmp_path / "out"
    command = [sys.executable, "-m", "data_prep.activitynet", "--annotations", str(annotation), "--videos",
               str(annotation.parent / "videos"), "--out", str(out), "--num-cpus", "1", "--no-progress", *PARAMS]
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    process = subprocess.Popen(command, env=env, start_new_session=True, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not list((out / ".state").glob("*.tar.json")) and time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()
        time.sleep(0.02)
    assert process.poll() is None, "the run ended before it could be killed"
    os.killpg(process.pid, signal.SIGKILL)  # the driver and the Ray processes it started, no cleanup
    process.wait(timeout=30)
    done_before = {p.name: p.stat().st_mtime_ns for p in out.glob("*.tar")}
    assert 1 <= len(done_before) < 12, done_before
    assert not (out / "sizes.json").exists()

    rerun = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert not list(out.glob(".*.tmp"))
    for name, mtime in done_before.items():  # finished shards were kept, not written again
        assert (out / name).stat().st_mtime_ns == mtime
    resumed = keys_by_shard(out)
    all_keys = [key for keys in resumed.values() for key in keys]
    ids = json.loads(annotation.read_text())["database"]
    assert sorted(all_keys) == sorted(video_key(i) for i in ids) and len(all_keys) == len(set(all_keys))
    assert json.loads((out / "sizes.json").read_text()) == {name: len(keys) for name, keys in resumed.items()}
    assert json.loads((out / "report.json").read_text())["counts"]["written"] == 24

    reference = tmp_path / "reference"  # the same command, never interrupted, in this process
    source = load_activitynet_json(annotation, subsets=["training", "validation"])
    prepare(source, annotation.parent / "videos", reference, PrepParams(shard_size=2, fps=4.0), use_ray=False,
            progress=False)
    assert keys_by_shard(reference) == resumed
    for name in resumed:  # deterministic down to the bytes
        assert (reference / name).read_bytes() == (out / name).read_bytes(), name


def test_a_video_that_kills_its_worker_is_reported_and_the_shard_written(tmp_path: Path) -> None:
    annotation = generate(tmp_path / "data", videos=4, classes=2, seed=6, duration=(3.0, 4.0), size=(64, 48), fps=8)
    source = load_activitynet_json(annotation, subsets=["training"])
    params = PrepParams(shard_size=8, short_side=48)
    jobs_keys = [video_key(e.id) for e in source.entries]
    plan = plan_shards([Job(key, key, "training", "") for key in jobs_keys], params.shard_size)[0]
    victim = plan.jobs[1].key
    os.environ["DATA_PREP_CRASH_KEY"] = victim  # inherited by the Ray workers started below
    try:
        summary = prepare_on_ray(source, annotation.parent / "videos", tmp_path / "out", params, num_cpus=1,
                                 progress=False)
    finally:
        del os.environ["DATA_PREP_CRASH_KEY"]
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert [item["reason"].split(":")[0] for item in report["skipped"]] == ["worker crashed"]
    assert video_key(report["skipped"][0]["id"]) == victim
    written = keys_by_shard(tmp_path / "out")
    assert sorted(k for keys in written.values() for k in keys) == sorted(set(jobs_keys) - {victim})
    assert summary["written"] == len(jobs_keys) - 1 and summary["failed_shards"] == 0


def test_a_shard_that_cannot_be_written_is_reported_and_retried_by_the_next_run(tmp_path: Path) -> None:
    annotation = generate(tmp_path / "data", videos=8, classes=2, seed=7, duration=(3.0, 4.0), size=(64, 48), fps=8)
    source = load_activitynet_json(annotation, subsets=["training"])  # 6 videos: 3 shards
    params = PrepParams(shard_size=2, short_side=48)
    out = tmp_path / "out"
    (out / "training-000001.tar" / "clash").mkdir(parents=True)  # a folder where the shard must go
    summary = prepare_on_ray(source, annotation.parent / "videos", out, params, num_cpus=2, progress=False)
    report = json.loads((out / "report.json").read_text())
    assert summary["failed_shards"] == 1 and summary["written"] == 4 and len(report["skipped"]) == 2
    assert all(item["reason"].startswith("shard failed: training-000001.tar") for item in report["skipped"])
    shutil.rmtree(out / "training-000001.tar")
    summary = prepare(source, annotation.parent / "videos", out, params, use_ray=False, progress=False)
    assert summary["failed_shards"] == 0 and summary["written"] == 6 and summary["processed"] == 2
    assert json.loads((out / "report.json").read_text())["skipped"] == []
