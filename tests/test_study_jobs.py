"""How a study runs its jobs: side by side as far as the Ray cluster holds them, a failed one named after the others
finished, and a bad study file refused before torch loads (the end-to-end study is in test_study.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from study_helpers import REPO, tiny_study


def test_jobs_train_side_by_side_as_far_as_the_cluster_holds_them() -> None:
    """A study's jobs run as many at once as fit whole (a placement group is all or nothing): never one that would
    wait for CPUs or GPUs held by the others, always at least one, never more than ``max_concurrent``."""
    from sofnet.train.ray_job import job_resources, jobs_at_once

    def job(workers: int, cpus: int = 1, gpus: int = 0) -> OmegaConf:
        return OmegaConf.create({"scaling": {"num_workers": workers, "cpus_per_worker": cpus, "use_gpu": gpus > 0,
                                             "gpus_per_worker": gpus}})

    assert job_resources(job(2, 3)) == {"CPU": 6.0} and job_resources(job(2, 1, 1)) == {"CPU": 2.0, "GPU": 2.0}
    two_cores = {"CPU": 2.0, "memory": 1e10}
    assert jobs_at_once([job(2)] * 3, two_cores) == 1  # the benchmark's jobs on this machine: one after another
    assert jobs_at_once([job(1)] * 3, two_cores) == 2  # the tests' one-worker jobs: two at a time
    assert jobs_at_once([job(1)] * 3, two_cores, max_concurrent=1) == 1
    assert jobs_at_once([job(2)] * 6, {"CPU": 16.0}) == 6 and jobs_at_once([job(2)] * 9, {"CPU": 16.0}) == 8
    assert jobs_at_once([job(1), job(3)], {"CPU": 5.0}) == 1  # sized by the largest job: 3 + 3 > 5
    assert jobs_at_once([job(2, 4, 1)] * 4, {"CPU": 64.0, "GPU": 4.0}) == 2  # the GPUs bound it, not the CPUs
    assert jobs_at_once([job(4)], {"CPU": 2.0}) == 1  # too large for the cluster: Ray Train says so when it waits


def test_a_failed_job_is_named_after_the_others_trained(tmp_path: Path) -> None:
    """Every seed's unfinished job goes to the trainer in one call (side by side where the cluster holds them); a
    job that failed is named with its error, after the others finished, and nothing is evaluated (exit 1)."""
    from sofnet.study import load_study, run_study

    study = load_study(tiny_study(tmp_path, tmp_path / "shards"), ["seeds=[1,2,3]"])
    given = []

    def train(cfgs: list) -> list:
        given.append([c.name for c in cfgs])
        return [None, "WorkerGroupError: rank 0 killed", None]

    with pytest.raises(RuntimeError, match=r"^training failed \(1 of 3; a rerun resumes them\): t-seed2: "
                                           r"WorkerGroupError: rank 0 killed$"):
        run_study(study, train=train)
    assert given == [["t-seed1", "t-seed2", "t-seed3"]]
    assert not list((tmp_path / "runs/t").glob("*-eval"))


def test_a_bad_study_file_is_refused_before_torch_loads() -> None:
    """``jobs/study.py`` reads the study file before anything heavy: importing ``sofnet.study`` must not load torch
    (1.5 s, and ~6 s with the replay modules: the refusals of the test above took 39 s instead of 13 s once)."""
    code = ("import sys; import sofnet.study, sofnet.study_mlflow; "
            "sys.exit(sorted(m for m in ('torch', 'mlflow', 'ray') if m in sys.modules) or 0)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": f"{REPO / 'platform'}:{REPO}"})
    assert proc.returncode == 0, proc.stderr[-2000:]
