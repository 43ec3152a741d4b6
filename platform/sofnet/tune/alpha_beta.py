"""Table D: a Ray Tune sweep over the loss weights, each trial a Ray Train + DeepSpeed run of the training job.

Usage (what ``jobs/tune_alpha_beta.py`` does)::

    from sofnet.tune.alpha_beta import run_alpha_beta_sweep
    from sofnet.tune.sweep import load_sweep
    path = "jobs/configs/tune/alpha_beta.yaml"
    outcome = run_alpha_beta_sweep(load_sweep(path, smoke=True), smoke=True, src=path)
    outcome["table"]                                   # Table D, markdown, also in the MLflow parent run

Before Ray starts, :func:`sofnet.tune.runner.preflight` builds the training config of every point and range end,
and ``stage1_checkpoint`` must hold a checkpoint: a bad value is one error line, not a failure after stage 1.

A trial builds the training job's own ``TorchTrainer`` (``sofnet.train.ray_job.make_trainer``: workers and
resources from ``scaling.*``) for its (alpha, beta) and runs it inside the Tune trial; ``TuneReportCallback``
forwards every epoch's ``ray.train.report`` to Tune, so ASHA sees ``val/mAP`` per epoch. The training's MLflow
runs carry the sweep's ``mlflow.parentRunId``. With ``shared_stage1`` the stage-1 backbone (independent of alpha and
beta) is trained once before the sweep and every trial trains stage 2 from it. A trial's training lives in
``<sweep dir>/trials/trial_<id>`` and resumes from its last checkpoint when a resumed sweep runs the trial again.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Dict, Optional

from omegaconf import OmegaConf

from sofnet.tune.report import SweepRun, pareto_figure, register_run_model, table_d
from sofnet.config import ConfigError
from sofnet.session import init_ray
from sofnet.tune.runner import (base_config, best_row, plain, preflight, result_rows, run_tuner,
                                trial_resources)
from sofnet.tune.sweep import sweep_dir, trial_config, trial_params

logger = logging.getLogger(__name__)

STAGE1_FILE = "stage1.json"


def train_stage1(sweep: Any, cfg: Any, tracking_uri: str, parent: SweepRun) -> str:
    """Train stage 1 once for the whole sweep (or reuse it: ``stage1.json``); returns its last checkpoint."""
    from sofnet.train.ray_job import git_commit, make_trainer

    record = sweep_dir(sweep) / STAGE1_FILE
    if record.is_file():
        return json.loads(record.read_text())["checkpoint"]
    s1 = OmegaConf.create(plain(cfg))
    s1.name, s1.train.output_dir = "stage1", str(sweep_dir(sweep))
    s1.train.stage2.enabled = False
    s1.mlflow.registered_model = ""
    logger.info("training the shared stage 1 in %s/stage1", sweep_dir(sweep))
    tags = {**parent.child_tags("stage1"), "git_commit": git_commit()}
    result = make_trainer(s1, tracking_uri, tags).fit()
    if result.error is not None or result.checkpoint is None:
        raise RuntimeError(f"shared stage 1 failed: {result.error}")
    record.write_text(json.dumps({"checkpoint": result.checkpoint.path}))
    return result.checkpoint.path


def train_trial(config: Dict[str, Any], *, base: Dict[str, Any], trials_dir: str, stage1: str, tracking_uri: str,
                tags: Dict[str, str]) -> None:
    """Tune trainable: the training job with this trial's parameters, as a TorchTrainer inside the trial."""
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from sofnet.train.ray_job import make_trainer

    trial_id = tune.get_context().get_trial_id()
    params = trial_params(config)
    cfg = trial_config(base, params, src=f"trial {trial_id}")
    cfg.name, cfg.train.output_dir = f"trial_{trial_id}", trials_dir  # same name on a rerun: training resumes
    cfg.mlflow.registered_model = ""  # the sweep registers its best trial, not every trial
    if stage1:
        cfg.train.stage1.enabled = False
        cfg.train.stage2.init_from = stage1
    done = finished_training(Path(trials_dir) / cfg.name, cfg)
    if done is not None:
        # A resumed sweep reran a trial whose training had finished (the driver died before Tune saved that):
        # training again would report nothing, so report what its last epoch logged.
        tune.report(_logged_metrics(tracking_uri, done))
        return
    trainer = make_trainer(cfg, tracking_uri, {**tags, "tune_trial_id": trial_id})
    # Forward each ray.train.report of the workers to this Tune trial (per epoch: what ASHA decides on).
    trainer.run_config.callbacks.append(TuneReportCallback())
    trainer.fit()


def finished_training(run_dir: Path, cfg: Any) -> Optional[Path]:
    """The last checkpoint of a trial's training when its final stage has run all its epochs, else None."""
    from sofnet import checkpoint
    from sofnet.train.worker import enabled_stages

    if not run_dir.is_dir():
        return None
    try:
        ckpt = checkpoint.resolve(run_dir, which="last")
    except checkpoint.CheckpointError:
        return None
    meta = checkpoint.read_meta(ckpt)
    last = enabled_stages(cfg)[-1]
    return ckpt if meta["stage"] == last and meta["epoch"] + 1 >= cfg.train[last].epochs else None


def _logged_metrics(tracking_uri: str, ckpt: Path) -> Dict[str, Any]:
    from mlflow.tracking import MlflowClient

    from sofnet import checkpoint

    meta = checkpoint.read_meta(ckpt)
    run = MlflowClient(tracking_uri=tracking_uri).get_run(meta["runs"][meta["stage"]])
    return {**run.data.metrics, "stage": 2 if meta["stage"] == "stage2" else 1, "epoch": meta["epoch"],
            "checkpoint_path": str(ckpt)}


def _fit_asha(sweep: Any, cfg: Any) -> None:
    """Keep ASHA's ``max_t`` above the reports a trial makes, so that a trial ends by itself.

    A trial that reaches ``max_t`` is stopped by Tune at its last report, while its TorchTrainer is still shutting
    down: the Train controller is killed before it frees its workers' placement group, and Ray's detached cleaner
    (which finds the cluster through ``$RAY_ADDRESS`` or ``/tmp/ray/ray_current_cluster``) can miss it on a machine
    with several Ray clusters; the leaked CPUs then starve the next trials.
    """
    from sofnet.train.worker import enabled_stages

    reports = sum(cfg.train[s].epochs for s in enabled_stages(cfg)
                  if not (s == "stage1" and (sweep.shared_stage1 or sweep.stage1_checkpoint)))
    if sweep.scheduler.type == "asha" and sweep.scheduler.max_t <= reports:
        logger.warning("scheduler.max_t=%d <= %d reports per trial: using %d (a trial must end by itself)",
                       sweep.scheduler.max_t, reports, reports + 1)
        sweep.scheduler.max_t = reports + 1


def _trial_run_id(row: Dict[str, Any]) -> str:
    """The MLflow run of the trial's last stage, from the ``meta.json`` of its last checkpoint."""
    from sofnet import checkpoint

    meta = checkpoint.read_meta(row["checkpoint_path"])
    return meta["runs"][meta["stage"]]


def epochs_trained(row: Dict[str, Any], cfg: Any) -> Dict[str, int]:
    """``{"epochs_trained", "epochs_planned"}`` of the trial's last stage: fewer trained than planned = stopped early
    (by ASHA, or a failure). ``cfg`` is the trial's own training config (a point may change the epochs)."""
    from sofnet.train.worker import STAGES, enabled_stages

    last = enabled_stages(cfg)[-1]
    reached_last = row.get("stage") == STAGES.index(last) + 1 and isinstance(row.get("epoch"), (int, float))
    return {"epochs_trained": int(row["epoch"]) + 1 if reached_last else 0,
            "epochs_planned": int(cfg.train[last].epochs)}


def _stage1_checkpoint(sweep: Any, src: str) -> str:
    """The checkpoint ``stage1_checkpoint`` names (a run or checkpoint directory), checked before Ray starts."""
    from sofnet import checkpoint

    try:
        return str(checkpoint.resolve(Path(sweep.stage1_checkpoint).resolve(), which="last"))
    except checkpoint.CheckpointError as e:
        raise ConfigError(f"{src}: stage1_checkpoint: {e}") from None


def run_alpha_beta_sweep(sweep: Any, *, smoke: bool = False, resume: bool = False, src: str = "<sweep>",
                         checked: Any = None) -> Dict[str, Any]:
    """Checks, shared stage 1, the Tune sweep of stage-2 trainings, Table D, the Pareto figure, the best model.

    ``checked``: the training config :func:`sofnet.tune.runner.preflight` returned (else it runs here).

    Returns:
        ``{"rows", "table", "best", "parent_run_id", "registered" ("name@alias version N" or ""), "failed"}``.

    Raises:
        ConfigError: a bad sweep or trial value (``src`` names the sweep file), before Ray starts.
    """
    from ray import tune

    from sofnet.train.ray_job import git_commit
    from sofnet.train.tracking import resolve_tracking_uri

    cfg = checked if checked is not None else preflight(sweep, src=src, smoke=smoke, resume=resume)
    stage1 = _stage1_checkpoint(sweep, src) if sweep.stage1_checkpoint else ""
    cfg = base_config(sweep, cfg, smoke=smoke)
    tracking_uri = resolve_tracking_uri(sweep.mlflow.tracking_uri)
    parent = SweepRun.open(sweep, tracking_uri, sweep_dir(sweep))
    cfg.mlflow.experiment = sweep.mlflow.experiment  # trials' runs sit beside their parent
    init_ray(cfg)
    if not stage1 and sweep.shared_stage1:
        stage1 = train_stage1(sweep, cfg, tracking_uri, parent)
    _fit_asha(sweep, cfg)
    tags = {"mlflow.parentRunId": parent.run_id, "sweep": sweep.name, "git_commit": git_commit()}
    trainable = tune.with_resources(
        tune.with_parameters(train_trial, base=plain(cfg), trials_dir=str(sweep_dir(sweep) / "trials"),
                             stage1=stage1, tracking_uri=tracking_uri, tags=tags),
        trial_resources(sweep))
    results = run_tuner(sweep, trainable, resume=resume)
    rows = result_rows(results)
    for r in rows:
        params = {k: v for k, v in r.items() if "." in k and "/" not in k}  # config keys, not metrics
        r.setdefault("loss.alpha", cfg.loss.alpha)
        r.setdefault("loss.beta", cfg.loss.beta)
        r["mlflow_run_id"] = _trial_run_id(r) if r.get("checkpoint_path") else ""
        r.update(epochs_trained(r, trial_config(cfg, params, src=f"trial {r['trial_id']}")))
    failed = [r["trial_id"] for r in rows if r["status"] != "ok"]
    done = [r for r in rows if r["status"] == "ok" or sweep.metric in r]
    stopped = [r["trial_id"] for r in done if r["epochs_trained"] < r["epochs_planned"]]
    if stopped:
        logger.warning("trials stopped before their last epoch (Table D says so): %s", ", ".join(stopped))
    table = table_d(done)
    best = best_row(done, sweep.metric, sweep.mode)
    fig = None if not done else pareto_figure(done, x="val/gflops_per_video", y=sweep.metric,
                        label=lambda r: f"{r['loss.alpha']:g}/{'none' if r['loss.beta'] is None else r['loss.beta']}",
                        title=f"{sweep.name}: alpha/beta")
    registered = ""
    if sweep.mlflow.registered_model and best and best.get("mlflow_run_id"):
        version = register_run_model(tracking_uri, best["mlflow_run_id"], sweep.mlflow.registered_model,
                                     sweep.mlflow.alias)
        registered = f"{sweep.mlflow.registered_model}@{sweep.mlflow.alias} (version {version})"
    parent.finish({"table_d.md": table}, figure=fig, best=best, records=rows)
    return {"rows": rows, "table": table, "best": best, "parent_run_id": parent.run_id, "registered": registered,
            "failed": failed}
