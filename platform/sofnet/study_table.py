"""The study's numbers: one seed's Table A/B rows, mean ± std over seeds, the criteria of "a recipe that holds" and
the markdown table (:mod:`sofnet.study` runs the study; this module only reads its records).

Usage::

    from sofnet.study_table import Targets, study_table, summarize
    summary = summarize(records, Targets(), methods=["tsn", "sofnet"])   # records: each seed's seed.json
    text = study_table(summary, "study x: 3 seeds")                     # rows, Table C grids, criteria met / MISSED
    machines_line(records)   # "trained and scored on Intel(R) Xeon(R) Processor, AVX512, 2 threads"

Means and sample standard deviations (ddof 1) are over seeds; every GFLOPs ratio is against the same seed's TSN;
the criteria are checked on the means.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Sequence, Tuple

import numpy as np

METHODS = ("tsn", "sofnet", "arnet")  # what a study compares (``methods``)
# The rows of Table A/B: (row, method, report, metric prefix); a report is a stage of the base job, "arnet" (the
# final stage of the seed's AR-Net job) or "action_frames": TSN's stage 1 scored on the annotated action frames only,
# as SoF-Net scores the frames its gates pass (:func:`sofnet.replay.action_frames_only`), a diagnostic, not a method.
ROWS = (("TSN", "tsn", "stage1", "val/"), ("TSN + ET", "tsn", "stage1", "val/et/"),
        ("TSN on action frames", "tsn", "action_frames", "val/"), ("SoF-Net", "sofnet", "stage2", "val/"),
        ("SoF-Net + ET", "sofnet", "stage2", "val/et/"), ("AR-Net", "arnet", "arnet", "val/"))
EARLY_EXIT_ALONE = "cheapest TSN + ET within the mAP floor / SoF-Net + ET (GFLOPs)"  # the criterion's name
COLUMNS = ("mAP", "top1", "top5", "gflops_per_video", "gflops_ratio", "frame_usage", "stop_rate/background/block2",
           "stop_rate/action/block2")


@dataclass
class Targets:
    """What "the recipe holds" means (issue "results that hold"); checked on the means over seeds."""
    map_drop: float = 1.0  # SoF-Net's mAP at least TSN's minus this many points
    ratio_no_et: float = 0.70  # SoF-Net without early exit: at most this share of TSN's GFLOPs
    ratio_et: float = 0.50  # ... with early exit
    gates_over_et: float = 1.3  # the cheapest TSN + ET grid point within map_drop of TSN: >= this x SoF-Net + ET
    background_over_action: float = 3.0  # share of background frames stopped by layer2 / share of action frames
    std_map: float = 2.0  # seed std of mAP, points
    std_ratio: float = 5.0  # seed std of the GFLOPs ratio, points


def row_metrics(record: Mapping[str, Any], methods: Sequence[str] = METHODS) -> Dict[str, Dict[str, float]]:
    """One seed's Table A/B rows of ``methods``: ``{row: {column: value}}`` (GFLOPs ratio against the seed's TSN)."""
    base = record["reports"]["stage1"]["metrics"]["val/gflops_per_video"]
    rows = {}
    for name, method, report, prefix in ROWS:
        m = record["reports"].get(report, {}).get("metrics", {})
        if method not in methods or prefix + "mAP" not in m:
            continue
        row = {c: float(m[prefix + c]) for c in COLUMNS if prefix + c in m}
        row["gflops_ratio"] = row["gflops_per_video"] / base
        rows[name] = row
    return rows


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    a = np.asarray(values, dtype=float)
    return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else 0.0


def summarize(records: Sequence[Mapping[str, Any]], targets: Any,
              methods: Sequence[str] = ("tsn", "sofnet")) -> Dict[str, Any]:
    """Mean ± std over seeds of every row and grid point of ``methods``, and the criteria checked on the means."""
    per_seed = [row_metrics(r, methods) for r in records]
    rows = {}
    for name, _, _, _ in ROWS:
        if all(name in s for s in per_seed):
            rows[name] = {c: _mean_std([s[name][c] for s in per_seed]) for c in per_seed[0][name]}
    grids = {}
    base = [r["reports"]["stage1"]["metrics"]["val/gflops_per_video"] for r in records]  # each seed's own TSN
    for stage, method, row in (("stage1", "TSN + ET", "tsn"), ("stage2", "SoF-Net + ET", "sofnet")):
        if row not in methods or not all(stage in r["grids"] for r in records):
            continue
        points = []
        for i, point in enumerate(records[0]["grids"][stage]):
            points.append({"rho": point["rho"], "t_min": point["t_min"],
                           "mAP": _mean_std([r["grids"][stage][i]["val/et/mAP"] for r in records]),
                           "gflops_ratio": _mean_std([r["grids"][stage][i]["val/et/gflops_per_video"] / b
                                                      for r, b in zip(records, base)])})
        grids[method] = points
    return {"seeds": [r["seed"] for r in records], "rows": rows, "grids": grids,
            "criteria": criteria(rows, grids["TSN + ET"], targets, len(records)) if "SoF-Net" in rows else []}


def criterion_values(tsn_map: Any, rows: Mapping[str, Tuple[Any, Any]], grid: Sequence[Tuple[Any, Any]],
                     t: Any) -> List[Tuple[str, np.ndarray, str, np.ndarray]]:
    """The criteria that follow from mAPs and GFLOPs ratios, as ``(name, value, target, ok)``: the one place their
    formulas live. Every value may be a scalar (the study's means) or an array over draws of the videos
    (:mod:`sofnet.study_interval`), elementwise alike.

    Args:
        tsn_map: TSN's mAP (fraction); rows: ``{"SoF-Net": (mAP, GFLOPs ratio), "SoF-Net + ET": (...)}`` (either may
            be absent); grid: TSN + ET's ``(mAP, GFLOPs ratio)`` at each grid point; t: :class:`Targets`.
    """
    out = []
    floor = 100 * np.asarray(tsn_map) - t.map_drop
    for label, limit in (("SoF-Net", t.ratio_no_et), ("SoF-Net + ET", t.ratio_et)):
        if label not in rows:
            continue
        m, r = (np.asarray(v) for v in rows[label])
        out.append((f"{label}: mAP - TSN mAP (points)", 100 * (m - np.asarray(tsn_map)), f">= -{t.map_drop:g}",
                    100 * m >= floor))
        out.append((f"{label}: GFLOPs vs TSN (%)", 100 * r, f"<= {100 * limit:g}", r <= limit))
    if "SoF-Net + ET" in rows:
        empty = np.empty((0, *floor.shape))  # no grid: no point within the floor (nan, missed)
        near = 100 * (np.stack([np.asarray(m) for m, _ in grid]) if grid else empty) >= floor  # [points, ...]
        ratios = np.stack([np.asarray(r) for _, r in grid]) if grid else empty
        cheapest = np.where(near, ratios, np.inf).min(0, initial=np.inf)
        found = near.any(0)
        ratio = np.where(found, cheapest / np.asarray(rows["SoF-Net + ET"][1]), np.nan)
        out.append((EARLY_EXIT_ALONE, ratio,
                    f">= {t.gates_over_et:g}", found & (ratio >= t.gates_over_et)))
    return out


def criteria(rows: Mapping[str, Any], tsn_grid: Sequence[Mapping[str, Any]], t: Any,
             seeds: int = 2) -> List[Dict[str, Any]]:
    """The recipe's targets, each ``{name, value, target, ok}``, on the means over seeds (mAP in points).

    With one seed (``make demo``) there is no seed spread to check: the two std criteria are left out, not "met".
    """
    tsn, sof, sof_et = rows["TSN"], rows["SoF-Net"], rows.get("SoF-Net + ET")
    means = {label: (row["mAP"][0], row["gflops_ratio"][0]) for label, row in (("SoF-Net", sof),
                                                                              ("SoF-Net + ET", sof_et)) if row}
    out = [{"name": name, "value": float(value), "target": target, "ok": bool(ok)} for name, value, target, ok in
           criterion_values(tsn["mAP"][0], means, [(p["mAP"][0], p["gflops_ratio"][0]) for p in tsn_grid], t)]

    def check(name: str, value: float, target: str, ok: bool) -> None:
        out.append({"name": name, "value": value, "target": target, "ok": bool(ok)})

    bg, act = sof.get("stop_rate/background/block2"), sof.get("stop_rate/action/block2")
    if bg is not None and act is not None:
        ratio = bg[0] / act[0] if act[0] > 0 else float("inf")
        check("SoF-Net: background / action frames stopped by layer2", ratio, f">= {t.background_over_action:g}",
              ratio >= t.background_over_action)
    for label, row in (("SoF-Net", sof), ("SoF-Net + ET", sof_et)):
        if row is not None and seeds > 1:
            check(f"{label}: seed std of mAP (points)", 100 * row["mAP"][1], f"<= {t.std_map:g}",
                  100 * row["mAP"][1] <= t.std_map)
            check(f"{label}: seed std of GFLOPs vs TSN (points)", 100 * row["gflops_ratio"][1], f"<= {t.std_ratio:g}",
                  100 * row["gflops_ratio"][1] <= t.std_ratio)
    return out


def machines_line(records: Sequence[Mapping[str, Any]]) -> str:
    """Where the rows were computed (each seed's ``machines``: the kernel levels its training runs and its scoring
    ran at, :func:`sofnet.machine.kernel_level`): one phrase when every seed agrees, else each level with its seeds,
    so a mean over seeds trained on other CPUs (or scored on another than trained) says so in its header."""
    def levels(key: str) -> str:
        seeds: Dict[str, List[int]] = {}
        for r in records:
            seeds.setdefault(" + ".join(r.get("machines", {}).get(key, [])) or "not recorded", []).append(r["seed"])
        if len(seeds) == 1:
            return next(iter(seeds))
        return "; ".join(f"{level} (seed{'s' if len(s) > 1 else ''} {', '.join(map(str, s))})"
                         for level, s in seeds.items())

    trained, scored = levels("trained"), levels("scored")
    return f"trained and scored on {trained}" if trained == scored else f"trained on {trained}; scored on {scored}"


def _pm(value: tuple[float, float], scale: float = 100.0, digits: int = 1, spread: bool = True) -> str:
    mean = f"{scale * value[0]:.{digits}f}"
    return f"{mean} ± {scale * value[1]:.{digits}f}" if spread else mean


def study_table(summary: Mapping[str, Any], header: str = "") -> str:
    """Markdown: Table A/B rows (mean ± std; one seed: the values alone), the ET grids of TSN and SoF-Net (Table C),
    the criteria."""
    spread = len(summary.get("seeds", ())) != 1

    def pm(value: tuple[float, float], scale: float = 100.0, digits: int = 1) -> str:
        return _pm(value, scale, digits, spread)

    lines = [header, ""] if header else []
    lines += ["| method | mAP (%) | top-1 (%) | top-5 (%) | GFLOPs/V | GFLOPs vs TSN (%) | frame usage (%) | "
              "stopped by layer2: background / action (%) |", "|---|---|---|---|---|---|---|---|"]
    for method, r in summary["rows"].items():
        stops = "-"
        if "stop_rate/background/block2" in r:
            stops = f"{pm(r['stop_rate/background/block2'])} / {pm(r['stop_rate/action/block2'])}"
        top5 = pm(r["top5"]) if "top5" in r else "-"
        lines.append(f"| {method} | {pm(r['mAP'])} | {pm(r['top1'])} | {top5} | {pm(r['gflops_per_video'], 1, 3)} | "
                     f"{pm(r['gflops_ratio'])} | {pm(r['frame_usage'])} | {stops} |")
    for method, points in summary["grids"].items():
        spread_note = ", mean ± std" if spread else ""
        lines += ["", f"{method} over the early-exit grid (mAP % / GFLOPs vs TSN %{spread_note}):",
                  "", "| rho \\ T_min | " + " | ".join(str(t) for t in sorted({p['t_min'] for p in points})) + " |",
                  "|---|" + "---|" * len({p["t_min"] for p in points})]
        for rho in sorted({p["rho"] for p in points}):
            cells = [f"{pm(p['mAP'])} / {pm(p['gflops_ratio'], digits=0)}" for p in points if p["rho"] == rho]
            lines.append(f"| {rho:g} | " + " | ".join(cells) + " |")
    drawn = any("interval" in c for c in summary["criteria"])  # sofnet.study_interval, where the caches allow
    if summary["criteria"]:
        on = "on the means" if spread else "one seed: no spread to check"
        head = " 90 % interval over draws of the videos (met in) |" if drawn else ""
        lines += ["", f"| criterion ({on}) | measured | target | |{head}", "|---|---|---|---|" + "---|" * drawn]
    for c in summary["criteria"]:
        line = f"| {c['name']} | {c['value']:.2f} | {c['target']} | {'met' if c['ok'] else 'MISSED'} |"
        if drawn:
            line += (f" {c['interval'][0]:.2f} to {c['interval'][1]:.2f} ({100 * c['met']:.0f} %) |"
                     if "interval" in c else " - |")
        lines.append(line)
    comparisons = summary.get("arnet_comparisons") or []  # sofnet.study_interval.arnet_comparisons: Table B
    if comparisons:
        drawn = "interval" in comparisons[0]
        lines += ["", f"| AR-Net compared ({'on the means' if spread else 'one seed'}; no target) | measured |"
                  + (" 90 % interval over draws of the videos |" if drawn else ""), "|---|---|" + "---|" * drawn]
        for c in comparisons:
            lines.append(f"| {c['name']} | {c['value']:.2f} |"
                         + (f" {c['interval'][0]:.2f} to {c['interval'][1]:.2f} |" if drawn else ""))
    return "\n".join(lines)

