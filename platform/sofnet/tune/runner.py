"""What both sweep jobs share: the base training config, the Tuner (new or restored), the rows of the results.

Usage (``sofnet.tune.alpha_beta`` and ``sofnet.tune.early_exit`` do this)::

    cfg = base_config(sweep, smoke=True)                   # the training config every trial starts from
    results = run_tuner(sweep, trainable, resume=False)    # Tuner(...).fit(), or Tuner.restore(...).fit()
    rows = result_rows(results)                            # [{"trial_id", "status", <params>, <metrics>}, ...]

A sweep lives in ``<storage_path>/<name>/``: ``tune/`` (Tune's experiment, what ``Tuner.restore`` reads),
``parent_run.json`` (the MLflow parent run, reused on resume) and whatever the sweep kind keeps there.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

from omegaconf import OmegaConf

from sofnet.config import ConfigError, load_config
from sofnet.tune.sweep import param_space, scheduler, search_algorithm, sweep_dir, trial_params

logger = logging.getLogger(__name__)

TUNE_DIR = "tune"


def base_config(sweep: Any, smoke: bool = False) -> Any:
    """The training config of the sweep: ``base_config`` + ``overrides``; with ``smoke``, the training job's smoke
    settings (tiny model, one epoch per stage) and, when the config names no shards, a tiny synthetic dataset
    under ``<sweep dir>/smoke_data``. Paths come back absolute (trials run in other working directories)."""
    from sofnet.train.cli import SMOKE, ensure_synthetic_shards
    from sofnet.train.ray_job import prepare_config

    overrides = list(sweep.overrides)
    cfg = load_config(sweep.base_config, (SMOKE if smoke else []) + overrides)
    if smoke and not cfg.data.train_shards:
        shards = ensure_synthetic_shards(sweep_dir(sweep) / "smoke_data")
        cfg = load_config(sweep.base_config, SMOKE + overrides + [
            f"data.train_shards={shards}", f"data.val_shards={shards}", "model.num_classes=3"])
    return prepare_config(cfg)


def init_ray(cfg: Any) -> None:
    """Connect to ``scaling.ray_address`` or ``$RAY_ADDRESS`` (``ray job submit``), else start a new local Ray,
    never a stray local cluster of someone else (what ``address=None`` would attach to); once per process."""
    import ray

    if not ray.is_initialized():
        address = cfg.scaling.get("ray_address") or os.environ.get("RAY_ADDRESS") or "local"
        ray.init(address=address, log_to_driver=True)


def trial_resources(sweep: Any) -> Dict[str, float]:
    """What a trial's own process reserves: ``trial_cpus``; with 0, a token of memory, because Tune needs a
    non-empty bundle and a TorchTrainer trial's workers must not wait on a CPU its idle driver holds."""
    return {"cpu": sweep.trial_cpus} if sweep.trial_cpus > 0 else {"cpu": 0, "memory": 2**20}


def run_tuner(sweep: Any, trainable: Callable, resume: bool = False) -> Any:
    """Run the sweep with Ray Tune; with ``resume``, continue an interrupted one with ``Tuner.restore``.

    Raises:
        ConfigError: ``resume`` without a sweep to resume, or a new sweep where one already exists.
    """
    from ray import tune

    path = sweep_dir(sweep) / TUNE_DIR
    exists = tune.Tuner.can_restore(str(path))
    if resume:
        if not exists:
            raise ConfigError(f"--resume: no sweep to resume at {path}")
        logger.info("resuming the sweep at %s", path)
        # resume_errored: a trial that failed because its driver was killed runs again (its training resumes
        # from its own last checkpoint); finished trials are kept as they are.
        tuner = tune.Tuner.restore(str(path), trainable=trainable, resume_unfinished=True, resume_errored=True)
    else:
        if exists:
            raise ConfigError(f"a sweep already exists at {path}: pass --resume, or change name/storage_path")
        s = sweep.search
        tuner = tune.Tuner(
            trainable,
            param_space=param_space(s),
            tune_config=tune.TuneConfig(metric=sweep.metric, mode=sweep.mode, search_alg=search_algorithm(sweep),
                                        scheduler=scheduler(sweep), num_samples=s.num_samples,
                                        max_concurrent_trials=sweep.max_concurrent_trials,
                                        trial_dirname_creator=lambda trial: f"trial_{trial.trial_id}"),
            run_config=tune.RunConfig(name=TUNE_DIR, storage_path=str(sweep_dir(sweep))),
        )
    return tuner.fit()


def result_rows(results: Any) -> List[Dict[str, Any]]:
    """One flat row per trial: ``trial_id``, ``status`` (ok/error), its parameters and its last reported metrics."""
    rows = []
    for r in results:
        metrics = dict(r.metrics or {})
        config = metrics.pop("config", None) or r.config or {}
        row: Dict[str, Any] = {"trial_id": metrics.get("trial_id") or Path(r.path).name.removeprefix("trial_"),
                               "status": "error" if r.error else "ok"}
        row.update(trial_params(dict(config)))
        row.update({k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
                    and (k.startswith(("val/", "train/")) or k in ("training_iteration", "stage", "epoch"))})
        for k in ("checkpoint_path",):
            if k in metrics:
                row[k] = metrics[k]
        rows.append(row)
    return rows


def best_row(rows: List[Dict[str, Any]], metric: str, mode: str) -> Optional[Dict[str, Any]]:
    """The row with the best ``metric`` (ties: the first); None when no trial reported it."""
    scored = [r for r in rows if isinstance(r.get(metric), (int, float)) and not math.isnan(r[metric])]
    if not scored:
        return None
    return (max if mode == "max" else min)(scored, key=lambda r: r[metric])


def plain(cfg: Any) -> Dict[str, Any]:
    """A config as a plain dict (what crosses into Ray)."""
    return OmegaConf.to_container(cfg, resolve=True)
