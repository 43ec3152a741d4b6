"""Submit the two-stage training to Ray Train: ``TorchTrainer`` + DeepSpeed workers, checkpoints, retries.

Usage (``jobs/train_anet.py``; a study, several jobs)::

    from sofnet.config import load_config
    from sofnet.train.ray_job import run_training, run_trainings
    cfg = load_config("jobs/configs/anet_sofnet.yaml", ["scaling.num_workers=8", "scaling.use_gpu=true"])
    result = run_training(cfg)   # Ray: scaling.ray_address, $RAY_ADDRESS (`ray job submit`) or a new local one
    errors = run_trainings([cfg_a, cfg_b])   # several jobs side by side where the cluster holds them (a study)

The run lives in ``<train.output_dir>/<name>`` (Ray Train's storage: checkpoints, retention ``keep_checkpoints``).
Running the same config again with the same name and output directory resumes from the latest checkpoint, after
a stopped job as after a crash; ``FailureConfig(max_failures)`` restarts failed workers from it automatically.
The MLflow tracking store is checked before anything starts (:class:`~sofnet.train.tracking.TrackingError`).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

from omegaconf import OmegaConf

from sofnet.schema import STAGE_NAMES
from sofnet.session import init_ray, tracking_store

logger = logging.getLogger(__name__)


def git_commit(cwd: Optional[str] = None) -> str:
    """The commit of the working directory (``$SOFNET_GIT_COMMIT`` first, ``unknown`` outside git)."""
    if os.environ.get("SOFNET_GIT_COMMIT"):
        return os.environ["SOFNET_GIT_COMMIT"]
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10)
        return out.stdout.strip() if out.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def source_name() -> str:
    """The entry point as MLflow's ``mlflow.source.name`` shows it (``jobs/train_anet.py``)."""
    import sys

    path = Path(sys.argv[0]) if sys.argv and sys.argv[0] else Path("python")
    return f"{path.parent.name}/{path.name}" if path.parent.name else path.name


def run_name(cfg: Any) -> str:
    """The Ray Train run name: ``cfg.name``, else ``<dataset>_<arch>``."""
    return cfg.name or f"{cfg.data.dataset}_{cfg.model.arch}"


def _absolute(path: str) -> str:
    return path if not path or "://" in path or os.path.isabs(path) else str(Path(path).resolve())


def prepare_config(cfg: Any) -> Any:
    """A copy with paths made absolute (Ray workers run in other directories)."""
    cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    for key in ("train_shards", "val_shards"):
        cfg.data[key] = _absolute(cfg.data[key])
    cfg.train.output_dir = _absolute(cfg.train.output_dir)
    for stage in STAGE_NAMES:
        init = cfg.train[stage].init_from
        if init and not init.startswith(("models:/", "runs:/")):
            cfg.train[stage].init_from = _absolute(init)
    return cfg


def ray_job_id() -> str:
    """The ``ray job submit`` submission id of this driver, else Ray's job id (a driver started by hand)."""
    import ray

    try:  # the job supervisor hands the job's metadata to the entrypoint in this variable
        meta = json.loads(os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR", "{}")).get("metadata") or {}
    except ValueError:
        meta = {}
    return meta.get("job_submission_id") or ray.get_runtime_context().get_job_id()


def make_trainer(cfg: Any, tracking_uri: str, tags: Dict[str, str], pid_dir: str = "", verbose: bool = False) -> Any:
    """The ``TorchTrainer`` of a prepared config (see :func:`prepare_config`)."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from sofnet.train.worker import train_loop_per_worker

    s = cfg.scaling
    resources = {"CPU": s.cpus_per_worker, **({"GPU": s.gpus_per_worker} if s.use_gpu else {})}
    env = {"DS_ACCELERATOR": "cpu"} if not s.use_gpu else {}
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"cfg": OmegaConf.to_container(cfg, resolve=True), "tracking_uri": tracking_uri,
                           "tags": tags, "pid_dir": pid_dir, "verbose": verbose},
        torch_config=TorchConfig(backend="nccl" if s.use_gpu else "gloo", timeout_s=s.collective_timeout_s),
        scaling_config=ScalingConfig(num_workers=s.num_workers, use_gpu=s.use_gpu, resources_per_worker=resources,
                                     placement_strategy=s.placement_strategy),
        run_config=RunConfig(
            name=run_name(cfg), storage_path=cfg.train.output_dir,
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.train.keep_checkpoints),
            failure_config=FailureConfig(max_failures=cfg.train.max_failures),
            worker_runtime_env={"env_vars": env} if env else None),
    )


def cluster_nodes() -> int:
    """Alive nodes of the connected Ray cluster that can run a training worker (have CPUs)."""
    import ray

    return sum(1 for n in ray.nodes() if n.get("Alive") and n.get("Resources", {}).get("CPU", 0) > 0)


def _prepared(cfg: Any) -> tuple[Any, str]:
    """The checks before Ray starts (shards, output folder; the MLflow store) and the config with absolute paths."""
    from sofnet.preflight import check_data, check_output_dir

    tracking_uri = tracking_store(cfg)
    check_data(cfg)  # before the paths are made absolute: a relative path in a submitted job gets its own message
    cfg = prepare_config(cfg)
    check_output_dir(cfg.train.output_dir)
    return cfg, tracking_uri


def _job_tags(cfg: Any) -> Dict[str, str]:
    return {"mlflow.source.git.commit": git_commit(), "mlflow.source.name": source_name(),
            "mlflow.source.type": "JOB", "ray_job_id": ray_job_id(), "ray_run_name": run_name(cfg)}


def _announce(cfg: Any, tracking_uri: str, job: str = "") -> None:
    logger.info("training %s: stages to %s/%s, MLflow %s (experiment %s)%s", run_name(cfg), cfg.train.output_dir,
                run_name(cfg), tracking_uri, cfg.mlflow.experiment, job)


def _shown(result: Any) -> Dict[str, Any]:
    """What the log says of a finished job: its last stage, epoch, mAP and top-1."""
    return {k: v for k, v in (result.metrics or {}).items() if k in ("stage", "epoch", "val/mAP", "val/top1")}


def run_training(cfg: Any, *, pid_dir: str = "", verbose: bool = False) -> Any:
    """Check MLflow, connect to (or start) Ray, train both stages; returns Ray Train's ``Result``.

    Args:
        cfg: Our config (paths may be relative to the current directory).
        pid_dir: Where each training worker writes ``rank<r>.pid`` (tests kill a worker through it).
        verbose: Every library's INFO lines and warnings on the workers too (``sofnet.console``).

    Raises:
        PreflightError: Shards missing, empty, inconsistent or of another class count; storage not writable.
        TrackingError: The MLflow store is unreachable (before Ray starts).
    """
    from sofnet.preflight import check_storage_for_nodes

    cfg, tracking_uri = _prepared(cfg)
    init_ray(cfg)
    check_storage_for_nodes(cfg.train.output_dir, cluster_nodes(), cfg.train.shared_storage)
    tags = _job_tags(cfg)
    _announce(cfg, tracking_uri, f", Ray job {tags['ray_job_id']}")
    result = make_trainer(cfg, tracking_uri, tags, pid_dir, verbose).fit()
    logger.info("done: %s, last checkpoint %s", _shown(result), result.checkpoint)
    return result


def job_resources(cfg: Any) -> Dict[str, float]:
    """What one training job of ``cfg`` reserves on the cluster while it runs (its workers; the controller and the
    driver task of :func:`run_trainings` take none)."""
    s = cfg.scaling
    need = {"CPU": float(s.num_workers * s.cpus_per_worker)}
    if s.use_gpu:
        need["GPU"] = float(s.num_workers * s.gpus_per_worker)
    return need


def jobs_at_once(cfgs: Sequence[Any], cluster: Mapping[str, float], max_concurrent: int = 0) -> int:
    """How many of ``cfgs`` :func:`run_trainings` runs at once: as many of the largest job as ``cluster`` (Ray's
    total resources) holds side by side, at least one, at most ``max_concurrent`` when it is above 0.

    Placement groups are atomic, so a job beyond this would not half-start; it would wait for a whole group, and
    Ray Train gives up on a worker group that waits too long: hence no more are started than fit.
    """
    need: Dict[str, float] = {}
    for cfg in cfgs:
        for key, amount in job_resources(cfg).items():
            need[key] = max(need.get(key, 0.0), amount)
    fits = min((int(cluster.get(key, 0.0) // amount) for key, amount in need.items() if amount > 0), default=1)
    at_once = max(1, min(len(cfgs), fits))
    return min(at_once, max_concurrent) if max_concurrent > 0 else at_once


def train_job(cfg: Dict[str, Any], tracking_uri: str, tags: Dict[str, str], verbose: bool = False,
              in_task: bool = False) -> Optional[str]:
    """One job of :func:`run_trainings` (``in_task``: run as a Ray task); returns its error (``None``: finished)."""
    from sofnet.console import setup

    if in_task:  # a Ray task's own process: its logging is not set up yet
        setup(verbose=verbose)
    cfg = OmegaConf.create(cfg)
    try:
        result = make_trainer(cfg, tracking_uri, tags, "", verbose).fit()
    except Exception as e:  # Ray Train raises the workers' error; the caller reports it beside the other jobs'
        return f"{type(e).__name__}: {str(e).strip().splitlines()[-1] if str(e).strip() else ''}"
    logger.info("%s done: %s", run_name(cfg), _shown(result))
    return None if result.error is None else str(result.error)




def run_trainings(cfgs: Sequence[Any], *, max_concurrent: int = 0, verbose: bool = False) -> List[Optional[str]]:
    """Train several jobs (e.g. a study's seeds) on one Ray cluster, each as :func:`run_training` would, as many at
    once as the cluster's CPUs (GPUs) hold (:func:`jobs_at_once`); returns each job's error, ``None`` where it
    finished. Every job is checked before Ray starts; a failed job does not stop the others (each resumes from its
    own checkpoints on a rerun).

    Each job's driver is a Ray task that takes no CPU (its workers take theirs): so the jobs of a 16-CPU node with
    2 workers each run 8 at a time, with the same recipe as one after another, where raising ``num_workers``
    instead would change the per-worker batch.

    Raises:
        PreflightError, TrackingError: as :func:`run_training`, for the first job that fails a check.
    """
    import ray

    from sofnet.preflight import check_storage_for_nodes

    prepared = [_prepared(cfg) for cfg in cfgs]
    init_ray(prepared[0][0])
    for cfg, _ in prepared:
        check_storage_for_nodes(cfg.train.output_dir, cluster_nodes(), cfg.train.shared_storage)
    at_once = jobs_at_once([cfg for cfg, _ in prepared], ray.cluster_resources(), max_concurrent)
    logger.info("%d training job%s, %d at a time (each %s)", len(cfgs), "s" * (len(cfgs) > 1), at_once,
                ", ".join(f"{v:g} {k}" for k, v in job_resources(prepared[0][0]).items()))
    errors: List[Optional[str]] = [None] * len(cfgs)
    if at_once == 1:  # one after another, in this process: a task's worker would import torch and Ray Train again
        for i, (cfg, tracking_uri) in enumerate(prepared):
            _announce(cfg, tracking_uri)
            errors[i] = train_job(OmegaConf.to_container(cfg), tracking_uri, _job_tags(cfg), verbose)
        return errors
    task = ray.remote(num_cpus=0, max_retries=0)(train_job)  # a job's retries are Ray Train's (max_failures)
    waiting, running = list(range(len(cfgs))), {}
    while waiting or running:
        while waiting and len(running) < at_once:
            i = waiting.pop(0)
            cfg, tracking_uri = prepared[i]
            _announce(cfg, tracking_uri)
            running[task.remote(OmegaConf.to_container(cfg), tracking_uri, _job_tags(cfg), verbose, True)] = i
        (ref,), _ = ray.wait(list(running), num_returns=1)  # returns when a job ends (the jobs bound their own time)
        i = running.pop(ref)
        try:
            errors[i] = ray.get(ref)
        except ray.exceptions.RayError as e:  # the driver task itself died (its node lost)
            errors[i] = f"{type(e).__name__}: {str(e).strip().splitlines()[0]}"
    return errors
