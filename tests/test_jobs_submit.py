"""End to end through `ray job submit` on a real local Ray head: smoke run; a killed worker, then the job stopped.

The head is started by the module fixture (``ray start --head --block`` on 127.0.0.1 with free ports, token auth
off, .venv/bin first on PATH so jobs run in our environment) and stopped by killing its process group, so no other
Ray on the machine is touched. Jobs train on shards that data_prep writes from synthetic videos, with real
DeepSpeed (CPU, gloo) on 2 workers, and log to a real MLflow sqlite store.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from process_helpers import RAY_GRACE, stop_process_group

from sofnet.session import free_ports

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
EXPERIMENT = "sofnet-demo"


def _env() -> dict:
    env = dict(os.environ, RAY_AUTH_MODE="disabled", DS_ACCELERATOR="cpu", PATH=f"{BIN}:{os.environ['PATH']}")
    env.pop("RAY_ADDRESS", None)
    return env


@pytest.fixture(scope="module")
def head(tmp_path_factory: pytest.TempPathFactory):
    gcs, dash, agent, grpc, metrics, rt_env, client = free_ports(7)  # none at a default: another module's head may run
    log = open(tmp_path_factory.mktemp("head") / "head.log", "w")
    proc = subprocess.Popen(
        [str(BIN / "ray"), "start", "--head", "--block", "--port", str(gcs), "--node-ip-address", "127.0.0.1",
         "--num-cpus", "3", "--include-dashboard", "true", "--dashboard-host", "127.0.0.1", "--dashboard-port",
         str(dash), "--dashboard-agent-listen-port", str(agent), "--dashboard-agent-grpc-port", str(grpc),
         "--metrics-export-port", str(metrics), "--runtime-env-agent-port", str(rt_env), "--ray-client-server-port",
         str(client), "--disable-usage-stats"],
        env=_env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    address = f"http://127.0.0.1:{dash}"
    try:
        deadline = time.monotonic() + 120
        while subprocess.run([str(BIN / "ray"), "job", "list", "--address", address], env=_env(),
                             capture_output=True).returncode != 0:
            assert proc.poll() is None, f"ray start exited: {Path(log.name).read_text()[-2000:]}"
            assert time.monotonic() < deadline, "the Ray head did not come up in 120 s"
            time.sleep(1)
        yield address
    finally:
        stop_process_group(proc, grace=RAY_GRACE)
        log.close()


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from sofnet.train.cli import ensure_synthetic_shards

    return ensure_synthetic_shards(tmp_path_factory.mktemp("smoke_data"), videos=24, classes=3)


def _train_args(shards: Path, out: Path, name: str, *extra: str) -> list[str]:
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    return ["env", f"SOFNET_GIT_COMMIT={commit}", "python", "jobs/train_anet.py", "--config", "jobs/configs/demo.yaml",
            "--smoke-test",
            f"data.train_shards={shards}", f"data.val_shards={shards}", "model.num_classes=3", f"name={name}",
            f"train.output_dir={out}/runs", f"mlflow.tracking_uri=sqlite:///{out}/mlflow.db",
            f"mlflow.registered_model=sofnet-{name}", *extra]


def _ray_job(address: str, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "ray"), "job", *args, "--address", address], cwd=REPO, env=_env(),
                          capture_output=True, text=True, timeout=timeout)


def _submit(address: str, sid: str, entry: list[str], wait: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / "ray"), "job", "submit", "--address", address, "--submission-id", sid, "--working-dir", ".",
         "--runtime-env", "infra/runtime_env.yaml", *([] if wait else ["--no-wait"]), "--", *entry],
        cwd=REPO, env=_env(), capture_output=True, text=True, timeout=900)


def _status(address: str, sid: str) -> str:
    from ray.job_submission import JobSubmissionClient

    return str(JobSubmissionClient(address).get_job_status(sid).value)


def _wait_status(address: str, sid: str, want: set[str], timeout: float = 600) -> str:
    deadline = time.monotonic() + timeout
    while (s := _status(address, sid)) not in want:
        assert s not in {"SUCCEEDED", "FAILED", "STOPPED"}, f"job {sid} ended {s}:\n{_logs(address, sid)[-4000:]}"
        assert time.monotonic() < deadline, f"job {sid} still {s} after {timeout} s"
        time.sleep(2)
    return s


def _logs(address: str, sid: str) -> str:
    from ray.job_submission import JobSubmissionClient

    return JobSubmissionClient(address).get_job_logs(sid)


def _wait_checkpoint(run_dir: Path, name: str, timeout: float = 300) -> None:
    """Until Ray Train has registered checkpoint ``name`` (its snapshot lists it)."""
    deadline = time.monotonic() + timeout
    snapshot = run_dir / "checkpoint_manager_snapshot.json"
    while not (snapshot.is_file() and name in snapshot.read_text()):
        assert time.monotonic() < deadline, f"no {name} in {run_dir} after {timeout} s"
        time.sleep(0.2)


def _runs(out: Path, name: str) -> list:
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{out}/mlflow.db")
    exp = client.get_experiment_by_name(EXPERIMENT)
    runs = client.search_runs([exp.experiment_id], f"tags.ray_run_name = '{name}'")
    return client, [r for r in runs if "stage" in r.data.tags]  # the stage runs, nested in the job's run


def _epochs_logged(client, run) -> list[int]:
    return sorted({m.step for m in client.get_metric_history(run.info.run_id, "val/mAP")})


def test_submit_smoke_job_succeeds_and_is_tracked(head: str, shards: Path, tmp_path: Path) -> None:
    done = _submit(head, "sofnet-smoke", _train_args(shards, tmp_path, "smoke"))
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert _status(head, "sofnet-smoke") == "SUCCEEDED"
    client, runs = _runs(tmp_path, "smoke")
    by_stage = {r.data.tags["stage"]: r for r in runs}
    assert set(by_stage) == {"stage1", "stage2"} and all(r.info.status == "FINISHED" for r in runs)
    for stage, run in by_stage.items():
        tags, params, metrics = run.data.tags, run.data.params, run.data.metrics
        assert tags["ray_job_id"] == "sofnet-smoke" and tags["dataset"] == "activitynet" and tags["stage"] == stage
        assert re.fullmatch(r"[0-9a-f]{40}", tags["mlflow.source.git.commit"]), tags
        assert tags["mlflow.source.name"] == "jobs/train_anet.py" and tags["mlflow.parentRunId"]
        assert params["model.arch"] == ("tsn" if stage == "stage1" else "sofnet")  # what the stage really trains
        assert run.info.run_name.startswith(f"smoke/{stage} ")
        assert params["model.backbone"] == "resnet18" and params["train.stage1.epochs"] == "1"
        for key in ("val/mAP", "val/top1", "val/gflops_per_video", "val/gflops_per_frame", "val/frame_usage",
                    "val/survival/block3", "val/et/mAP", "val/et/gflops_per_video", "train/loss",
                    "val/mAP_first_label", "val/stop_rate/background/block2", "val/et/exit/fired"):
            assert key in metrics, key
        arts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"config.yaml", "per_class_ap", "decision_maps"} <= arts
        figures = [a.path for g in ("correct", "failed")  # the first (1-based) epoch's most confident of each
                   for a in client.list_artifacts(run.info.run_id, f"decision_maps/epoch001/{g}")]
        assert 1 <= len(figures) <= 2 and all(f.endswith(".png") for f in figures), figures
    assert {"train/loss_acc", "train/loss_eff", "train/loss_gate", "train/loss_aux",
            "train/top1"} <= set(by_stage["stage2"].data.metrics)
    version = client.get_model_version_by_alias("sofnet-smoke", "best")
    assert version.run_id == by_stage["stage2"].info.run_id
    # jobs/evaluate.py on the run (its best epoch): metrics JSON and the official submission file
    out = tmp_path / "eval"
    ev = subprocess.run([sys.executable, "jobs/evaluate.py", "--config", "jobs/configs/demo.yaml", "--checkpoint",
                         str(tmp_path / "runs" / "smoke"), "--out", str(out), "--rho", "0.9",
                         f"data.val_shards={shards}", "model.num_classes=3", "data.num_workers=0"],
                        cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)
    assert ev.returncode == 0, ev.stderr[-3000:]
    report = json.loads((out / "metrics.json").read_text())
    assert report["early_exit"]["rho"] == 0.9 and 0.0 <= report["metrics"]["val/et/mAP"] <= 1.0
    # The best epoch's validation during training scored the model the evaluator loads: with 2 ranks that needs the
    # ranks' BatchNorm statistics made one (DeepSpeed never syncs buffers; each rank validated half the videos)
    best = json.loads((tmp_path / "runs/smoke/best/stage2/meta.json").read_text())["best"]
    during = {m.step: m.value for m in client.get_metric_history(by_stage["stage2"].info.run_id, "val/mAP")}
    assert report["metrics"]["val/mAP"] == pytest.approx(during[best["epoch"] + 1], abs=1e-6), (during, best)
    assert report["metrics"][best["metric"]] == pytest.approx(best["value"], abs=1e-6)
    submission = json.loads((out / "submission.json").read_text())
    assert submission["version"] == "VERSION 1.3" and len(submission["results"]) == report["metrics"]["val/videos"]


def test_a_killed_worker_and_a_stopped_job_resume_from_the_last_checkpoint(head: str, shards: Path,
                                                                            tmp_path: Path) -> None:
    """Rank 1's process SIGKILLed during stage 1 (the OOM killer's way): Ray Train restarts the worker group from
    the last checkpoint, within the same job and MLflow run. Once the new group has a checkpoint of its own, the job
    is stopped (``ray job stop``) and submitted again: it resumes from the newest checkpoint and trains no epoch
    again. Each epoch is logged once over the three attempts. (One job for both: each start costs ~20 s.)"""
    epochs, pid_dir = 7, tmp_path / "pids"
    entry = _train_args(shards, tmp_path, "kill", f"train.stage1.epochs={epochs}", "train.stage2.enabled=false",
                        "train.max_failures=2")
    entry[4:4] = ["--pid-dir", str(pid_dir)]
    assert _submit(head, "sofnet-kill", entry, wait=False).returncode == 0
    run_dir = tmp_path / "runs" / "kill"
    _wait_checkpoint(run_dir, "checkpoint-stage1-epoch000")
    victim = int((pid_dir / "rank1.pid").read_text())
    os.kill(victim, signal.SIGKILL)
    done_at_kill = sorted(p.name for p in run_dir.glob("checkpoint-stage1-epoch*"))
    assert "checkpoint-stage1-epoch002" not in done_at_kill, f"training went on too far before the kill: {done_at_kill}"
    _wait_checkpoint(run_dir, "checkpoint-stage1-epoch002")  # trained by the restarted group
    stop = _ray_job(head, "stop", "sofnet-kill")
    assert stop.returncode == 0, stop.stderr
    assert _wait_status(head, "sofnet-kill", {"STOPPED"}) == "STOPPED"
    first = _logs(head, "sofnet-kill")
    assert first.count("resuming from") == 1, first[-4000:]  # the restart within the job
    assert int((pid_dir / "rank1.pid").read_text()) != victim  # a new worker process took over
    kept = sorted(p.name for p in run_dir.glob("checkpoint-stage1-epoch*"))
    assert kept and f"checkpoint-stage1-epoch{epochs - 1:03d}" not in kept, f"the job ended before the stop: {kept}"
    done = _submit(head, "sofnet-kill-2", entry)
    assert done.returncode == 0, done.stdout[-4000:]
    logs = _logs(head, "sofnet-kill-2")
    assert "resuming from" in logs, logs[-4000:]
    done_before = int(re.search(r"resuming from \S+: stage1 epoch (\d+) done", logs).group(1))  # 1-based
    trained = [int(e) for e in re.findall(r"stage1 epoch (\d+)/\d+ done", logs.split("resuming from", 1)[1])]
    assert done_before >= 3 and trained == list(range(done_before + 1, epochs + 1)), (done_before, trained)
    client, runs = _runs(tmp_path, "kill")
    assert len(runs) == 1 and runs[0].data.tags["stage"] == "stage1"  # the same MLflow run continued
    assert _epochs_logged(client, runs[0]) == list(range(1, epochs + 1))  # steps are 1-based epochs, once each
    assert (run_dir / f"checkpoint-stage1-epoch{epochs - 1:03d}").is_dir()
    assert len(list(run_dir.glob("checkpoint-stage1-epoch*"))) == 2  # train.keep_checkpoints
