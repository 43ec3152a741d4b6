"""Cost of Table C's rho x T_min grid by replay from the early-exit cache vs a full skipping-path evaluation per point.

    .venv/bin/python bench/et_replay.py                       # ResNet-18, 8 x 112 px, 48 synthetic videos, CPU
    .venv/bin/python bench/et_replay.py --backbone resnet50 --size 224 --segments 16 --json

Both sides run in this one process on the same real shards (``data_prep.synthetic``, written to a temporary
directory unless ``--shards`` names some) with the same SoF-Net, whose gates are calibrated to stop frames at every
block (``sofnet.gate_control.calibrate_gates``) so that early exit really fires:

- full: for each of the 12 points, ``sofnet.train.loop.evaluate`` with that (rho, T_min), i.e. what
  ``jobs/evaluate.py --rho R --t-min T`` runs: the loader, the skipping path without and with early exit, the
  metrics; and, leaner, the loader + the early-exit pass + the metrics only (``et_pass``);
- replay: the same 12 points by ``sofnet.tune.et_cache.replay_metrics`` from the cache; reported alone (the cache
  comes from the pass without early exit that every evaluation runs anyway) and with the cache pass added.

Each point's metrics are checked equal on both sides. Wall-clock and process CPU seconds are reported; on a shared
machine the CPU figure is the steadier one.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, Tuple

import torch

GRID = [(rho, t) for rho in (0.95, 0.99, 0.999) for t in (2, 3, 4, 5)]


def timed(fn: Callable[[], Any]) -> Tuple[Any, float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - wall, time.process_time() - cpu


def build(args: argparse.Namespace, shards: Path) -> Tuple[torch.nn.Module, Any, Any]:
    from omegaconf import OmegaConf

    from sofnet.config import load_config, model_config
    from sofnet.data import make_eval_loader
    from sofnet.gate_control import calibrate_gates
    from sofnet.models import build_model

    resize = int(args.size * 256 / 224)
    cfg = load_config(None, [f"data.val_shards={shards}", f"data.resize={resize}", f"data.batch_size={args.batch}",
                             "data.num_workers=0", "model.num_classes=3"])
    loader = make_eval_loader(shards, num_segments=args.segments, input_size=args.size, resize=resize,
                              batch_size=args.batch, num_workers=0, num_classes=3, subset="validation")
    x = torch.cat([b["frames"] for b in loader]).float()
    model = build_model(model_config(arch="sofnet", backbone=args.backbone, num_classes=3, num_segments=args.segments,
                                     input_size=args.size, gate_hidden=128)).eval()
    with torch.no_grad():  # a classifier confident enough for early exit to fire at Table C's thresholds
        model.fc.weight.copy_(torch.randn(model.fc.weight.shape, generator=torch.Generator().manual_seed(3)) * 0.5)
    calibrate_gates(model, x[:16], (0.9, 0.8, 0.7, 0.6, 0.5), seed=3)
    return model, OmegaConf.create(OmegaConf.to_container(cfg)), loader


@torch.no_grad()
def et_pass(model: torch.nn.Module, loader: Any, rho: float, t_min: int) -> Dict[str, float]:
    """The leanest full evaluation of a point: the loader, the skipping path with early exit only, the metrics."""
    import numpy as np

    from sofnet.evaluation import score

    outs, ids, targets, labels = [], [], [], []
    for b in loader:
        outs.append(model.infer(b["frames"], rho=rho, t_min=t_min))
        ids += list(b["id"])
        targets.append(b["labels"].numpy())
        labels.append(b["label"].numpy())
    order = np.argsort(np.array(ids), kind="stable")

    def cat(name: str, fn: Callable = lambda v: v) -> np.ndarray:
        return torch.cat([fn(getattr(o, name)) for o in outs]).numpy()[order]

    return score("val/et/", cat("logits", lambda v: v.float().softmax(-1)), np.concatenate(targets)[order],
                            np.concatenate(labels)[order], cat("decisions"), cat("gflops", lambda v: v.double()),
                            cat("fallback"))[0]


def run(args: argparse.Namespace) -> Dict[str, Any]:
    from sofnet.train.cli import ensure_synthetic_shards
    from sofnet.early_exit import EarlyExit
    from sofnet.evaluation import evaluate
    from sofnet.tune.et_cache import ETBundle, replay_metrics, write_cache

    torch.manual_seed(0)
    with tempfile.TemporaryDirectory(prefix="et-replay-") as tmp:
        shards = Path(args.shards) if args.shards else ensure_synthetic_shards(Path(tmp) / "data", videos=args.videos,
                                                                               classes=3, seed=11)
        model, cfg, loader = build(args, shards)
        # warm-up: allocator, lazy inits
        evaluate(model, loader, device=torch.device("cpu"), num_classes=3, et=EarlyExit(True, *GRID[0]))
        _, cache_wall, cache_cpu = timed(lambda: write_cache(model, cfg, Path(tmp) / "cache"))
        bundle = ETBundle.load(Path(tmp) / "cache")
        replayed, replay_wall, replay_cpu = timed(lambda: [replay_metrics(bundle, r, t) for r, t in GRID])

        def full_grid() -> list:
            return [{k: v for k, v in evaluate(model, loader, device=torch.device("cpu"), num_classes=3,
                                               et=EarlyExit(True, r, t)).metrics.items() if k.startswith("val/et/")}
                    for r, t in GRID]

        full, full_wall, full_cpu = timed(full_grid)
        et_only, et_wall, et_cpu = timed(lambda: [et_pass(model, loader, r, t) for r, t in GRID])
    equal = all(math.isclose(a[k], b[k], rel_tol=1e-9, abs_tol=1e-12) for a, b in zip(replayed, full) for k in b)
    equal &= all(math.isclose(a[k], b[k], rel_tol=1e-9, abs_tol=1e-12) for a, b in zip(replayed, et_only) for k in b)
    fired = sum(m["val/et/frames_processed"] < 1 for m in full)
    return {
        "setup": {"backbone": args.backbone, "segments": args.segments, "size": args.size, "videos": len(bundle.ids),
                  "points": len(GRID), "points_where_early_exit_fires": fired, "device": "cpu",
                  "threads": torch.get_num_threads()},
        "full_12_evaluations": {"wall_s": full_wall, "cpu_s": full_cpu},
        "full_12_et_passes_only": {"wall_s": et_wall, "cpu_s": et_cpu},
        "replay_12_points": {"wall_s": replay_wall, "cpu_s": replay_cpu},
        "cache_pass": {"wall_s": cache_wall, "cpu_s": cache_cpu},
        "ratio_replay_alone": {"wall": full_wall / replay_wall, "cpu": full_cpu / max(replay_cpu, 1e-9)},
        "ratio_with_cache_pass": {"wall": full_wall / (replay_wall + cache_wall),
                                  "cpu": full_cpu / (replay_cpu + cache_cpu)},
        "ratio_et_passes_only": {"replay_alone_wall": et_wall / replay_wall,
                                 "with_cache_pass_wall": et_wall / (replay_wall + cache_wall),
                                 "with_cache_pass_cpu": et_cpu / (replay_cpu + cache_cpu)},
        "metrics_equal": equal,
    }


def main(argv: Any = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--backbone", default="resnet18", choices=["resnet18", "resnet34", "resnet50"])
    p.add_argument("--segments", type=int, default=8)
    p.add_argument("--size", type=int, default=112)
    p.add_argument("--videos", type=int, default=48, help="synthetic videos (about a quarter are validation)")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--shards", default="", help="existing shards (3 classes) instead of synthetic ones")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    r = run(args)
    if args.json:
        print(json.dumps(r, indent=1))
    else:
        s = r["setup"]
        print(f"{s['points']}-point rho x T_min grid, SoF-Net {s['backbone']} {s['segments']}x{s['size']}, "
              f"{s['videos']} videos, CPU ({s['threads']} threads); early exit fires at "
              f"{s['points_where_early_exit_fires']} points; metrics equal: {r['metrics_equal']}")
        print("| side | wall s | CPU s |\n|---|---|---|")
        for key in ("full_12_evaluations", "full_12_et_passes_only", "replay_12_points", "cache_pass"):
            print(f"| {key} | {r[key]['wall_s']:.3f} | {r[key]['cpu_s']:.3f} |")
        for key in ("ratio_replay_alone", "ratio_with_cache_pass"):
            print(f"{key}: {r[key]['wall']:.1f}x wall, {r[key]['cpu']:.1f}x CPU")
        e = r["ratio_et_passes_only"]
        print(f"vs early-exit passes only: replay alone {e['replay_alone_wall']:.1f}x wall; with the cache pass "
              f"{e['with_cache_pass_wall']:.1f}x wall, {e['with_cache_pass_cpu']:.1f}x CPU")
    return 0 if r["metrics_equal"] else 1


if __name__ == "__main__":
    sys.exit(main())
