"""Video-level metrics: ActivityNet mAP, top-k accuracy, and the official ActivityNet submission format.

All metrics are fractions in [0, 1] (``MapResult.percent`` gives the paper's percent). Inputs may be numpy
arrays or torch tensors; nothing here imports torch, Ray or MLflow.

    >>> from sofnet.metrics import activitynet_map, topk_accuracy, export_submission, evaluate_submission
    >>> res = activitynet_map(probs, multi_hot)               # probs [N, K], multi_hot [N, K] in {0, 1}
    >>> res.map, res.percent, res.per_class                   # per_class is NaN for classes without a positive
    >>> map_metrics(probs, multi_hot)                         # {"mAP": ..., "mAP_first_label": ...}
    >>> topk_accuracy(probs, first_label, ks=(1, 5))          # {"top1": ..., "top5": ...}
    >>> export_submission(video_ids, probs, class_names, "out/submission.json", top_k=None)
    >>> evaluate_submission("out/submission.json", "../shared/data/activitynet/activity_net.v1-3.bsn.json")

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

import json
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from sklearn.metrics import average_precision_score

log = logging.getLogger(__name__)

SUBMISSION_VERSION = "VERSION 1.3"
# The official evaluator refuses a prediction file without these fields (ANETclassification.PREDICTION_FIELDS).
_SUBMISSION_FIELDS = ("version", "results", "external_data")


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


def _scores_matrix(scores: Any) -> np.ndarray:
    s = _to_numpy(scores, "scores").astype(np.float64)
    if s.ndim != 2 or s.shape[0] == 0 or s.shape[1] == 0:
        raise ValueError(f"scores must be a non-empty [N, K] matrix, got shape {s.shape}")
    if not np.isfinite(s).all():
        raise ValueError("scores contain NaN or infinite values")
    return s


def _ranked_average_precision(
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
    s = _scores_matrix(scores)
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
        per_class = _ranked_average_precision(cls, s.ravel(), t.ravel(), npos, interpolated=True)
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
    s = _scores_matrix(scores)
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
    s = _scores_matrix(scores)
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


def _submission_id(video_id: str) -> str:
    # mmaction lists spell ids "v_<11-char YouTube id>"; the official format has the bare id. Only a 13-char
    # "v_" id is stripped, because a real YouTube id may itself start with "v_" (two do in ActivityNet).
    return video_id[2:] if len(video_id) == 13 and video_id.startswith("v_") else video_id


def export_submission(
    ids: Sequence[str],
    scores: Any,
    class_names: Sequence[str],
    path: str | os.PathLike[str],
    top_k: int | None = None,
    *,
    external_data: Mapping[str, Any] | None = None,
) -> Path:
    """Write predictions as an official ActivityNet classification submission (``VERSION 1.3``).

    Each video gets its labels in decreasing score order (ties by class index): all K, or the ``top_k`` best.
    A top-k file scores a positive ranked below k in its video as not retrieved (lost recall) and drops the
    negatives below k, so its mAP can move either way; hit@j for j <= k is unchanged.

    Args:
        ids: N video ids; ``v_``-prefixed 13-char ids are written bare, as the official files spell them.
        scores: [N, K] video scores, written as JSON floats (exact round trip).
        class_names: K label names, as in the annotation file.
        path: Output file; parent folders are created, and the file is replaced atomically.
        top_k: Keep only the k best labels per video; None keeps all.
        external_data: The ``external_data`` declaration; default ``{"used": False, "details": ""}``.

    Returns:
        The path written.

    Raises:
        ValueError: On mismatched lengths, duplicate ids or class names, non-finite scores, a bad ``top_k``.
    """
    s = _scores_matrix(scores)
    n, k = s.shape
    vids = [_submission_id(str(v)) for v in ids]
    names = [str(c) for c in class_names]
    if len(vids) != n or len(names) != k:
        raise ValueError(f"{len(vids)} ids and {len(names)} class names for a scores matrix of shape {s.shape}")
    if len(set(vids)) != n:
        raise ValueError("ids contain duplicates")
    if len(set(names)) != k:
        raise ValueError("class_names contain duplicates")
    if top_k is not None and not 1 <= top_k <= k:
        raise ValueError(f"top_k={top_k} outside 1..{k}")
    order = np.argsort(-s, axis=1, kind="stable")[:, : top_k or k]
    top_scores = np.take_along_axis(s, order, axis=1).tolist()
    results = {
        vid: [{"label": names[j], "score": sc} for j, sc in zip(row, row_scores)]
        for vid, row, row_scores in zip(vids, order.tolist(), top_scores)
    }
    doc = {
        "version": SUBMISSION_VERSION,
        "results": results,
        "external_data": dict(external_data) if external_data is not None else {"used": False, "details": ""},
    }
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(doc), encoding="utf-8")
    os.replace(tmp, out)  # a reader (or a retried Ray task) never sees half a file
    log.info("wrote %s: %d videos, %d rows", out, n, n * order.shape[1])
    return out


def _load_json(path: Path, what: str) -> Any:
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except OSError as err:
        raise ValueError(f"{path}: cannot read the {what} ({err.strerror})") from err
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: the {what} is not valid JSON ({err})") from err


def _load_ground_truth(path: Path, subset: str) -> tuple[dict[str, int], list[str], np.ndarray, np.ndarray]:
    """Videos of ``subset`` with their (video, label) pairs, deduplicated as the official evaluator does."""
    data = _load_json(path, "annotation file")
    db = data.get("database") if isinstance(data, dict) else None
    if not isinstance(db, dict):
        raise ValueError(f"{path}: not an ActivityNet annotation file (no 'database' object)")
    # The label vocabulary comes from the annotations of every subset (the taxonomy may be empty), so a
    # label that exists but has no positive in this subset is not an error, only ignored by the mean.
    labels = {a["label"] for v in db.values() for a in v.get("annotations", ())}
    labels |= {n["nodeName"] for n in data.get("taxonomy") or () if isinstance(n, dict) and "nodeName" in n}
    class_names = sorted(labels)
    class_index = {c: i for i, c in enumerate(class_names)}
    video_index: dict[str, int] = {}
    pairs: set[tuple[int, int]] = set()
    for vid, v in db.items():
        if v.get("subset") != subset:
            continue
        if not v.get("annotations"):  # the official ground truth is the annotation rows: no label, no video
            continue
        vi = video_index.setdefault(vid, len(video_index))
        pairs.update((vi, class_index[a["label"]]) for a in v.get("annotations", ()))
    if not video_index:
        subsets = sorted({str(v.get("subset")) for v in db.values()})
        raise ValueError(f"{path}: no video in subset {subset!r} (subsets present: {subsets})")
    gt = np.array(sorted(pairs), dtype=np.int64).reshape(-1, 2)
    return video_index, class_names, gt[:, 0], gt[:, 1]


def _load_rows(
    path: Path, class_index: Mapping[str, int], video_index: dict[str, int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Prediction rows (video, class, score); unknown videos get new indices so their rows count as false."""
    data = _load_json(path, "submission")
    if not isinstance(data, dict) or any(f not in data for f in _SUBMISSION_FIELDS):
        raise ValueError(f"{path}: a submission needs the fields {list(_SUBMISSION_FIELDS)}")
    results = data["results"]
    if not isinstance(results, dict):
        raise ValueError(f"{path}: 'results' must map video ids to lists of {{label, score}}")
    known = sum(vid in video_index for vid in results)
    if results and known == 0 and any(_submission_id(v) in video_index for v in results):
        raise ValueError(f"{path}: video ids are spelled 'v_<id>'; the official format uses the bare YouTube id")
    vids: list[int] = []
    labels: list[int] = []
    scores: list[float] = []
    for vid, preds in results.items():
        if not isinstance(preds, list):
            raise ValueError(f"{path}: results[{vid!r}] must be a list of {{label, score}}")
        vi = video_index.setdefault(vid, len(video_index))
        for p in preds:
            if not isinstance(p, dict) or "label" not in p or "score" not in p:
                raise ValueError(f"{path}: results[{vid!r}] has an entry without 'label' and 'score': {p!r}")
            if p["label"] not in class_index:
                raise ValueError(f"{path}: results[{vid!r}] has unknown label {p['label']!r}")
            sc = p["score"]
            if isinstance(sc, bool) or not isinstance(sc, (int, float)) or not math.isfinite(sc):
                raise ValueError(f"{path}: results[{vid!r}] label {p['label']!r} has a bad score {sc!r}")
            vids.append(vi)
            labels.append(class_index[p["label"]])
            scores.append(float(sc))
    return np.array(vids, dtype=np.int64), np.array(labels, dtype=np.int64), np.array(scores), len(results) - known


def evaluate_submission(
    submission_path: str | os.PathLike[str],
    annotation_path: str | os.PathLike[str],
    subset: str = "validation",
    ks: Sequence[int] = (1, 3, 5),
) -> dict[str, Any]:
    """Evaluate a submission file against an annotation file the way the official evaluator does.

    AP per class over that class's (video, label, score) rows, recall over the subset's ground-truth
    (video, label) pairs (a missing row costs recall; a repeated row or a video outside the subset is a false
    positive); mean over the classes with a positive. hit@k: fraction of the subset's videos with a true
    label among their k best rows (``avg_hit@k``: fraction of each video's labels found, averaged); a video
    without rows is a miss. Unlike the official script, no "blocked videos" list is fetched from a server.

    Args:
        submission_path: JSON with ``version``, ``results`` ({video_id: [{label, score}]}), ``external_data``.
        annotation_path: ActivityNet annotations (``{"database": {id: {subset, annotations: [{label}]}}}``).
        subset: Which subset of the annotations is the ground truth.
        ks: The k values of hit@k (the official script reports hit@3).

    Returns:
        ``map`` (non-interpolated, = :func:`activitynet_map` for a full export), ``map_interpolated`` (the
        official evaluator's number), ``per_class_ap`` ({label: AP}), ``hit@k`` and ``avg_hit@k`` per k, and
        counts: ``num_videos`` (ground truth), ``num_rows``, ``num_videos_without_rows``,
        ``num_videos_not_in_subset`` (submitted videos the subset does not have). All fractions in [0, 1].

    Raises:
        ValueError: Naming the file, for an unreadable or malformed file, an unknown label, or an empty subset.
    """
    if any(int(kk) < 1 for kk in ks):
        raise ValueError(f"ks must be positive, got {list(ks)}")
    sub_path, ann_path = Path(submission_path), Path(annotation_path)
    video_index, class_names, gt_video, gt_class = _load_ground_truth(ann_path, subset)
    n_gt = len(video_index)
    class_index = {c: i for i, c in enumerate(class_names)}
    p_video, p_class, p_score, n_foreign = _load_rows(sub_path, class_index, video_index)
    if n_foreign:
        log.warning("%s: %d submitted videos are not in subset %r of %s; their rows count as false positives",
                    sub_path, n_foreign, subset, ann_path)
    k = len(class_names)
    npos = np.bincount(gt_class, minlength=k)
    gt_codes = gt_video * k + gt_class
    codes = p_video * k + p_class
    hit_pair = np.isin(codes, gt_codes)
    # Only the highest-scored row of a (video, label) pair may be a true positive; repeats are false positives
    # (the official lock_gt). Repeats with equal scores share a tie group, so which of them counts is moot.
    by_pair = np.lexsort((-p_score, codes))
    first = np.zeros(codes.size, dtype=bool)
    first[by_pair] = np.diff(codes[by_pair], prepend=-1) != 0
    is_tp = hit_pair & first
    ap = _ranked_average_precision(p_class, p_score, is_tp, npos, interpolated=False)
    ap_interp = _ranked_average_precision(p_class, p_score, is_tp, npos, interpolated=True)
    out: dict[str, Any] = {
        "map": float(np.nanmean(ap)),
        "map_interpolated": float(np.nanmean(ap_interp)),
        "per_class_ap": {c: float(a) for c, a in zip(class_names, ap) if not np.isnan(a)},
    }
    # hit@k: rank rows within each video by decreasing score (ties: file order, the official's is arbitrary).
    order = np.lexsort((-p_score, p_video))
    v_sorted = p_video[order]
    starts = np.diff(v_sorted, prepend=-1) != 0
    rank = np.arange(order.size) - np.maximum.accumulate(np.where(starts, np.arange(order.size), 0))
    labels_per_video = np.bincount(gt_video, minlength=n_gt)
    for kk in ks:
        found = np.unique(codes[order][(rank < kk) & hit_pair[order]])  # distinct true labels in the top k
        n_found = np.bincount(found // k, minlength=n_gt)[:n_gt]
        out[f"hit@{kk}"] = float(np.mean(n_found > 0))
        out[f"avg_hit@{kk}"] = float(np.mean(n_found / labels_per_video))
    out.update(
        num_videos=n_gt,
        num_rows=int(codes.size),
        num_videos_without_rows=int(n_gt - np.unique(p_video[p_video < n_gt]).size),
        num_videos_not_in_subset=n_foreign,
    )
    log.info("%s on %s/%s: mAP %.4f (interpolated %.4f)", sub_path, ann_path.name, subset, out["map"],
             out["map_interpolated"])
    return out
