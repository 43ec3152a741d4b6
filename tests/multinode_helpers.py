"""The local multi-node cluster for tests (``infra/local_cluster.py``) and `ray job submit` against it.

    nodes = start_cluster(STATE_DIR)          # pytest.skip (one line why) where namespaces cannot be made
    ...
    local_cluster.down(STATE_DIR)             # in the fixture's finalizer: always

Everything Ray runs in the namespaces (``ray start`` subprocesses); the test process only talks HTTP to the job
server at 198.51.100.10:8265 over the bridge.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import List

import pytest

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
sys.path.insert(0, str(REPO / "infra"))

import local_cluster  # noqa: E402  (infra/ is a folder of scripts, not a package)

STATE_DIR = Path("/tmp/sofnet-cluster-test")  # the tests' own: `down` after a crashed run finds its state here
ADDRESS = local_cluster.DASHBOARD
EXPERIMENT = "sofnet-demo"
NODE_LINE = re.compile(r"ranks on nodes ([0-9.,]+), rendezvous at ([0-9.]+):(\d+)")


def start_cluster(workers: int = 3, cpus: List[int] | None = None) -> List[local_cluster.Node]:
    """``local_cluster.up`` in the tests' state dir; skips where namespaces cannot be made, and fails (without
    touching it) where a cluster of another state dir, e.g. one brought up by hand, holds the names."""
    reason = local_cluster.why_unsupported()
    if reason:
        pytest.skip(f"no local multi-node cluster: {reason}")
    taken = [n.netns for n in local_cluster.plan(8)
             if local_cluster._ip("netns", "pids", n.netns, check=False).returncode == 0]
    if taken and not (STATE_DIR / "state.json").is_file():
        pytest.fail(f"namespaces {taken} exist and are not the tests' (a cluster brought up by hand?): "
                    "`python infra/local_cluster.py down` first")
    return local_cluster.up(STATE_DIR, workers=workers, cpus=cpus, timeout=240)


def env() -> dict:
    """The environment of the `ray` CLI on the host: no auth, no proxy between us and the bridge."""
    e = {k: v for k, v in os.environ.items() if k.lower() not in ("http_proxy", "https_proxy", "all_proxy")}
    e.pop("RAY_ADDRESS", None)
    return dict(e, RAY_AUTH_MODE="disabled", DS_ACCELERATOR="cpu", PATH=f"{BIN}:{e['PATH']}",
                NO_PROXY=f"{local_cluster.NET}.0/24")


def train_entry(shards: Path | str, out: Path, name: str, *extra: str, storage: str = "",
                tracking: str = "") -> List[str]:
    """The user's command: the demo config, smoke-sized, 2 ranks; shards, Ray Train's storage (default
    ``<out>/runs``, a local path every namespace sees) and MLflow (default ``sqlite:///<out>/mlflow.db``)."""
    local = not storage
    storage, tracking = storage or f"{out}/runs", tracking or f"sqlite:///{out}/mlflow.db"
    return ["python", "jobs/train_anet.py", "--config", "jobs/configs/demo.yaml", "--smoke-test",
            f"data.train_shards={shards}", f"data.val_shards={shards}", "model.num_classes=3", f"name={name}",
            f"train.output_dir={storage}", f"mlflow.tracking_uri={tracking}",
            f"mlflow.registered_model=sofnet-{name}", "scaling.num_workers=2",
            # a local output_dir: the namespaces share this machine's disk, the stand-in for an NFS mount every node has
            *(["train.shared_storage=true"] if local else []), *extra]


def runtime_env(path: Path, env_vars: dict) -> Path:
    """``infra/runtime_env.yaml`` plus ``env_vars`` (e.g. the S3 endpoint and credentials), written to ``path``."""
    import yaml

    spec = yaml.safe_load((REPO / "infra/runtime_env.yaml").read_text())
    spec["env_vars"] = {**spec.get("env_vars", {}), **env_vars}
    path.write_text(yaml.safe_dump(spec))
    return path


def submit(sid: str, entry: List[str], wait: bool = True, timeout: float = 600,
           runtime: Path | None = None) -> subprocess.CompletedProcess:
    """``ray job submit --address http://198.51.100.10:8265 --working-dir . -- <entry>`` from the host."""
    return subprocess.run(
        [str(BIN / "ray"), "job", "submit", "--address", ADDRESS, "--submission-id", sid, "--working-dir", ".",
         "--runtime-env", str(runtime or "infra/runtime_env.yaml"), *([] if wait else ["--no-wait"]), "--", *entry],
        cwd=REPO, env=env(), capture_output=True, text=True, timeout=timeout)


def _client():
    from ray.job_submission import JobSubmissionClient  # HTTP only: no Ray session in this process

    return JobSubmissionClient(ADDRESS)


def status(sid: str) -> str:
    return str(_client().get_job_status(sid).value)


def stop(sid: str, timeout: float = 120) -> None:
    """``ray job stop``: until job ``sid`` is STOPPED (bounded)."""
    _client().stop_job(sid)
    deadline = time.monotonic() + timeout
    for _ in range(int(timeout) + 1):
        if status(sid) in {"STOPPED", "FAILED", "SUCCEEDED"} or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert status(sid) == "STOPPED", f"job {sid} is {status(sid)}, not STOPPED:\n{logs(sid)[-3000:]}"


def logs(sid: str) -> str:
    return _client().get_job_logs(sid)


def wait_status(sid: str, want: str, timeout: float = 600) -> None:
    """Until job ``sid`` is ``want`` (bounded); fails with the log tail if it ends otherwise."""
    deadline = time.monotonic() + timeout
    for _ in range(int(timeout / 2) + 1):
        s = status(sid)
        if s == want:
            return
        assert s not in {"SUCCEEDED", "FAILED", "STOPPED"}, f"job {sid} ended {s}:\n{logs(sid)[-4000:]}"
        if time.monotonic() > deadline:
            break
        time.sleep(2)
    pytest.fail(f"job {sid} still {status(sid)} after {timeout:.0f} s:\n{logs(sid)[-3000:]}")


def placements(job_log: str) -> List[tuple]:
    """Per attempt of the job (rank 0's WARNING line): (node IP of each rank, rendezvous address)."""
    return [(ips.split(","), addr) for ips, addr, _ in NODE_LINE.findall(job_log)]


def registered(run_dir: Path | str) -> str:
    """The text of Ray Train's checkpoint snapshot of a run (local or in a bucket); "" while there is none."""
    from sofnet import storage

    snapshot = storage.join(run_dir, "checkpoint_manager_snapshot.json")
    if storage.is_remote(snapshot):
        return storage.read_text(str(snapshot)) if storage.kind(str(snapshot)) == "file" else ""
    return snapshot.read_text() if snapshot.is_file() else ""


def wait_checkpoint(run_dir: Path | str, name: str, timeout: float = 300) -> None:
    """Until Ray Train has registered checkpoint ``name`` (its snapshot lists it)."""
    deadline = time.monotonic() + timeout
    for _ in range(int(timeout * 5) + 1):
        if name in registered(run_dir):
            return
        if time.monotonic() > deadline:
            break
        time.sleep(0.2)
    pytest.fail(f"no {name} in {run_dir} after {timeout:.0f} s")


def mlflow_runs(out: Path | str, name: str) -> tuple:
    """(client, {"job" | stage: run}) of the job ``name`` in ``<out>/mlflow.db`` or at the tracking URI ``out``."""
    import mlflow

    uri = str(out) if str(out).startswith("http") else f"sqlite:///{out}/mlflow.db"
    client = mlflow.MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(EXPERIMENT)
    runs = client.search_runs([exp.experiment_id], f"tags.ray_run_name = '{name}'")
    return client, {r.data.tags.get("stage", "job"): r for r in runs}
