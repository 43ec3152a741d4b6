"""Evaluation outputs of all ranks joined onto every rank, each video exactly once (``sofnet.data`` re-exports).

    from sofnet.data import gather_eval, make_eval_loader

    ids, scores, targets = [], [], []
    for batch in val:                          # this rank's share of the eval loader; counts differ between ranks
        ids += batch["id"]
        scores.append(model(batch["frames"]).softmax(-1))
        targets.append(batch["labels"])
    ids, (scores, targets) = gather_eval(ids, scores, targets, expected=val.dataset.num_videos)
    # on every rank: all videos, each once, sorted by id; scores and targets as numpy arrays [N, K]
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Optional, Sequence, Union

import numpy as np
import torch

from sofnet.clips import DataError


def merge_eval_parts(parts: Sequence[tuple[Sequence[str], Sequence[Any]]],
                     expected: Optional[int] = None) -> tuple[list[str], list[np.ndarray]]:
    """Join per-rank ``(ids, [array, ...])`` parts, sorted by id; check that every video appears once.

    Raises:
        DataError: A video appears more than once, or the count differs from ``expected``.
    """
    parts = [(list(ids), [np.asarray(a) for a in arrays]) for ids, arrays in parts if len(ids)]
    ids = [i for p in parts for i in p[0]]
    repeated = [i for i, n in Counter(ids).items() if n > 1]
    if repeated:
        raise DataError(f"{len(repeated)} videos evaluated more than once, e.g. {repeated[0]!r}")
    if expected is not None and len(ids) != expected:
        raise DataError(f"evaluated {len(ids)} videos, expected {expected}")
    order = sorted(range(len(ids)), key=ids.__getitem__)
    if not parts:
        return [], []
    arrays = [np.concatenate([p[1][j] for p in parts])[order] for j in range(len(parts[0][1]))]
    return [ids[i] for i in order], arrays


def gather_eval(ids: Sequence[str], *arrays: Union[torch.Tensor, np.ndarray],
                expected: Optional[int] = None) -> tuple[list[str], list[np.ndarray]]:
    """All-gather every rank's evaluation outputs (uneven counts allowed) onto every rank.

    Call it on every rank, also one that saw no video (pass empty arrays). Uses
    ``torch.distributed.all_gather_object`` when a process group is up (Ray Train's TorchTrainer and
    DeepSpeed set one up), else returns this process's part.

    Args:
        ids: Video ids of this rank, in the order of the arrays' first dimension.
        *arrays: Per-video outputs (scores [n, K], multi-hot targets [n, K], ...): tensors, arrays, or lists of
            per-batch tensors/arrays (concatenated; an empty list is an empty part).
        expected: Total number of videos (``loader.dataset.num_videos``) to check, or None.

    Returns:
        ``(ids, arrays)`` over all ranks, sorted by id.

    Raises:
        DataError: A video was evaluated twice or the count differs from ``expected``.
    """
    def numpy(a: Any) -> np.ndarray:
        return a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)

    local = [(np.concatenate([numpy(x) for x in a]) if a else np.empty(0)) if isinstance(a, (list, tuple))
             else numpy(a) for a in arrays]
    for a in local:
        if len(a) != len(ids):
            raise ValueError(f"an array has {len(a)} rows for {len(ids)} ids")
    part = (list(ids), local)
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        parts: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(parts, part)
    else:
        parts = [part]
    return merge_eval_parts(parts, expected)
