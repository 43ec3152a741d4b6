"""Both sweep jobs end to end, as users run them: real local Ray (one head shared by the module), real MLflow
sqlite store, real synthetic shards; Table C against full evaluations; a sweep killed and resumed."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

import tune_helpers as th
from sofnet.early_exit import EarlyExit
from sofnet.evaluation import evaluate_model
from sofnet.tune.et_cache import load_model

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def env():
    temp = Path(f"/tmp/sofnet-tune-{os.getpid()}")  # short: Ray's socket paths have a length limit
    yield from th.ray_head(temp)
    shutil.rmtree(temp, ignore_errors=True)
    temp.with_suffix(".log").unlink(missing_ok=True)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("tune_sweeps")
    shards = th.shards(root / "data")
    return shards, th.checkpoint(shards, root / "ckpt")


def _fail(proc: subprocess.CompletedProcess) -> str:
    return f"exit {proc.returncode}\n--- stdout\n{proc.stdout[-6000:]}\n--- stderr\n{proc.stderr[-6000:]}"


def _children(client: MlflowClient, parent: dict) -> list:
    """Every run under the sweep's run: a trial's training job run and, nested in it, its stage runs."""
    runs, frontier = [], [parent["run_id"]]
    for _ in range(3):  # sweep -> trial (job run) -> stage runs
        found = [r for rid in frontier for r in client.search_runs(
            [parent["experiment_id"]], f"tags.`mlflow.parentRunId` = '{rid}'", max_results=1000)]
        runs += found
        frontier = [r.info.run_id for r in found]
    return runs


def test_early_exit_job_equals_full_evaluation_at_every_point(env, trained, tmp_path):
    """jobs/tune_early_exit.py --smoke-test: the cache is written from the checkpoint, the smoke grid's 18 points
    (3 rho x T_min 2-4 of the 4-frame model x both T_min countings) run as Tune trials, each an MLflow child run;
    every logged point equals jobs/evaluate.py's full skipping-path evaluation with that rho, T_min and counting
    (mAP, GFLOPs, frame usage), and Table C (both countings side by side) is logged and kept in MLflow."""
    shards, ckpt = trained
    db = tmp_path / "mlflow.db"
    proc = th.run_job([th.REPO / "jobs/tune_early_exit.py", "--sweep", th.REPO / "jobs/configs/tune/early_exit.yaml",
                       "--smoke-test", f"checkpoint={ckpt}", f"storage_path={tmp_path / 'tune'}",
                       f"mlflow.tracking_uri=sqlite:///{db}",
                       f"overrides=[data.train_shards={shards},data.val_shards={shards}]"], env, th.REPO)
    assert proc.returncode == 0, _fail(proc)
    assert "Table C" in proc.stderr and "| rho | counting \\ T_min | 2 | 3 | 4 |" in proc.stderr, _fail(proc)
    assert "| 0.99 | reached |" in proc.stderr and "| 0.99 | official |" in proc.stderr
    sweep = tmp_path / "tune" / "early_exit_smoke"
    parent = json.loads((sweep / "parent_run.json").read_text())
    client = MlflowClient(tracking_uri=f"sqlite:///{db}")
    children = _children(client, parent)
    assert len(children) == 18
    assert {(float(r.data.params["early_exit.rho"]), int(r.data.params["early_exit.t_min"]),
             r.data.params["early_exit.mode"]) for r in children} == \
        {(r, t, m) for r in (0.95, 0.99, 0.999) for t in (2, 3, 4) for m in ("reached", "official")}
    arts = {a.path for a in client.list_artifacts(parent["run_id"])}
    assert {"table_c.md", "pareto.png", "trials.json", "sweep.yaml"} <= arts
    assert client.get_run(parent["run_id"]).info.status == "FINISHED"

    model, cfg = load_model(str(ckpt)), th.eval_config(shards)
    fired, distinct = 0, set()
    for run in children:
        p, logged = run.data.params, run.data.metrics
        full = evaluate_model(model, cfg, out_dir=tmp_path / "eval", et=EarlyExit(True, float(p["early_exit.rho"]),
                              int(p["early_exit.t_min"]), p["early_exit.mode"]))["metrics"]
        want = {k: v for k, v in full.items() if k.startswith("val/et/")}
        assert set(want) == set(logged), run.info.run_name
        for k, v in want.items():
            assert math.isclose(logged[k], v, rel_tol=1e-9, abs_tol=1e-12), (run.info.run_name, k, logged[k], v)
        fired += logged["val/et/frames_processed"] < 1.0
        distinct.add(round(logged["val/et/gflops_per_frame"], 9))
    assert fired > 0 and len(distinct) >= 2  # early exit really fires, and differently across the grid


def _trial_states(tune_dir: Path) -> dict:
    states = {}
    for f in sorted(tune_dir.glob("experiment_state-*.json")):
        try:
            data = json.loads(f.read_text())
        except (OSError, ValueError):  # being rewritten
            continue
        for trial_json, _ in data["trial_data"]:
            t = json.loads(trial_json)
            states[t["trial_id"]] = t["status"]
    return states


def test_alpha_beta_sweep_interrupted_and_resumed(env, trained, tmp_path):
    """jobs/tune_alpha_beta.py --smoke-test, killed and resumed. The first run trains the shared stage 1, then one
    Ray Train + DeepSpeed stage-2 run per (alpha, beta) inside Tune trials; its driver is killed (SIGKILL) once the
    first trial has finished. --resume (Tuner.restore) keeps that trial (not trained again), reruns the other, and
    finishes the same MLflow parent: the training runs are its children with their alpha/beta, Table D is printed
    and logged with the Pareto figure, and the best trial's model is registered under the alias."""
    shards, _ = trained
    db = tmp_path / "mlflow.db"
    args = [th.REPO / "jobs/tune_alpha_beta.py", "--sweep", th.REPO / "jobs/configs/tune/alpha_beta.yaml",
            "--smoke-test", f"storage_path={tmp_path / 'tune'}", f"mlflow.tracking_uri=sqlite:///{db}",
            f"overrides=[scaling.num_workers=1,model.num_classes=3,data.train_shards={shards},"
            f"data.val_shards={shards}]"]
    sweep = tmp_path / "tune" / "alpha_beta_smoke"
    log = open(tmp_path / "first.log", "w")
    driver = subprocess.Popen([sys.executable, *map(str, args)], env=env, cwd=th.REPO, stdout=log,
                              stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 500
    while time.monotonic() < deadline and driver.poll() is None:
        if "TERMINATED" in _trial_states(sweep / "tune").values():
            break
        time.sleep(0.5)
    assert driver.poll() is None, (tmp_path / "first.log").read_text()[-4000:]
    driver.send_signal(signal.SIGKILL)  # a real interruption: no cleanup, no final save
    driver.wait()
    log.close()
    before = _trial_states(sweep / "tune")
    done = [t for t, s in before.items() if s == "TERMINATED"]
    assert len(done) == 1 and len(before) == 2, before
    parent = json.loads((sweep / "parent_run.json").read_text())
    time.sleep(3)  # the dead driver's trial actors are reaped by Ray

    proc = th.run_job(args + ["--resume"], env, th.REPO)
    assert proc.returncode == 0, _fail(proc)
    after = _trial_states(sweep / "tune")
    assert set(after) == set(before) and set(after.values()) == {"TERMINATED"}
    assert json.loads((sweep / "parent_run.json").read_text()) == parent
    client = MlflowClient(tracking_uri=f"sqlite:///{db}")
    assert client.get_run(parent["run_id"]).info.status == "FINISHED"
    runs = _children(client, parent)
    assert len([r for r in runs if r.data.tags.get("stage") == "stage1"]) == 1  # stage 1 trained once, shared
    first = [r for r in runs if r.data.tags.get("tune_trial_id") == done[0] and r.data.tags.get("stage") == "stage2"]
    assert len(first) == 1 and first[0].info.status == "FINISHED"  # the finished trial was not trained again
    assert len(list((sweep / "trials" / f"trial_{done[0]}").glob("checkpoint-stage2-*"))) == 1
    stage2 = [r for r in runs if r.data.tags.get("stage") == "stage2" and "val/mAP" in r.data.metrics]
    assert sorted((r.data.params["loss.alpha"], r.data.params["loss.beta"]) for r in stage2) == \
        [("0.9", "0.5"), ("1.0", "None")]
    assert all("val/gflops_per_video" in r.data.metrics for r in stage2)
    assert "Table D" in proc.stderr
    assert proc.stderr.count("| 1.00 | none |") == 1 and proc.stderr.count("| 0.90 | 0.50 |") == 1
    assert proc.stderr.count(" | 1/1 | ") == 2 and "stopped early" not in proc.stderr  # FIFO: every row trained
    assert {"table_d.md", "pareto.png", "trials.json"} <= {a.path for a in client.list_artifacts(parent["run_id"])}
    best = max(stage2, key=lambda r: r.data.metrics["val/mAP"])
    version = client.get_model_version_by_alias("sofnet-alpha-beta-smoke", "best")
    assert client.get_run(version.run_id).data.metrics["val/mAP"] == best.data.metrics["val/mAP"]
    # the trial's logged model itself (MLflow 3), registered without MLflow's warning that the run has no artifacts
    assert version.source.startswith("models:/") and "has no artifacts at artifact path" not in proc.stderr
