"""Is SoF-Net's GFLOPs saving a wall-clock saving? Dense TSN vs SoF-Net's skipping path on the same clips.

The gates are the real ones, with their biases set (``sofnet.gate_control.calibrate_gates``) so that given
shares of the frames pass each gate; the default profile ends at the paper's 49.6% frame usage. For each
profile it reports the ideal speedup from GFLOPs (dense TSN accounted / SoF-Net accounted), the measured
wall-clock speedup (median TSN time / median SoF-Net time, runs interleaved so drift hits both), and their
ratio, in wall-clock and in process CPU time (the figure that holds on a shared, loaded machine). The
paper's own code would show a ratio near 1/ideal: it computes every block on every frame.

    python bench/skip_speedup.py                                  # ResNet-50, 16 x 224px, CPU
    python bench/skip_speedup.py --device cuda --batch 8 --json   # on a GPU
    python bench/skip_speedup.py --backbone resnet18 --size 112 --repeats 3   # quick look
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import time
from typing import Callable, Dict, List, Sequence, Tuple

import torch

from sofnet.flops import executed_gflops
from sofnet.gate_control import calibrate_gates
from sofnet.models import build_model

PROFILES: Dict[str, List[float]] = {  # share of all frames passing gate 0..4
    "paper-49.6%": [0.9, 0.8, 0.7, 0.6, 0.496],
    "early-stops-30%": [0.5, 0.4, 0.35, 0.3, 0.3],
    "late-stops-70%": [1.0, 1.0, 0.9, 0.8, 0.7],
}
log = logging.getLogger("skip_speedup")


def timed(fn: Callable[[], object], device: torch.device) -> Tuple[float, float]:
    """(wall seconds, process CPU seconds). On a shared CPU the second is the load-insensitive one."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0, c0 = time.perf_counter(), time.process_time()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0, time.process_time() - c0


def run(backbone: str, segments: int, size: int, batch: int, repeats: int, device: torch.device,
        profiles: Sequence[str], dtype: torch.dtype) -> Dict[str, object]:
    torch.manual_seed(0)
    base = {"backbone": backbone, "num_segments": segments, "input_size": size, "num_classes": 200}
    tsn = build_model({**base, "arch": "tsn"}).to(device, dtype).eval()
    sof = build_model({**base, "arch": "sofnet"}).to(device, dtype).eval()
    sof.load_state_dict(tsn.state_dict(), strict=False)  # same trunk and classifier weights
    g = torch.Generator().manual_seed(0)
    clip = torch.randn(batch, 1, 3, size, size, generator=g) + 0.7 * torch.randn(batch, segments, 3, size, size,
                                                                                  generator=g)
    clip = clip.to(device, dtype)
    tsn_gflops = float(tsn.infer(clip).gflops.mean())
    rows = []
    for name in profiles:
        survival = calibrate_gates(sof, clip, PROFILES[name], seed=0)
        out, executed = executed_gflops(sof, clip)
        ideal = tsn_gflops / float(out.gflops.mean())
        for _ in range(2):  # warm-up: allocator, oneDNN/cuDNN plans
            tsn.infer(clip)
            sof.infer(clip)
        t_tsn, t_sof, t_sof_dense = [], [], []
        with torch.no_grad():
            for _ in range(repeats):
                t_tsn.append(timed(lambda: tsn.infer(clip), device))
                t_sof.append(timed(lambda: sof.infer(clip), device))
                t_sof_dense.append(timed(lambda: sof(clip), device))

        def med(ts: List[Tuple[float, float]], i: int) -> float:
            return statistics.median(t[i] for t in ts)

        measured = med(t_tsn, 0) / med(t_sof, 0)
        measured_cpu = med(t_tsn, 1) / med(t_sof, 1)
        rows.append({
            "profile": name, "survival": [round(s, 4) for s in survival],
            "frame_usage": float(out.frame_usage.mean()),
            "tsn_gflops_per_video": tsn_gflops, "sofnet_gflops_per_video": float(out.gflops.mean()),
            "sofnet_executed_gflops_per_video": executed,
            "ideal_speedup": ideal, "measured_speedup": measured, "ratio": measured / ideal,
            "measured_cpu_speedup": measured_cpu, "cpu_ratio": measured_cpu / ideal,
            "tsn_s": med(t_tsn, 0), "sofnet_skip_s": med(t_sof, 0), "sofnet_dense_s": med(t_sof_dense, 0),
        })
        log.info("%s: usage %.1f%% ideal %.2fx measured %.2fx ratio %.2f", name, 100 * rows[-1]["frame_usage"],
                 ideal, measured, measured / ideal)
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu x{torch.get_num_threads()}"
    return {"device": device_name, "backbone": backbone, "segments": segments, "size": size, "batch": batch,
            "repeats": repeats, "dtype": str(dtype).replace("torch.", ""), "rows": rows}


def table(res: Dict[str, object]) -> str:
    head = (f"{res['backbone']}, {res['segments']} frames x {res['size']}px, batch {res['batch']}, "
            f"{res['dtype']}, {res['device']}, median of {res['repeats']}\n")
    lines = ["| profile | frame usage | GFLOPs/V TSN | GFLOPs/V SoF (acc./exec.) | ideal | measured | ratio "
             "| CPU-time speedup | CPU-time ratio | s/batch TSN / SoF skip / SoF dense |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in res["rows"]:  # type: ignore[union-attr]
        lines.append(f"| {r['profile']} | {100 * r['frame_usage']:.1f}% | {r['tsn_gflops_per_video']:.1f} | "
                     f"{r['sofnet_gflops_per_video']:.1f} / {r['sofnet_executed_gflops_per_video']:.1f} | "
                     f"{r['ideal_speedup']:.2f}x | {r['measured_speedup']:.2f}x | {r['ratio']:.2f} | "
                     f"{r['measured_cpu_speedup']:.2f}x | {r['cpu_ratio']:.2f} | "
                     f"{r['tsn_s']:.2f} / {r['sofnet_skip_s']:.2f} / {r['sofnet_dense_s']:.2f} |")
    return head + "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--backbone", default="resnet50", choices=["resnet18", "resnet34", "resnet50"])
    p.add_argument("--segments", type=int, default=16)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--profiles", default=",".join(PROFILES), help=f"comma list of {list(PROFILES)}")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--json", action="store_true", help="print the results as JSON instead of a table")
    a = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if a.threads:
        torch.set_num_threads(a.threads)
    res = run(a.backbone, a.segments, a.size, a.batch, a.repeats, torch.device(a.device), a.profiles.split(","),
              getattr(torch, a.dtype))
    print(json.dumps(res, indent=1) if a.json else table(res))


if __name__ == "__main__":
    main()
