"""FLOPs accounting: the paper's per-decision accounting, the FLOPs the skipping path really executed, and a CLI.

Convention: like the field (thop, fvcore, the paper), "GFLOPs" here are billions of multiply-accumulates
(GMACs) of convolutions, matmuls and linear layers; ``torch.utils.flop_counter.FlopCounterMode`` counts two
FLOPs per MAC, so every count is divided by 2. Two numbers are reported and should agree:

* accounted (``SoFOutput.gflops``): per frame, the blocks it ran + their gates + the classifier if reached;
* executed (:func:`executed_gflops`): FlopCounterMode around ``model.infer``, i.e. what really ran, including
  frames the time-chunked early-exit schedule computed past an exit and then dropped.

    python -m sofnet.flops --model tsn --backbone resnet50 --segments 16 --size 224
    {"gflops_per_video": 65.42..., "gflops_per_frame": 4.08..., ...}
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Dict, Iterable, Optional, Sequence, Tuple

import torch

from sofnet.models import SoFOutput, build_model
from sofnet.models.costs import count_gmacs


def dense_costs(arch: str = "tsn", backbone: str = "resnet50", segments: int = 16, size: int = 224,
                num_classes: int = 200) -> Dict[str, Any]:
    """GMACs of one dense pass (every frame through every block; gates included for SoF-Net)."""
    with torch.device("meta"):
        model = build_model({"arch": arch, "backbone": backbone, "num_segments": segments, "input_size": size,
                             "num_classes": num_classes})
    table = model.cost_table(size, size)
    per_frame = sum(table.blocks) + sum(table.gates) + table.fc
    return {
        "model": arch, "backbone": backbone, "segments": segments, "size": size, "num_classes": num_classes,
        "gflops_per_frame": per_frame, "gflops_per_video": per_frame * segments,
        "blocks": table.blocks, "gates": table.gates, "fc": table.fc,
        "convention": "GMACs (multiply-accumulates) of conv/matmul, FlopCounterMode count / 2",
    }


def executed_gflops(model: torch.nn.Module, x: torch.Tensor, **infer_kwargs: Any) -> Tuple[SoFOutput, float]:
    """Run ``model.infer(x, **infer_kwargs)`` under FlopCounterMode; returns the output and GMACs per video."""
    model.cost_table(*x.shape[-2:])  # fill the cache first: its meta-device count must not be counted here
    out: Optional[SoFOutput] = None

    def run() -> None:
        nonlocal out
        out = model.infer(x, **infer_kwargs)

    total = count_gmacs(run)
    assert out is not None
    return out, total / x.shape[0]


def summarize(outputs: Iterable[SoFOutput]) -> Dict[str, Any]:
    """Dataset-level compute metrics from a sequence of outputs (one per batch).

    Returns ``gflops_per_video`` (mean accounted GMACs per video), ``gflops_per_frame`` (per *sampled*
    frame, Table C's unit), ``frame_usage`` (share of sampled frames that reached the classifier),
    ``frames_processed`` (share not dropped by early exit), ``survival`` (share entering each block and, last,
    the classifier) and ``fallback_rate``.
    """
    gf, dec, fb = [], [], []
    for o in outputs:
        gf.append(o.gflops.detach().double().cpu())
        dec.append(o.decisions.detach().cpu())
        fb.append(o.fallback.detach().cpu())
    if not gf:
        raise ValueError("summarize() needs at least one output")
    gflops, decisions, fallback = torch.cat(gf), torch.cat(dec), torch.cat(fb)
    frames = decisions.shape[1]
    levels = torch.arange(6)
    return {
        "gflops_per_video": float(gflops.mean()),
        "gflops_per_frame": float(gflops.mean() / frames),
        "frame_usage": float((decisions == 5).float().mean()),
        "frames_processed": float((decisions >= 0).float().mean()),
        "survival": [float(v) for v in (decisions.unsqueeze(-1) >= levels).float().mean(dim=(0, 1))],
        "fallback_rate": float(fallback.float().mean()),
        "videos": int(decisions.shape[0]),
    }


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m sofnet.flops", description=__doc__.split("\n")[0])
    p.add_argument("--model", default="tsn", choices=["tsn", "tsm", "sofnet", "sofnet_tsm"])
    p.add_argument("--backbone", default="resnet50", choices=["resnet18", "resnet34", "resnet50"])
    p.add_argument("--segments", type=int, default=16)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--classes", type=int, default=200)
    a = p.parse_args(argv)
    json.dump(dense_costs(a.model, a.backbone, a.segments, a.size, a.classes), sys.stdout, indent=1)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
