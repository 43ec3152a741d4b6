"""Video-level metrics: ActivityNet mAP and top-k accuracy (the submission format: :mod:`sofnet.submission`).

All metrics are fractions in [0, 1] (``MapResult.percent`` gives the paper's percent). Inputs may be numpy
arrays or torch tensors; nothing here imports torch, Ray or MLflow.

    >>> from sofnet.metrics import activitynet_map, map_metrics, topk_accuracy
    >>> res = activitynet_map(probs, multi_hot)               # probs [N, K], multi_hot [N, K] in {0, 1}
    >>> res.map, res.percent, res.per_class                   # per_class is NaN for classes without a positive
    >>> map_metrics(probs, multi_hot)                         # {"mAP": ..., "mAP_first_label": ...}
    >>> topk_accuracy(probs, first_label, ks=(1, 5))          # {"top1": ..., "top5": ...}

Average precision (AP), as computed here, for one class: rank the rows by decreasing score and average, over
the class's ground-truth positives, the precision at the rank where each positive is retrieved; a positive
that is never retrieved contributes 0. This is the non-interpolated AP of the SoF-Net / AR-Net code and of
``sklearn.metrics.average_precision_score`` (which :func:`activitynet_map` calls). The official ActivityNet
classification evaluator (``Evaluation/eval_classification.py``, ``compute_average_precision_classification``
in github.com/activitynet/ActivityNet) builds the same precision/recall points -- predictions as
(video, label, score) rows, true positive when the video has that label (a repeated row is a false positive),
recall over the number of ground-truth (video, label) pairs -- but then integrates the VOC-2011 *interpolated*
envelope (``utils.interpolated_prec_rec``), which is never lower. Both are reported: ``interpolated=False``
(default, the paper's number) and ``interpolated=True`` (what the official evaluator prints).

Ties: rows with equal scores are ranked as one group (every positive in it gets the precision at the end of
the group), exactly as scikit-learn does. The official evaluator instead breaks ties in the arbitrary order
of ``argsort()[::-1]``, the AR-Net code in that of ``torch.sort``; with distinct scores the tie rule is moot.

Two mAPs, as the SoF-Net code reports them (``utils.py`` ``cal_map`` ~l. 64-84, ``main_base.py`` ``validate``):
its ``mmAP`` (multi-hot ground truth from all of a video's labels; it picks the best epoch) is our ``mAP``
(:func:`activitynet_map`, logged as ``val/mAP``); its ``mAP`` (only each video's first label, the smallest
class id) is our ``mAP_first_label`` (:func:`first_label_map`, ``val/mAP_first_label``). Both means here are
over the classes with a positive; the official one is over all K with 0 for a class without one (and it
renumbers the labels when a class has none): the same whenever every class has a positive.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
from sklearn.metrics import average_precision_score

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class MapResult:
    """Mean average precision over the classes that have at least one ground-truth positive.

    Attributes:
        map: Mean AP as a fraction in [0, 1].
        per_class: [K] AP per class, NaN for a class with no positive in the ground truth.
        interpolated: Whether AP is the VOC-interpolated one of the official evaluator.
    """

    map: float
    per_class: np.ndarray
    interpolated: bool = False

    @property
    def percent(self) -> float:
        """mAP in percent, as the paper's tables print it."""
        return 100.0 * self.map

    @property
    def num_classes(self) -> int:
        """Number of classes the mean is over (those with a positive)."""
        return int(np.count_nonzero(~np.isnan(self.per_class)))


def _to_numpy(x: Any, name: str) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch tensor, possibly on a GPU or requiring grad
        x = x.detach().cpu().numpy()
    try:
        return np.asarray(x)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name}: cannot be read as an array ({err})") from err


def scores_matrix(scores: Any) -> np.ndarray:
    s = _to_numpy(scores, "scores").astype(np.float64)
    if s.ndim != 2 or s.shape[0] == 0 or s.shape[1] == 0:
        raise ValueError(f"scores must be a non-empty [N, K] matrix, got shape {s.shape}")
    if not np.isfinite(s).all():
        raise ValueError("scores contain NaN or infinite values")
    return s


def ranked_average_precision(
    cls: np.ndarray, score: np.ndarray, is_tp: np.ndarray, npos: np.ndarray, *, interpolated: bool
) -> np.ndarray:
    """AP of every class from flat prediction rows, with equal scores ranked as one group.

    Args:
        cls: [R] class index of each row.
        score: [R] score of each row.
        is_tp: [R] whether the row is a true positive (already False for a repeated (video, label) row).
        npos: [K] number of ground-truth positives per class: the recall denominator, so positives without
            a row cost recall.
        interpolated: Integrate the VOC-2011 precision envelope (the official evaluator) instead of the
            precision at each retrieved positive.

    Returns:
        [K] AP per class, NaN where ``npos`` is 0, 0 where a class has positives but no true-positive row.
    """
    k = npos.shape[0]
    ap = np.full(k, np.nan)
    present = npos > 0
    ap[present] = 0.0
    if cls.size == 0:
        return ap
    order = np.lexsort((-score, cls))  # by class, then decreasing score; stable
    c, s, tp = cls[order], score[order], is_tp[order].astype(np.int64)
    n = c.size
    idx = np.arange(n)
    new_cls = np.ones(n, dtype=bool)
    new_cls[1:] = c[1:] != c[:-1]
    start = np.maximum.accumulate(np.where(new_cls, idx, 0))  # first row of each row's class
    csum = np.cumsum(tp)
    ctp = csum - csum[start] + tp[start]  # true positives so far within the class
    # The last row of each tie group; precision is only read there, which is what makes ties one group.
    group_last = np.ones(n, dtype=bool)
    group_last[:-1] = (c[1:] != c[:-1]) | (s[1:] != s[:-1])
    group_end = np.minimum.accumulate(np.where(group_last, idx, n)[::-1])[::-1]
    prec = np.where(group_last, ctp / (idx - start + 1), 0.0)
    if interpolated:
        # Envelope: best precision at this or any later (higher-recall) point of the same class. A loop over
        # classes (K <= a few hundred), not rows: numpy has no segmented running maximum.
        firsts = np.flatnonzero(new_cls)
        for a, b in zip(firsts, np.append(firsts[1:], n)):
            prec[a:b] = np.maximum.accumulate(prec[a:b][::-1])[::-1]
    sums = np.bincount(c, weights=tp * prec[group_end], minlength=k)
    ap[present] = sums[present] / npos[present]
    return ap


def activitynet_map(scores: Any, targets: Any, *, interpolated: bool = False) -> MapResult:
    """ActivityNet video mAP of a score matrix against multi-hot ground truth.

    Per class, non-interpolated AP over all N videos (see the module docstring: the formula of the official
    evaluator's ``compute_average_precision_classification`` with the envelope left out, the SoF-Net metric),
    then the mean over the classes that have at least one positive.

    Args:
        scores: [N, K] video scores (softmax probabilities or logits; only the order within a class matters).
        targets: [N, K] multi-hot ground truth (0/1 or bool): every label of a video is a positive.
        interpolated: Use the official evaluator's VOC-interpolated AP instead.

    Returns:
        The mAP (fraction) and the per-class APs.

    Raises:
        ValueError: On shape mismatch, non-finite scores, targets other than 0/1, or no positive at all.
    """
    s = scores_matrix(scores)
    t = _to_numpy(targets, "targets")
    if t.shape != s.shape:
        raise ValueError(f"targets shape {t.shape} != scores shape {s.shape}")
    if not np.isin(t, (0, 1)).all():
        raise ValueError("targets must be multi-hot (0/1)")
    t = t.astype(bool)
    npos = t.sum(axis=0)
    present = npos > 0
    if not present.any():
        raise ValueError("targets have no positive for any class: mAP is undefined")
    if interpolated:
        k = s.shape[1]
        cls = np.broadcast_to(np.arange(k), s.shape).ravel()
        per_class = ranked_average_precision(cls, s.ravel(), t.ravel(), npos, interpolated=True)
    else:
        per_class = np.full(s.shape[1], np.nan)
        cols = np.flatnonzero(present)
        if cols.size == 1:  # sklearn treats a single column as a binary problem: pass it as 1-D
            per_class[cols] = average_precision_score(t[:, cols[0]], s[:, cols[0]])
        else:
            per_class[cols] = average_precision_score(t[:, cols], s[:, cols], average=None)
    return MapResult(map=float(np.nanmean(per_class)), per_class=per_class, interpolated=interpolated)


def smallest_label(targets: Any) -> np.ndarray:
    """[N] each video's first label as the official lists order them (the smallest class id), -1 if none."""
    t = _to_numpy(targets, "targets")
    if t.ndim != 2:
        raise ValueError(f"targets must be a [N, K] multi-hot matrix, got shape {t.shape}")
    has = t.astype(bool).any(axis=1)
    return np.where(has, t.astype(bool).argmax(axis=1), -1)


def first_label_map(scores: Any, first_label: Any) -> MapResult:
    """mAP against one label per video (the official code's ``mAP``, ``cal_map(output, target[:, 0:1])``).

    Args:
        scores: [N, K] video scores.
        first_label: [N] class index per video (-1: no label, the video is a negative for every class).
    """
    s = scores_matrix(scores)
    y = _to_numpy(first_label, "first_label")
    if y.shape != (s.shape[0],) or not np.issubdtype(y.dtype, np.integer) or (y >= s.shape[1]).any():
        raise ValueError(f"first_label must be [N={s.shape[0]}] integers in -1..{s.shape[1] - 1}")
    onehot = np.zeros(s.shape, dtype=np.int64)
    rows = np.flatnonzero(y >= 0)
    onehot[rows, y[rows]] = 1
    return activitynet_map(s, onehot)


def map_metrics(scores: Any, targets: Any) -> dict[str, float]:
    """Both mAPs, named by what they score (see the module docstring).

    Returns:
        ``{"mAP": multi-label mAP (official mmAP), "mAP_first_label": first-label mAP (official mAP)}``.
    """
    return {"mAP": activitynet_map(scores, targets).map,
            "mAP_first_label": first_label_map(scores, smallest_label(targets)).map}


def topk_accuracy(scores: Any, target_index: Any, ks: Sequence[int] = (1, 5)) -> dict[str, float]:
    """Fraction of videos whose target class is among the k highest scores.

    Used for Sports-1M, and for ActivityNet top-1/top-5 against each video's first label (the paper's
    convention). Ties are broken by class index (the order of a stable sort), so the result is deterministic.

    Args:
        scores: [N, K] video scores.
        target_index: [N] integer class index per video.
        ks: The k values, each in 1..K.

    Returns:
        ``{"top1": ..., "top5": ...}`` (keys ``f"top{k}"``), fractions in [0, 1].

    Raises:
        ValueError: On shape mismatch, a target outside 0..K-1, or k outside 1..K.
    """
    s = scores_matrix(scores)
    n, k_classes = s.shape
    y = _to_numpy(target_index, "target_index")
    if y.shape != (n,) or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"target_index must be [N={n}] integers, got shape {y.shape} dtype {y.dtype}")
    if y.size and (y.min() < 0 or y.max() >= k_classes):
        raise ValueError(f"target_index out of range 0..{k_classes - 1}")
    bad = [k for k in ks if not 1 <= int(k) <= k_classes]
    if bad:
        raise ValueError(f"ks {bad} outside 1..{k_classes}")
    target_score = s[np.arange(n), y][:, None]
    # Rank of the target = classes scored higher + tied classes with a smaller index (stable order).
    rank = (s > target_score).sum(axis=1) + ((s == target_score) & (np.arange(k_classes) < y[:, None])).sum(axis=1)
    return {f"top{int(k)}": float(np.mean(rank < int(k))) for k in ks}
