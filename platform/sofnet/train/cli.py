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

logger = logging.getLogger(__name__)

SMOKE = ["model.backbone=resnet18", "model.num_segments=4", "model.input_size=64", "model.pretrained=none",
         "model.gate_hidden=64", "data.batch_size=2", "data.num_workers=0", "data.resize=73",
         "data.shuffle_buffer=8", "train.stage1.epochs=1", "train.stage2.epochs=1", "train.log_every=1",
         "train.decision_map_videos=2"]


def ensure_synthetic_shards(root: str | Path, videos: int = 16, classes: int = 3, seed: int = 0) -> Path:
    """Generate and shard a tiny synthetic dataset under ``root`` (kept: a second call reuses it)."""
    from data_prep.shards import PrepParams
    from data_prep.synthetic import generate, make_shards

    root = Path(root)
    shards = root / "shards"
    if not (shards / "manifest.json").is_file():
        annotation = generate(root / "raw", videos=videos, classes=classes, seed=seed, duration=(4.0, 6.0),
                              size=(96, 72), fps=8)
        make_shards(annotation, shards, params=PrepParams(short_side=72, shard_size=4, fps=2.0, min_frames=4),
                    use_ray=False)
    return shards


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
        shards = ensure_synthetic_shards(Path(cfg.train.output_dir) / "smoke_data")
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
