"""The command line of ``jobs/tune_alpha_beta.py`` and ``jobs/tune_early_exit.py``.

Usage::

    python jobs/tune_alpha_beta.py --sweep jobs/configs/tune/alpha_beta.yaml [--smoke-test] [--resume] [key=value ...]
    python jobs/tune_early_exit.py --sweep jobs/configs/tune/early_exit.yaml checkpoint=runs/demo [--smoke-test]

``key=value`` overrides apply to the sweep file (``storage_path=/tmp/t``, ``mlflow.tracking_uri=...``,
``checkpoint=...``, ``'overrides=[scaling.num_workers=2]'``). ``--smoke-test`` merges the file's ``smoke`` section
and the training job's smoke settings (synthetic data when no shards are named). ``--resume`` continues an
interrupted sweep (``Tuner.restore``). Exit status: 0 done, 2 bad sweep/config or unusable MLflow store, 1 a
trial failed.

Every sweep value is checked before anything is spent (no Ray, no training, no cache, no MLflow run): a bad one is
one line on stderr naming the sweep file and key, exit status 2. Progress and the final table are logged (stderr).
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any, Dict, Optional, Sequence

from sofnet.config import ConfigError

logger = logging.getLogger(__name__)


def main(kind: str, argv: Optional[Sequence[str]] = None) -> int:
    """Parse, check, run the sweep of ``kind`` (alpha_beta | early_exit), log its table; return the exit status."""
    title = {"alpha_beta": "Table D: alpha/beta sweep, each trial a Ray Train + DeepSpeed training run",
             "early_exit": "Table C: rho/T_min sweep of early exit, replayed from a cache"}[kind]
    p = argparse.ArgumentParser(description=title)
    p.add_argument("--sweep", required=True, help="sweep YAML (jobs/configs/tune/*.yaml)")
    p.add_argument("--smoke-test", action="store_true", help="tiny sweep on synthetic data to check the pipeline")
    p.add_argument("--resume", action="store_true", help="continue an interrupted sweep (Tuner.restore)")
    p.add_argument("overrides", nargs="*", help="key=value overrides of the sweep file")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from sofnet.tune.runner import preflight
    from sofnet.tune.sweep import load_sweep

    try:  # the checks need neither Ray nor MLflow: a bad value is refused in about a second
        sweep = load_sweep(args.sweep, args.overrides, smoke=args.smoke_test)
        if sweep.kind != kind:
            raise ConfigError(f"{args.sweep}: kind={sweep.kind}, this job runs {kind} sweeps")
        cfg = preflight(sweep, src=args.sweep, smoke=args.smoke_test, resume=args.resume)
    except ConfigError as e:
        return _refuse(e)
    from sofnet.console import setup

    # Every library's INFO as before (verbose), with the console's Ray defaults, set before Ray is imported: its
    # deduplication would drop or collapse the progress lines of trials that train side by side.
    setup(verbose=True)
    from sofnet.train.tracking import TrackingError

    if kind == "alpha_beta":
        from sofnet.tune.alpha_beta import run_alpha_beta_sweep as run
    else:
        from sofnet.tune.early_exit import run_early_exit_sweep as run
    try:
        outcome = run(sweep, smoke=args.smoke_test, resume=args.resume, src=args.sweep, checked=cfg)
    except (ConfigError, TrackingError, FileNotFoundError) as e:
        return _refuse(e)
    return summarize(title, sweep, outcome)


def _refuse(error: Exception) -> int:
    """One line on stderr, exit status 2."""
    sys.stderr.write(f"error: {error}\n")
    return 2


def summarize(title: str, sweep: Any, outcome: Dict[str, Any]) -> int:
    """Log the table, the best trial and any failed ones (INFO: what the user reads); return the exit status."""
    best = outcome["best"]
    lines = [f"{title} ({sweep.name}; MLflow parent run {outcome['parent_run_id']})", "", outcome["table"]]
    if best is None:
        lines.append(f"no trial reported {sweep.metric}")
    else:
        lines.append(f"best trial {best['trial_id']}: {sweep.metric} = {best[sweep.metric]:.4f}"
                     + (f"; registered {outcome['registered']}" if outcome.get("registered") else ""))
    if outcome["failed"]:
        lines.append(f"failed trials: {', '.join(outcome['failed'])}")
    logger.info("\n".join(lines))
    return 1 if best is None or outcome["failed"] else 0
