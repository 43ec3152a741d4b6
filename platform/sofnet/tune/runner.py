"""What both sweep jobs share: the base training config, the Tuner (new or restored), the rows of the results.

Usage (``sofnet.tune.alpha_beta`` and ``sofnet.tune.early_exit`` do this)::

    cfg = preflight(sweep, src="alpha_beta.yaml", smoke=True, resume=False)   # every check, nothing spent yet
    cfg = base_config(sweep, cfg, smoke=True)              # the training config every trial starts from
    results = run_tuner(sweep, trainable, resume=False)    # Tuner(...).fit(), or Tuner.restore(...).fit()
    rows = result_rows(results)                            # [{"trial_id", "status", <params>, <metrics>}, ...]

A sweep lives in ``<storage_path>/<name>/``: ``tune/`` (Tune's experiment, what ``Tuner.restore`` reads),
``parent_run.json`` (the MLflow parent run, reused on resume) and whatever the sweep kind keeps there.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

from omegaconf import OmegaConf

from sofnet.config import ConfigError, load_config
from sofnet.tune.sweep import check_trials, param_space, scheduler, search_algorithm, sweep_dir, trial_params

logger = logging.getLogger(__name__)

TUNE_DIR = "tune"


def training_config(sweep: Any, smoke: bool = False, extra: Sequence[str] = ()) -> Any:
    """``base_config`` + (the training job's smoke settings) + ``overrides`` + ``extra``, validated; no side effects."""
    from sofnet.session import SMOKE

    return load_config(sweep.base_config, (SMOKE if smoke else []) + list(sweep.overrides) + list(extra))


def preflight(sweep: Any, *, src: str, smoke: bool = False, resume: bool = False) -> Any:
    """Everything that can be refused before Ray starts or anything trains: the training config, the config of every
    trial the search can make (:func:`sofnet.tune.sweep.check_trials`), and ``--resume`` against what exists.

    Returns:
        The (unprepared) training config.

    Raises:
        ConfigError: one line naming the file and key.
    """
    cfg = training_config(sweep, smoke)
    checked = check_trials(sweep, cfg, src)
    check_resume(sweep, resume, src)
    logger.debug("%s: %d trial configs checked", src, checked)
    return cfg


def check_resume(sweep: Any, resume: bool, src: str = "<sweep>") -> None:
    """``--resume`` needs a sweep at ``<storage_path>/<name>/tune``; a new sweep must not overwrite one there."""
    from ray.tune import Tuner  # imports Tune, starts no Ray session

    path = sweep_dir(sweep) / TUNE_DIR
    exists = Tuner.can_restore(str(path))
    if resume and not exists:
        raise ConfigError(f"{src}: --resume: no sweep to resume at {path} (storage_path/name)")
    if not resume and exists:
        raise ConfigError(f"{src}: a sweep already exists at {path}: pass --resume, or change name/storage_path")


def base_config(sweep: Any, cfg: Any, smoke: bool = False) -> Any:
    """The training config of the sweep, ready for Ray: with ``smoke`` and no shards named, a tiny synthetic
    dataset under ``<sweep dir>/smoke_data``; paths absolute (trials run in other working directories)."""
    from sofnet.session import ensure_synthetic_shards
    from sofnet.train.ray_job import prepare_config

    if smoke and not cfg.data.train_shards:
        shards = ensure_synthetic_shards(sweep_dir(sweep) / "smoke_data")
        cfg = training_config(sweep, smoke, [f"data.train_shards={shards}", f"data.val_shards={shards}",
                                             "model.num_classes=3"])
    return prepare_config(cfg)


def trial_resources(sweep: Any) -> Dict[str, float]:
    """What a trial's own process reserves: ``trial_cpus``; with 0, a token of memory, because Tune needs a
    non-empty bundle and a TorchTrainer trial's workers must not wait on a CPU its idle driver holds."""
    return {"cpu": sweep.trial_cpus} if sweep.trial_cpus > 0 else {"cpu": 0, "memory": 2**20}


def run_tuner(sweep: Any, trainable: Callable, resume: bool = False) -> Any:
    """Run the sweep with Ray Tune; with ``resume``, continue an interrupted one with ``Tuner.restore``
    (:func:`check_resume` has checked that one exists, or that a new one overwrites nothing)."""
    from ray import tune

    path = sweep_dir(sweep) / TUNE_DIR
    if resume:
        logger.info("resuming the sweep at %s", path)
        # resume_errored: a trial that failed because its driver was killed runs again (its training resumes
        # from its own last checkpoint); finished trials are kept as they are.
        tuner = tune.Tuner.restore(str(path), trainable=trainable, resume_unfinished=True, resume_errored=True)
    else:
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
