"""Table C: a (rho, T_min) sweep of early exit, each point replayed from the cache instead of running the network.

Usage (what ``jobs/tune_early_exit.py`` does)::

    from sofnet.tune.early_exit import run_early_exit_sweep
    from sofnet.tune.sweep import load_sweep
    sweep = load_sweep("jobs/configs/tune/early_exit.yaml", ["checkpoint=runs/demo"])
    outcome = run_early_exit_sweep(sweep)      # writes the cache if missing, one Tune trial per point
    print(outcome["table"])

Every trial loads the cache, replays its point, logs an MLflow child run (params ``early_exit.*``, metrics
``val/et/*`` named as the full evaluation names them) and reports the metrics to Tune.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Dict, Optional

from sofnet.tune.et_cache import ETBundle, load_model, replay_metrics, write_cache
from sofnet.tune.report import SweepRun, log_metrics, pareto_figure, table_c
from sofnet.tune.runner import base_config, best_row, init_ray, trial_resources, result_rows, run_tuner
from sofnet.tune.sweep import sweep_dir, trial_params

logger = logging.getLogger(__name__)

ET_KEYS = ("early_exit.rho", "early_exit.t_min", "early_exit.mode")


def cache_dir(sweep: Any) -> Path:
    """The sweep's cache directory: ``cache``, else ``<sweep dir>/et_cache`` (absolute)."""
    return Path(sweep.cache).resolve() if sweep.cache else sweep_dir(sweep) / "et_cache"


def ensure_cache(sweep: Any, cfg: Any, tracking_uri: Optional[str] = None) -> Path:
    """The cache directory, written from ``sweep.checkpoint`` on ``cfg``'s validation shards when it has none."""
    d = cache_dir(sweep)
    if (d / "cache.pt").is_file():
        logger.info("using the early-exit cache at %s", d)
        return d
    if not sweep.checkpoint:
        raise FileNotFoundError(f"{d}: no early-exit cache; name the trained model with checkpoint=<run dir, "
                                "checkpoint dir or models:/name@alias> (or write one: jobs/evaluate.py --et-cache)")
    model = load_model(sweep.checkpoint, tracking_uri)
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
    name = f"{parent['name']} rho={params['early_exit.rho']} t_min={params['early_exit.t_min']}"
    run_id = run.child(trial_id, name, {**params, "cache": cache, "videos": len(bundle.ids)})
    log_metrics(run.client, run_id, metrics)
    run.client.set_terminated(run_id, "FINISHED")
    tune.report(metrics)


def run_early_exit_sweep(sweep: Any, *, smoke: bool = False, resume: bool = False) -> Dict[str, Any]:
    """Write (or reuse) the cache, sweep the grid by replay in Ray Tune, log Table C and the Pareto figure.

    Returns:
        ``{"rows": [...], "table": Table C markdown, "best": best row, "parent_run_id": ..., "cache": path}``.
    """
    from ray import tune

    from sofnet.train.tracking import resolve_tracking_uri

    cfg = base_config(sweep, smoke=smoke)
    tracking_uri = resolve_tracking_uri(sweep.mlflow.tracking_uri)
    cache = ensure_cache(sweep, cfg, tracking_uri)
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
        label=lambda r: f"{r['early_exit.rho']:g}/{r['early_exit.t_min']}", title=f"{sweep.name}: rho/T_min")
    parent.finish({"table_c.md": table}, figure=fig, best=best, records=rows)
    return {"rows": rows, "table": table, "best": best, "parent_run_id": parent.run_id, "cache": str(cache),
            "failed": failed}
