"""The command line shared by ``jobs/train_anet.py`` and ``jobs/train_sports1m.py``.

Usage::

    python jobs/train_anet.py --config jobs/configs/anet_sofnet.yaml [key=value ...] [--smoke-test]

``--smoke-test`` shrinks the run (resnet18, 4 segments at 64 px, one epoch per stage, 2 clips per batch) and, when
the config names no shards, generates a tiny synthetic dataset under ``<train.output_dir>/smoke_data`` first.
Overrides after it still apply (e.g. ``scaling.use_gpu=true``). Exit status: 0 done, 2 bad config or unusable
MLflow store, 1 training failed.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Optional, Sequence

from sofnet.config import load_config_or_exit
from sofnet.session import SMOKE, ensure_synthetic_shards  # noqa: F401  (re-exported: tests and sweeps)

logger = logging.getLogger(__name__)

def main(dataset: str, argv: Optional[Sequence[str]] = None) -> int:
    """Parse ``--config``, overrides and ``--smoke-test``; train; return the exit status."""
    parser = argparse.ArgumentParser(description=f"Two-stage SoF-Net training on {dataset} (Ray Train + DeepSpeed)")
    parser.add_argument("--config", required=True, help="experiment YAML (jobs/configs/*.yaml)")
    parser.add_argument("--smoke-test", action="store_true", help="tiny, fast run to check the whole pipeline")
    parser.add_argument("--verbose", action="store_true", help="every library's log lines and warnings")
    parser.add_argument("--pid-dir", default="", help=argparse.SUPPRESS)  # tests: where workers write their pid
    parser.add_argument("overrides", nargs="*", help="key=value config overrides (OmegaConf dotlist)")
    args = parser.parse_args(argv)
    from sofnet.console import setup

    setup(verbose=args.verbose)
    overrides = (SMOKE if args.smoke_test else []) + list(args.overrides)
    cfg = load_config_or_exit(args.config, [f"data.dataset={dataset}"] + overrides)
    if args.smoke_test and not cfg.data.train_shards:
        base = "runs" if "://" in cfg.train.output_dir else cfg.train.output_dir  # generated on this machine
        shards = ensure_synthetic_shards(Path(base) / "smoke_data")
        cfg = load_config_or_exit(args.config, [f"data.dataset={dataset}"] + overrides + [
            f"data.train_shards={shards}", f"data.val_shards={shards}", "model.num_classes=3"])
    from sofnet.preflight import PreflightError
    from sofnet.train.ray_job import run_training
    from sofnet.train.tracking import TrackingError

    try:
        result = run_training(cfg, pid_dir=args.pid_dir, verbose=args.verbose)
    except (PreflightError, TrackingError) as e:
        sys.stderr.write(f"error: {e}\n")
        return 2
    if result.error is not None:
        logger.error("training failed: %s", result.error)
        return 1
    return 0
