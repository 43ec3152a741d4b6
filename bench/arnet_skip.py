"""Is AR-Net's GFLOPs saving a wall-clock saving? Its training path (every backbone on every frame, the authors'
way, also at evaluation) vs ``ARNet.infer`` (each frame through the one backbone its policy chose) on the same clips.

A profile forces the policy's choice by its output bias (real policy, real backbones): all frames to one backbone,
or all to a skip. For each it reports the ideal speedup from GMACs (dense / adaptive, both counted by ``sofnet``'s
counter), the measured one (median dense time / median adaptive time, interleaved runs), wall clock and process CPU
time.

    python bench/arnet_skip.py                          # official: R50@224, R34@168, R18@112, policy@84; 8 frames
    python bench/arnet_skip.py --frames 16 --batch 2 --repeats 5
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Callable, Dict, Tuple

import torch

from sofnet.models.arnet import ARNet

PROFILES: Dict[str, Dict[int, float]] = {  # action -> bias added to the policy's output (0 R50, 1 R34, 2 R18, ...)
    "all-R18@112": {2: 50.0},
    "all-R34@168": {1: 50.0},
    "all-skip4": {6: 50.0},
    "all-R50@224": {0: 50.0},
}


def timed(fn: Callable[[], object]) -> Tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = ARNet(num_classes=200).eval()
    x = torch.randn(args.batch, args.frames, 3, 224, 224)
    costs = model.frame_costs()
    dense_gmacs = (sum(costs[:3]) + costs[3]) * args.frames * args.batch  # every backbone + the policy, per frame
    base_bias = model.linear.bias.detach().clone()
    rows = []
    with torch.no_grad():
        for name, bias in PROFILES.items():
            model.linear.bias.copy_(base_bias)
            for action, value in bias.items():
                model.linear.bias[action] += value
            out = model.infer(x)
            ideal = dense_gmacs / float(out.gflops.sum())
            dense, fast = [], []
            for _ in range(args.repeats):
                dense.append(timed(lambda: model(x)))
                fast.append(timed(lambda: model.infer(x)))
            wall = statistics.median(d[0] for d in dense) / statistics.median(f[0] for f in fast)
            cpu = statistics.median(d[1] for d in dense) / statistics.median(f[1] for f in fast)
            usage = {a: round(float((out.actions == a).float().mean()), 3) for a in out.actions.unique().tolist()}
            rows.append({"profile": name, "actions": usage, "ideal_speedup": round(ideal, 2),
                         "measured_wall": round(wall, 2), "measured_cpu": round(cpu, 2),
                         "ratio_wall": round(wall / ideal, 2), "ratio_cpu": round(cpu / ideal, 2)})
            print(json.dumps(rows[-1]), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
