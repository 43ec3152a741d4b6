"""How far the study's criteria move with the validation videos: a bootstrap over the videos, replayed from the
early-exit caches.

Why: every criterion is measured on one set of validation videos (256 on the benchmark task) and carries their
sampling noise besides the seeds' spread. With one seed (``make demo``) it is the only spread there is, and it is
largest where a criterion is a minimum over a grid: "the cheapest TSN + ET point within 1 mAP of TSN" takes
whichever of 32 points landed inside the floor on these videos, while its neighbours sit 2-3 mAP points off. Drawing
the videos again with replacement (one draw for every seed: they share the validation set), replaying every row and
grid point on the drawn videos and computing each criterion on the means over seeds, by the same formulas as the
table (:func:`sofnet.study_table.criterion_values`), gives its 90 % interval and the share of draws that meet it. A
criterion met in 40 % of the draws is one these videos cannot decide, whichever side its measured value fell on.

It answers "would other videos of the same task say the same", not "would another seed": the seeds' std is beside
it in the multi-seed table. No network runs: every draw is replayed from the caches that the table's rows come
from.

Usage::

    from sofnet.study_interval import seed_outputs, criterion_intervals
    per_seed = [seed_outputs(tsn_bundle, sofnet_bundle, grid=[[0.5, 1], ...], rho=0.99, t_min=3), ...]
    criterion_intervals(per_seed, Targets(), draws=200)
    # {"SoF-Net: GFLOPs vs TSN (%)": {"interval": [41.2, 44.9], "met": 1.0}, ...}
    bucket_intervals(per_seed, Targets())
    # the early-exit-alone criterion per action-start bucket: {"second half": {"interval": [...], "met": 1.0}, ...}
    per_seed[0]["arnet"] = arnet_scored("<seed eval>/arnet-last/stage3/per_video.npz", per_seed[0]["ids"])
    arnet_comparisons(per_seed)   # Table B: [{"name": "AR-Net: mAP - TSN mAP (points)", "value", "interval"}, ...]
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from sofnet.study_start import buckets
from sofnet.study_table import EARLY_EXIT_ALONE, criterion_values
from sofnet.tune.et_cache import ETBundle, replayed

LEVEL = 0.9  # the interval's coverage: from the 5th to the 95th percentile of the draws


@dataclass
class Scored:
    """One row or grid point of one seed, per video: what its mAP and GFLOPs are computed from."""

    probs: np.ndarray  # [N, K] class probabilities (the evaluation's softmax of the video logits)
    gflops: np.ndarray  # [N] accounted GFLOPs of each video


def _scored(bundle: ETBundle, rho: float, t_min: int, mode: str = "reached") -> Scored:
    out = replayed(bundle, rho, t_min, mode)
    return Scored(out.logits.float().softmax(-1).numpy(), out.gflops.double().numpy())


def seed_outputs(tsn: ETBundle, sofnet: ETBundle, grid: Sequence[Sequence[float]], rho: float, t_min: int,
                 mode: str = "reached") -> Optional[Dict[str, Any]]:
    """One seed's rows and TSN + ET grid, per video, replayed as the study scores them (TSN and SoF-Net without
    early exit; SoF-Net + ET at the rows' ``(rho, t_min, mode)``; TSN + ET at each grid point, mode ``reached``);
    ``None`` where the two caches are not of the same videos in the same order."""
    if tsn.ids != sofnet.ids:
        return None
    never = tsn.cache.decisions.shape[1] + 1  # T_min above the frames: early exit never fires (the rows without it)
    return {"ids": tsn.ids, "targets": np.asarray(tsn.targets).astype(bool), "inside": tsn.inside,
            "tsn": _scored(tsn, 0.5, never),
            "sofnet": _scored(sofnet, 0.5, never), "sofnet_et": _scored(sofnet, rho, t_min, mode),
            "tsn_et": [_scored(tsn, r, int(k)) for r, k in grid]}


def resampled_map(probs: np.ndarray, targets: np.ndarray, index: np.ndarray) -> np.ndarray:
    """[B] mAP of each draw ``index[b]`` of the videos, as the evaluation would score ``probs[index[b]]``: per class,
    non-interpolated AP with tied scores ranked as one group (``sklearn.metrics.average_precision_score``, which the
    evaluation calls), then the mean over the classes with a positive in the draw.

    A draw is a count per video, so each class is ranked once for all draws: a video drawn c times adds c rows of one
    score, which rank as one tie group with any equal score, so precision is read at the group's end. Equal to
    scoring the drawn rows up to float rounding (the tests check); ranking every draw's rows instead took 11-12x the
    time (78 s for a five-seed study of 1024 videos, against 7 s).
    """
    draws, n = index.shape[0], probs.shape[0]  # a draw may be of fewer videos than there are (one bucket's)
    counts = np.bincount((index + n * np.arange(draws)[:, None]).ravel(), minlength=draws * n).reshape(draws, n)
    ap = np.full((draws, probs.shape[1]), np.nan)
    position = np.arange(n)
    for c in range(probs.shape[1]):
        order = np.argsort(-probs[:, c], kind="stable")
        score, positive, w = probs[order, c], targets[order, c].astype(float), counts[:, order]
        last = np.ones(n, dtype=bool)  # the last row of each group of equal scores
        last[:-1] = score[1:] != score[:-1]
        end = np.minimum.accumulate(np.where(last, position, n)[::-1])[::-1]  # each row's group end
        hits = np.cumsum(w * positive, axis=1)
        # max(., 1): a draw holds no video up to a row's group end only where that row's own count is 0 as well
        precision = hits[:, end] / np.maximum(np.cumsum(w, axis=1)[:, end], 1)
        npos = hits[:, -1]
        ap[:, c] = np.where(npos > 0, (w * positive * precision).sum(1) / np.maximum(npos, 1), np.nan)
    return np.nanmean(ap, axis=1)


def criterion_draws(per_seed: Sequence[Dict[str, Any]], targets: Any,
                    index: np.ndarray) -> List[Tuple[str, np.ndarray, np.ndarray]]:
    """Each mAP/GFLOPs criterion in every draw ``index[b]`` of the videos, as ``(name, value [B], ok [B])``: the
    table's formulas (:func:`sofnet.study_table.criterion_values`) on the means over seeds of the drawn videos' rows
    and grid points (the identity draw gives the table's own values)."""

    def mean(values: List[np.ndarray]) -> np.ndarray:  # over seeds, as the table's rows are
        return np.mean(values, axis=0)

    def point(s: Dict[str, Any], scored: Scored) -> Tuple[np.ndarray, np.ndarray]:  # (mAP, GFLOPs vs TSN) per draw
        return (resampled_map(scored.probs, s["targets"], index),
                scored.gflops[index].mean(1) / s["tsn"].gflops[index].mean(1))

    seeds = [{"tsn": resampled_map(s["tsn"].probs, s["targets"], index), "sofnet": point(s, s["sofnet"]),
              "sofnet_et": point(s, s["sofnet_et"]), "tsn_et": [point(s, p) for p in s["tsn_et"]]} for s in per_seed]
    rows = {label: (mean([s[key][0] for s in seeds]), mean([s[key][1] for s in seeds]))
            for label, key in (("SoF-Net", "sofnet"), ("SoF-Net + ET", "sofnet_et"))}
    grid = [(mean([s["tsn_et"][j][0] for s in seeds]), mean([s["tsn_et"][j][1] for s in seeds]))
            for j in range(len(seeds[0]["tsn_et"]))]
    return [(name, value, ok) for name, value, _, ok in
            criterion_values(mean([s["tsn"] for s in seeds]), rows, grid, targets)]


def criterion_intervals(per_seed: Sequence[Optional[Dict[str, Any]]], targets: Any, draws: int = 200,
                        seed: int = 0, videos: Optional[np.ndarray] = None) -> Dict[str, Dict[str, Any]]:
    """Each mAP/GFLOPs criterion over ``draws`` draws of the videos: ``{name: {"interval": [low, high], "met":
    share of draws that meet it}}``; ``{}`` without draws, without seeds, or when a seed's caches are missing or
    of other videos than the first seed's (then no draw is common to all seeds).

    Args:
        per_seed: From :func:`seed_outputs`, one per seed.
        targets: :class:`sofnet.study_table.Targets`.
        draws: Number of draws of the videos (with replacement, as many as there are).
        seed: The draws' random seed (the same seed, the same intervals).
        videos: Indices of the videos to draw from (default: all): a subset scored as if it were the whole set, as
            each video's replayed result does not depend on the others.
    """
    if draws < 1 or not per_seed or any(s is None or s["ids"] != per_seed[0]["ids"] for s in per_seed):
        return {}
    videos = np.arange(len(per_seed[0]["ids"])) if videos is None else np.asarray(videos)
    index = videos[np.random.default_rng(seed).integers(0, len(videos), size=(draws, len(videos)))]
    low, high = 100 * (1 - LEVEL) / 2, 100 * (1 + LEVEL) / 2
    out = {}
    for name, value, ok in criterion_draws(per_seed, targets, index):
        finite = value[~np.isnan(value)]  # nan: no grid point within the floor in that draw (and not met)
        interval = [float(v) for v in np.percentile(finite, [low, high])] if finite.size else [np.nan, np.nan]
        out[name] = {"interval": interval, "met": float(np.mean(ok))}
    return out


def bucket_intervals(per_seed: Sequence[Optional[Dict[str, Any]]], targets: Any,
                     draws: int = 200) -> Dict[str, Dict[str, Any]]:
    """The early-exit-alone criterion's interval over draws of the videos of each action-start bucket
    (:data:`sofnet.study_start.BUCKETS`; "all videos" is the table's own criterion): ``{bucket: {"interval",
    "met"}}``; ``{}`` for caches without the annotations.

    Args:
        per_seed: From :func:`seed_outputs`, one per seed (the buckets: the first seed's annotations, the same
            videos in every seed).
    """
    if not per_seed or per_seed[0] is None or per_seed[0]["inside"] is None:
        return {}
    out = {}
    for name, index in buckets(per_seed[0]["inside"])[:-1]:
        if len(index):
            drawn = criterion_intervals(per_seed, targets, draws, videos=index).get(EARLY_EXIT_ALONE)
            if drawn:
                out[name] = drawn
    return out


# Table B's comparisons with AR-Net (no target: how far apart the methods are, and whether other videos would say so)
ARNET_COMPARISONS = ("AR-Net: mAP - TSN mAP (points)", "AR-Net: GFLOPs vs TSN (%)",
                     "SoF-Net: mAP - AR-Net mAP (points)", "SoF-Net: GFLOPs vs AR-Net (%)")


def arnet_scored(path: str | Path, ids: Sequence[str]) -> Optional[Scored]:
    """AR-Net's final stage per video from its evaluation's ``per_video.npz`` (:data:`sofnet.evaluation.PER_VIDEO`),
    in the order of ``ids``; ``None`` where there is no file (evaluated before it was written) or it holds other
    videos than ``ids``."""
    path = Path(path)
    if not path.is_file():
        return None
    with np.load(path, allow_pickle=False) as f:
        row = {str(v): i for i, v in enumerate(f["ids"])}
        if len(row) != len(f["ids"]) or sorted(row) != sorted(ids):
            return None
        order = [row[v] for v in ids]
        return Scored(f["scores"][order].astype(np.float64), f["gflops"][order].astype(np.float64))


def arnet_comparisons(per_seed: Sequence[Optional[Dict[str, Any]]], draws: int = 200,
                      seed: int = 0) -> List[Dict[str, Any]]:
    """AR-Net against TSN and SoF-Net (without early exit) on the means over seeds, as :data:`ARNET_COMPARISONS`:
    ``[{"name", "value" (all videos), "interval" (90 % over ``draws`` draws of the videos; absent without draws)}]``;
    ``[]`` unless every seed has all three methods on the same videos (``seed_outputs`` with ``"arnet"`` added)."""
    if not per_seed or any(s is None or s.get("arnet") is None or s["ids"] != per_seed[0]["ids"] for s in per_seed):
        return []
    n = len(per_seed[0]["ids"])
    index = np.arange(n)[None, :]  # the identity draw first: the values of the table's own videos
    if draws > 0:
        index = np.concatenate([index, np.random.default_rng(seed).integers(0, n, size=(draws, n))])

    def per_draw(s: Dict[str, Any], key: str) -> Tuple[np.ndarray, np.ndarray]:  # (mAP, mean GFLOPs) per draw
        return resampled_map(s[key].probs, s["targets"], index), s[key].gflops[index].mean(1)

    seeds = [{key: per_draw(s, key) for key in ("tsn", "sofnet", "arnet")} for s in per_seed]

    def mean(key: str, part: int) -> np.ndarray:
        return np.mean([s[key][part] for s in seeds], axis=0)

    values = (100 * (mean("arnet", 0) - mean("tsn", 0)), 100 * mean("arnet", 1) / mean("tsn", 1),
              100 * (mean("sofnet", 0) - mean("arnet", 0)), 100 * mean("sofnet", 1) / mean("arnet", 1))
    low, high = 100 * (1 - LEVEL) / 2, 100 * (1 + LEVEL) / 2
    out = []
    for name, v in zip(ARNET_COMPARISONS, values):
        row: Dict[str, Any] = {"name": name, "value": float(v[0])}
        if draws > 0:
            row["interval"] = [float(x) for x in np.percentile(v[1:], [low, high])]
        out.append(row)
    return out
