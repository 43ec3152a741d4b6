"""Early exit alone against the gates, by where the action starts: the study's criterion "the cheapest TSN + ET
point within the mAP floor uses >= 1.3x SoF-Net + ET's GFLOPs", on the videos grouped by their first sampled frame
inside an annotated segment (first quarter of the sampled frames, second quarter, second half).

Why: early exit alone is cheap where the action is on screen from the start (its confidence is reached after a
frame or two), and cannot be where the first frames are background: it must pass them at full cost until the
action appears, while SoF-Net's gates stop them after a shallow block. A study's single ratio mixes the two; this
section shows which videos carry it, on any annotated data (real ActivityNet too). Replayed from the study's
early-exit caches (no network pass; milliseconds a point), with the same scoring as every other number.

Usage::

    from sofnet.study_start import by_action_start, start_summary, start_table
    per_seed = [by_action_start(tsn_bundle, sofnet_bundle, grid=[[0.5, 1], [0.9, 2]], rho=0.99, t_min=3), ...]
    rows = start_summary(per_seed, map_drop=1.0)          # [] if a seed's caches lack the annotations
    text = start_table(rows, map_drop=1.0, gates_over_et=1.3, rho=0.99, t_min=3)   # markdown
    # a row with "interval" and "met" (sofnet.study_interval.bucket_intervals, added by the study) gets a column more
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from sofnet.replay import ETCache
from sofnet.tune.et_cache import ETBundle, replay_metrics

# (name, from, to): the first sampled frame inside a segment, as a share of the sampled frames (8 frames: 0-1, 2-3, 4-7)
BUCKETS = (("first quarter", 0.0, 0.25), ("second quarter", 0.25, 0.5), ("second half", 0.5, 1.0))
ALL = "all videos"


def first_action_frame(inside: np.ndarray) -> np.ndarray:
    """[N] index of each video's first sampled frame inside an annotated segment; ``T`` where none is."""
    inside = np.asarray(inside, dtype=bool)
    return np.where(inside.any(1), inside.argmax(1), inside.shape[1])


def buckets(inside: np.ndarray) -> List[Tuple[str, np.ndarray]]:
    """``(bucket, video indices)`` of :data:`BUCKETS`, then every video (:data:`ALL`), from [N, T] ``inside``."""
    share = first_action_frame(inside) / inside.shape[1]  # no sampled action frame (1.0): only in "all videos"
    return [(name, np.nonzero((share >= low) & (share < high))[0]) for name, low, high in BUCKETS + ((ALL, 0.0, 2.0),)]


def subset(bundle: ETBundle, index: np.ndarray) -> ETBundle:
    """The cache and targets of the videos ``index`` only (scored as if they were the whole validation set)."""
    c = bundle.cache
    cache = ETCache(decisions=c.decisions[index], frame_logits=c.frame_logits[index], logits=c.logits[index],
                    fallback=c.fallback[index], cost_by_decision=c.cost_by_decision)
    inside = None if bundle.inside is None else bundle.inside[index]
    return ETBundle(cache=cache, targets=bundle.targets[index], label=bundle.label[index],
                    ids=[bundle.ids[i] for i in index], meta=bundle.meta, inside=inside)


def _point(bundle: ETBundle, rho: float, t_min: int, mode: str = "reached") -> Dict[str, float]:
    m = replay_metrics(bundle, rho, t_min, mode)
    return {"mAP": m["val/et/mAP"], "gflops": m["val/et/gflops_per_video"]}


def by_action_start(tsn: ETBundle, sofnet: ETBundle, grid: Sequence[Sequence[float]], rho: float, t_min: int,
                    mode: str = "reached") -> Optional[List[Dict[str, Any]]]:
    """One seed's buckets: videos, TSN without early exit, SoF-Net + ET at ``(rho, t_min, mode)`` (the table's row)
    and TSN + ET at each ``(rho, t_min)`` of ``grid`` (replayed as the study's grids are); the last entry is every
    video (the study's own numbers).
    ``None`` for caches without annotations (written before they were cached)."""
    if tsn.inside is None or tsn.ids != sofnet.ids:
        return None
    frames = tsn.inside.shape[1]
    out = []
    for name, index in buckets(tsn.inside):
        entry: Dict[str, Any] = {"bucket": name, "videos": int(len(index))}
        if len(index):
            t, s = subset(tsn, index), subset(sofnet, index)
            entry["tsn"] = _point(t, 0.5, frames + 1)  # T_min above the frames: never exits (TSN's own row)
            entry["sofnet_et"] = _point(s, rho, t_min, mode)
            entry["tsn_et"] = [{"rho": r, "t_min": int(k), **_point(t, r, int(k))} for r, k in grid]
        out.append(entry)
    return out


def start_summary(per_seed: Sequence[Optional[Sequence[Dict[str, Any]]]], map_drop: float) -> List[Dict[str, Any]]:
    """Means over seeds per bucket (a bucket empty in some seed's videos is left out) and the criterion on them:
    the cheapest TSN + ET point whose mean mAP is within ``map_drop`` points of TSN's, over SoF-Net + ET's GFLOPs;
    ``[]`` when a seed has no buckets (caches without annotations)."""
    if not per_seed or any(seed is None for seed in per_seed):
        return []
    rows = []
    for i, (name, *_) in enumerate(BUCKETS + ((ALL,),)):
        entries = [seed[i] for seed in per_seed]
        if any("tsn" not in e for e in entries):
            continue
        tsn = {k: float(np.mean([e["tsn"][k] for e in entries])) for k in ("mAP", "gflops")}
        sof = {k: float(np.mean([e["sofnet_et"][k] for e in entries])) for k in ("mAP", "gflops")}
        points = [{"rho": p["rho"], "t_min": p["t_min"],
                   **{k: float(np.mean([e["tsn_et"][j][k] for e in entries])) for k in ("mAP", "gflops")}}
                  for j, p in enumerate(entries[0]["tsn_et"])]
        near = [p for p in points if 100 * p["mAP"] >= 100 * tsn["mAP"] - map_drop]
        cheapest = min(near, key=lambda p: p["gflops"]) if near else None
        rows.append({"bucket": name, "videos": [e["videos"] for e in entries], "tsn": tsn, "sofnet_et": sof,
                     "cheapest": cheapest, "ratio": cheapest["gflops"] / sof["gflops"] if cheapest else float("nan")})
    return rows


def start_table(rows: Sequence[Dict[str, Any]], map_drop: float, gates_over_et: float, rho: float,
                t_min: int) -> str:
    """Markdown: the section the study appends to its table (``rows`` from :func:`start_summary`; "" if none)."""
    if not rows:
        return ""
    drawn = any("interval" in r for r in rows)  # sofnet.study_interval, per bucket
    lines = [f"Early exit alone vs the gates, by where the action starts (the first sampled frame inside a segment; "
             f"means over seeds; SoF-Net + ET at rho={rho:g} t_min={t_min}; GFLOPs vs TSN on the same videos):", "",
             "| action starts in | videos | TSN mAP | SoF-Net + ET: mAP / GFLOPs (%) | cheapest TSN + ET within "
             f"{map_drop:g} mAP: rho, T_min, mAP / GFLOPs (%) | ratio (target {gates_over_et:g}) |"
             + (" 90 % interval over draws of the bucket's videos (met in) |" if drawn else ""),
             "|---|---|---|---|---|---|" + "---|" * drawn]
    for r in rows:
        videos = "/".join(str(v) for v in sorted(set(r["videos"])))
        base, sof, c = r["tsn"], r["sofnet_et"], r["cheapest"]
        point = (f"{c['rho']:g}, {c['t_min']}, {100 * c['mAP']:.1f} / {100 * c['gflops'] / base['gflops']:.0f}"
                 if c else "none")
        line = (f"| {r['bucket']} | {videos} | {100 * base['mAP']:.1f} | {100 * sof['mAP']:.1f} / "
                f"{100 * sof['gflops'] / base['gflops']:.0f} | {point} | {r['ratio']:.2f} |")
        if drawn:
            line += (f" {r['interval'][0]:.2f} to {r['interval'][1]:.2f} ({100 * r['met']:.0f} %) |" if "interval" in r
                     else " - |")
        lines.append(line)
    return "\n".join(lines)
