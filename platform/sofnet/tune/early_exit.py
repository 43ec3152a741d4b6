"""Table C: a (rho, T_min) sweep of early exit, each point replayed from the cache instead of running the network.

Usage (what ``jobs/tune_early_exit.py`` does)::

    from sofnet.tune.early_exit import run_early_exit_sweep
    from sofnet.tune.sweep import load_sweep
    path = "jobs/configs/tune/early_exit.yaml"
    sweep = load_sweep(path, ["checkpoint=runs/demo"])
    outcome = run_early_exit_sweep(sweep, src=path)   # writes the cache if missing, one Tune trial per point
    outcome["table"]                                   # Table C, markdown: ours and the official counting

Before the cache is written or Ray starts, every grid value goes through the training config's rules
(``early_exit.rho`` in (0, 1], ``t_min`` >= 1, ``mode`` reached | official) and every ``t_min`` must be at most the
frames of the cached model (a larger one never fires: its column would repeat "no early exit"). Every trial loads
the cache, replays its point, logs an MLflow child run (params ``early_exit.*``, metrics ``val/et/*`` named as the
full evaluation names them) and reports the metrics to Tune.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

from sofnet.config import ConfigError
from sofnet.session import init_ray
from sofnet.tune.et_cache import META, ETBundle, load_model, replay_metrics, write_cache
from sofnet.tune.report import SweepRun, log_metrics, pareto_figure, table_c
from sofnet.tune.runner import base_config, best_row, preflight, result_rows, run_tuner, trial_resources
from sofnet.tune.sweep import ET_KEYS, sweep_dir, trial_config, trial_params, trial_values

logger = logging.getLogger(__name__)


def cache_dir(sweep: Any) -> Path:
    """The sweep's cache directory: ``cache``, else ``<sweep dir>/et_cache`` (absolute)."""
    return Path(sweep.cache).resolve() if sweep.cache else sweep_dir(sweep) / "et_cache"


def cached_model(sweep: Any, tracking_uri: Optional[str] = None, src: str = "<sweep>") -> Tuple[Any, int]:
    """``(model or None, frames)``: the frames per video of the existing cache (its ``meta.json``), else of the
    model ``checkpoint`` names: a directory's ``model.json`` is read (the weights load later, if the checks pass),
    an MLflow URI is loaded (its spec comes with the model).

    Raises:
        ConfigError: neither a cache nor a usable ``checkpoint``.
    """
    from sofnet import checkpoint as ckpt

    d = cache_dir(sweep)
    if (d / "cache.pt").is_file():
        try:
            return None, int(json.loads((d / META).read_text())["model"]["num_segments"])
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ConfigError(f"{src}: cache={d}: unreadable {META} ({e}); write the cache again") from None
    if not sweep.checkpoint:
        raise ConfigError(f"{src}: checkpoint: {d} holds no early-exit cache; name the trained model with "
                          "checkpoint=<run dir, checkpoint dir or models:/name@alias> (or write one: "
                          "jobs/evaluate.py --et-cache)")
    if sweep.checkpoint.startswith(("models:/", "runs:/")):
        model = load_model(sweep.checkpoint, tracking_uri)
        return model, int(model.hparams()["num_segments"])
    try:
        with ckpt.local_copy(sweep.checkpoint) as (d, _):  # an object store's copy is removed after reading
            return None, int(ckpt.read_spec(d)["model"]["num_segments"])
    except (ckpt.CheckpointError, KeyError, TypeError, ValueError) as e:
        raise ConfigError(f"{src}: checkpoint={sweep.checkpoint}: {e}") from None


def check_frames(sweep: Any, cfg: Any, frames: int, src: str = "<sweep>") -> None:
    """Every grid value again, with the cached model's ``frames`` as ``model.num_segments``: the training config's
    early-exit rules (``sofnet.config``: ``t_min`` at most the frames) hold for the model that is replayed, whose
    frames need not be the base config's."""
    singles = [(label, p) for label, p in trial_values(sweep.search)] or [("base config", {})]
    for label, params in singles:
        trial_config(cfg, {"model.num_segments": frames, **params},
                     src=f"{src} {label} (the cached model has {frames} frames)")


def ensure_cache(sweep: Any, cfg: Any, model: Any = None, tracking_uri: Optional[str] = None) -> Path:
    """The cache directory, written from ``model`` (else ``sweep.checkpoint``) on ``cfg``'s validation shards when
    it has none."""
    d = cache_dir(sweep)
    if (d / "cache.pt").is_file():
        logger.info("using the early-exit cache at %s", d)
        return d
    if model is None:
        model = cached_model(sweep, tracking_uri)[0] or load_model(sweep.checkpoint, tracking_uri)
    return write_cache(model, cfg, d, source=sweep.checkpoint)


def replay_trial(config: Dict[str, Any], *, cache: str, defaults: Dict[str, Any], tracking_uri: str,
                 parent: Dict[str, str]) -> None:
    """Tune trainable: replay one point, log it as a child of the sweep's MLflow run, report to Tune."""
    from mlflow.tracking import MlflowClient
    from ray import tune

    params = {**defaults, **trial_params(config)}
    bundle = ETBundle.load(cache)  # absolute: a trial's working directory is not the job's
    metrics = replay_metrics(bundle, float(params["early_exit.rho"]), int(params["early_exit.t_min"]),
                             str(params["early_exit.mode"]))
    trial_id = tune.get_context().get_trial_id()
    run = SweepRun(MlflowClient(tracking_uri=tracking_uri), parent["experiment_id"], parent["run_id"],
                   parent["name"])
    name = (f"{parent['name']} rho={params['early_exit.rho']} t_min={params['early_exit.t_min']} "
            f"{params['early_exit.mode']}")
    run_id = run.child(trial_id, name, {**params, "cache": cache, "videos": len(bundle.ids)})
    log_metrics(run.client, run_id, metrics)
    run.client.set_terminated(run_id, "FINISHED")
    tune.report(metrics)


def run_early_exit_sweep(sweep: Any, *, smoke: bool = False, resume: bool = False, src: str = "<sweep>",
                         checked: Any = None) -> Dict[str, Any]:
    """Checks, write (or reuse) the cache, sweep the grid by replay in Ray Tune, log Table C and the Pareto figure.

    ``checked``: the training config :func:`sofnet.tune.runner.preflight` returned (else it runs here).

    Returns:
        ``{"rows": [...], "table": Table C markdown, "best": best row, "parent_run_id": ..., "cache": path}``.

    Raises:
        ConfigError: a bad sweep or grid value, no cache and no checkpoint (``src`` names the sweep file), before the
            cache is written or Ray starts.
    """
    from ray import tune

    from sofnet.train.tracking import resolve_tracking_uri

    cfg = checked if checked is not None else preflight(sweep, src=src, smoke=smoke, resume=resume)
    tracking_uri = resolve_tracking_uri(sweep.mlflow.tracking_uri)
    model, frames = cached_model(sweep, tracking_uri, src)
    check_frames(sweep, cfg, frames, src)
    cfg = base_config(sweep, cfg, smoke=smoke)
    cache = ensure_cache(sweep, cfg, model, tracking_uri)
    parent = SweepRun.open(sweep, tracking_uri, sweep_dir(sweep))
    if not resume:
        parent.client.log_param(parent.run_id, "cache", str(cache))
    defaults = {k: cfg.early_exit[k.split(".")[1]] for k in ET_KEYS}
    init_ray(cfg)
    trainable = tune.with_resources(
        tune.with_parameters(replay_trial, cache=str(cache), defaults=defaults, tracking_uri=tracking_uri,
                             parent={"experiment_id": parent.experiment_id, "run_id": parent.run_id,
                                     "name": sweep.name}),
        trial_resources(sweep))
    results = run_tuner(sweep, trainable, resume=resume)
    rows = [{**defaults, **r} for r in result_rows(results)]
    rows.sort(key=lambda r: (str(r["early_exit.mode"]), float(r["early_exit.rho"]), int(r["early_exit.t_min"])))
    failed = [r["trial_id"] for r in rows if r["status"] != "ok"]
    if failed:
        logger.error("trials failed: %s", failed)
    ok = [r for r in rows if r["status"] == "ok"]
    table = table_c(ok)
    best = best_row(rows, sweep.metric, sweep.mode)
    fig = None if not ok else pareto_figure(
        ok, x="val/et/gflops_per_frame", y="val/et/mAP", xlabel="GFLOPs per frame",
        label=lambda r: f"{r['early_exit.rho']:g}/{r['early_exit.t_min']}"
        + ("" if r["early_exit.mode"] == "reached" else f" {r['early_exit.mode']}"), title=f"{sweep.name}: rho/T_min")
    parent.finish({"table_c.md": table}, figure=fig, best=best, records=rows)
    return {"rows": rows, "table": table, "best": best, "parent_run_id": parent.run_id, "cache": str(cache),
            "failed": failed}
