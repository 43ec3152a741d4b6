"""The official ActivityNet classification submission format: write one from scores, score one against annotations.

    >>> from sofnet.submission import export_submission, evaluate_submission
    >>> export_submission(video_ids, probs, class_names, "out/submission.json", top_k=None)
    >>> evaluate_submission("out/submission.json", "../shared/data/activitynet/activity_net.v1-3.bsn.json")

A submission is ``{"version": "VERSION 1.3", "results": {video id: [{"label", "score"}, ...]}, "external_data"}``
(what ``Evaluation/eval_classification.py`` of github.com/activitynet/ActivityNet reads). :func:`evaluate_submission`
scores it as that evaluator does, non-interpolated and interpolated (:mod:`sofnet.metrics` says how they differ).
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from sofnet.metrics import ranked_average_precision, scores_matrix

log = logging.getLogger(__name__)

SUBMISSION_VERSION = "VERSION 1.3"
# The official evaluator refuses a prediction file without these fields (ANETclassification.PREDICTION_FIELDS).
_SUBMISSION_FIELDS = ("version", "results", "external_data")


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
    s = scores_matrix(scores)
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
    ap = ranked_average_precision(p_class, p_score, is_tp, npos, interpolated=False)
    ap_interp = ranked_average_precision(p_class, p_score, is_tp, npos, interpolated=True)
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
