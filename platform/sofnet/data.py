"""Streaming loader: TSN clips from the WebDataset video shards written by ``data_prep``.

Training and evaluation read the same shards (``{subset}-{index:06d}.tar`` beside ``sizes.json`` and
``manifest.json``; one sample per video: ``{key}.json`` plus one JPEG per stored frame ``{key}.{i:04d}.jpg``).
Only the ``num_segments`` chosen JPEGs of a video are decoded. Usage, with the rank and world size that the
caller gets from Ray Train (``ray.train.get_context().get_world_rank()`` / ``get_world_size()``)::

    from sofnet.data import gather_eval, make_eval_loader, make_train_loader

    train, steps = make_train_loader("/data/anet", subset="training", num_segments=16, input_size=224,
                                     batch_size=24, num_workers=4, num_classes=200,
                                     rank=rank, world_size=world_size, epoch=epoch, seed=1007)
    for batch in train:                        # exactly `steps` batches, on every rank
        logits = model(batch["frames"])        # [B, T, 3, H, W] float32, ImageNet mean/std
        loss = criterion(logits, batch["label"])

    val = make_eval_loader("/data/anet", subset="validation", num_segments=16, input_size=224, resize=256,
                           batch_size=24, num_workers=4, num_classes=200, rank=rank, world_size=world_size)
    ids, scores, targets = [], [], []
    for batch in val:                          # this rank's share; ranks may get different counts
        ids += batch["id"]
        scores.append(model(batch["frames"]).softmax(-1))
        targets.append(batch["labels"])
    ids, (scores, targets) = gather_eval(ids, scores, targets, expected=val.dataset.num_videos)
    # on every rank: all videos, each once, sorted by id; scores and targets as numpy arrays [N, K]

Both loaders split by rank themselves: do not pass them through ``ray.train.torch.prepare_data_loader`` (or
``deepspeed.initialize(training_data=...)``), which would add a DistributedSampler; move the tensors to the
device yourself. Evaluation counts differ between ranks, which is fine for a plain forward (DDP, DeepSpeed
ZeRO 0-2); under ZeRO-3 the forward is itself collective, so there evaluate with gathered parameters.

Every batch is a dict: ``frames`` float32 [B, T, 3, H, W] (normalized); ``labels`` float32 [B, K] multi-hot;
``label`` int64 [B] primary label (the first one, -1 for an unlabelled video); ``id`` list of B video ids;
``inside`` bool [B, T] (chosen frame lies in an annotated segment); ``timestamps`` float32 [B, T] (seconds of
the chosen frames); ``frame_index`` int64 [B, T] (their index among the stored frames).

Splitting. Evaluation splits whole shards: rank ``r`` reads shards ``r, r + W, ...`` and its dataloader worker
``w`` of ``n`` every ``n``-th of those, in order, no shuffling, no padding. Every video is read exactly once
across all ranks and workers; counts differ between ranks (make at least ``W * num_workers`` eval shards to
keep every worker busy); :func:`gather_eval` joins the parts. Training must give every rank the same number
of batches (collectives hang otherwise), so it uses an exact scheme instead of resampling: each epoch all
ranks draw the same permutation of the shards (``seed``, ``epoch``) and see it as one sequence of
``sum(sizes.json)`` samples; with ``N = max(1, total // (W * B))`` batches per rank, every (rank, worker)
slot reads its own contiguous range of that sequence (``N * B`` samples per rank), shuffles it in a buffer
of ``shuffle_buffer`` and batches it. Within an epoch every video is seen at most once and all but the
``total - W * N * B`` (< ``W * B``) left over at the end of the permutation are seen (given a correct
``sizes.json`` and no skipped bad sample; a dataset smaller than ``W * B`` repeats videos); cost: a slot whose
range starts inside a shard reads (without decoding) the shard's first samples to skip them, at most one
shard per slot per epoch, and shuffling mixes only within a slot's range (plus the shard permutation).

Bad input. A missing directory, shard, ``sizes.json`` entry or subset raises ``FileNotFoundError`` /
:class:`DataError` naming the path when the loader is made. A corrupt sample (bad JSON, missing frame,
undecodable JPEG, label out of range) or unreadable shard is skipped and logged (WARNING, naming the shard
and the key) in training, where the next sample takes its place so the batch count stays exact; in
evaluation it raises :class:`DataError` naming the shard and key, because a dropped video makes mAP wrong.
"""

from __future__ import annotations

import functools
import itertools
import json
import logging
import os
import random
from collections import Counter
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Mapping, Optional, Sequence, Union

import braceexpand
import numpy as np
import torch
import webdataset as wds
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from webdataset.gopen import gopen

from sofnet.clips import (  # noqa: F401  (re-exported: part of the loader's API)
    DEFAULT_SCALES, IMAGENET_MEAN, IMAGENET_STD, ClipTransform, DataError, sample_crop, segment_indices,
)

logger = logging.getLogger(__name__)


Shards = Union[str, os.PathLike, Sequence[str]]


# ----------------------------------------------------------------------------------------------- shard lists
def _is_local(url: str) -> bool:
    return "://" not in url and not url.startswith("pipe:")


def _read_json(path: str) -> Any:
    try:
        with gopen(path, "rb") as f:
            return json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} does not exist") from None
    except ValueError as e:
        raise DataError(f"{path}: not valid JSON: {e}") from None


def read_manifest(directory: Union[str, os.PathLike]) -> dict[str, Any]:
    """The ``manifest.json`` of a shard directory: ``{"dataset", "classes", "subsets", "params"}``."""
    return _read_json(os.path.join(os.fspath(directory), "manifest.json"))


def resolve_shards(shards: Shards, subset: Optional[str] = None) -> list[str]:
    """Expand a shard specification into a list of shard paths or URLs.

    Args:
        shards: A shard directory (then ``subset`` picks its shards: the manifest's list, else
            ``{subset}-*.tar``), a brace pattern (``"/d/training-{000000..000009}.tar"``) or a list of paths/URLs.
        subset: Subset name, required for a directory.

    Returns:
        The shard paths, in the given (or manifest / sorted) order.

    Raises:
        FileNotFoundError: The directory or a local shard file does not exist, or the subset has no shards.
        DataError: The manifest has no such subset.
    """
    if isinstance(shards, (str, os.PathLike)):
        text = os.fspath(shards)
        if not text:
            raise FileNotFoundError("no shards given: the shard path is empty")
        if os.path.isdir(text):
            return _directory_shards(text, subset)
        if _is_local(text) and "{" not in text and not text.endswith(".tar"):
            raise FileNotFoundError(f"shard directory {text} does not exist")
        urls = list(braceexpand.braceexpand(text))
    else:
        urls = [os.fspath(u) for u in shards]
    if not urls:
        raise FileNotFoundError("no shards given")
    missing = [u for u in urls if _is_local(u) and not os.path.isfile(u)]
    if missing:
        more = f" (and {len(missing) - 1} more of {len(urls)})" if len(missing) > 1 else ""
        raise FileNotFoundError(f"shard file {missing[0]} does not exist{more}")
    return urls


def _directory_shards(directory: str, subset: Optional[str]) -> list[str]:
    if not subset:
        raise ValueError(f"{directory} is a directory: name the subset to read (e.g. 'training')")
    manifest_path = os.path.join(directory, "manifest.json")
    if os.path.isfile(manifest_path):
        subsets = read_manifest(directory).get("subsets", {})
        if subset not in subsets:
            raise DataError(f"{manifest_path}: no subset {subset!r} (it has: {', '.join(sorted(subsets)) or 'none'})")
        names = list(subsets[subset].get("shards", []))
    else:
        names = sorted(n for n in os.listdir(directory) if n.startswith(f"{subset}-") and n.endswith(".tar"))
    if not names:
        raise FileNotFoundError(f"no {subset}-*.tar shards in {directory}")
    return resolve_shards([os.path.join(directory, n) for n in names])


def read_sizes(urls: Sequence[str]) -> list[int]:
    """Samples per shard, from the ``sizes.json`` beside each shard.

    Raises:
        FileNotFoundError: A ``sizes.json`` is missing.
        DataError: It has no (or a negative) entry for one of the shards.
    """
    tables: dict[str, Mapping[str, Any]] = {}
    out = []
    for url in urls:
        folder, name = url.rsplit("/", 1) if "/" in url else (".", url)
        path = f"{folder}/sizes.json"
        if folder not in tables:
            tables[folder] = _read_json(path)
        n = tables[folder].get(name)
        if not isinstance(n, int) or n < 0:
            raise DataError(f"{path}: no sample count for {name}")
        out.append(n)
    return out


# ------------------------------------------------------------------------------------------ samples, batches
@dataclass
class _Clip:
    """A sample with its frames chosen: only the chosen JPEGs are kept (cheap in the shuffle buffer)."""

    id: str
    where: str  # "shard: key" for messages
    jpegs: list[bytes]
    indices: list[int]
    labels: list[int]
    inside: list[bool]
    timestamps: list[float]


def _prepare(sample: dict[str, Any], num_segments: int, num_classes: int, rng: Optional[random.Random]) -> _Clip:
    where = f"{sample.get('__url__')}: sample {sample.get('__key__')!r}"
    if "json" not in sample:
        raise DataError(f"{where}: no json member")
    try:
        meta = json.loads(sample["json"])
        n = int(meta["num_frames"])
        labels = [int(x) for x in meta["labels"]]
        inside, stamps = meta["inside"], meta["timestamps"]
        if len(inside) < n or len(stamps) < n:
            raise ValueError(f"'inside'/'timestamps' have {len(inside)}/{len(stamps)} entries for {n} frames")
        if any(not 0 <= x < num_classes for x in labels):
            raise ValueError(f"label ids {labels} outside [0, {num_classes})")
        idx = segment_indices(n, num_segments, rng)
        clip = _Clip(str(meta["id"]), where, [], idx, labels, [bool(inside[i]) for i in idx],
                     [float(stamps[i]) for i in idx])
    except KeyError as e:
        raise DataError(f"{where}: json has no {e.args[0]!r}") from None
    except (ValueError, TypeError, IndexError) as e:
        raise DataError(f"{where}: bad json: {e}") from None
    absent = [name for name in (f"{i:04d}.jpg" for i in range(n)) if name not in sample]
    if absent:
        raise DataError(f"{where}: num_frames is {n} but {len(absent)} frames are missing, e.g. {absent[0]}")
    clip.jpegs = [sample[f"{i:04d}.jpg"] for i in idx]
    return clip


def _prepared(samples: Iterable[dict[str, Any]], num_segments: int, num_classes: int,
              rng: Optional[random.Random], skip_bad: bool) -> Iterator[_Clip]:
    for sample in samples:
        try:
            yield _prepare(sample, num_segments, num_classes, rng)
        except DataError as e:
            if not skip_bad:
                raise
            logger.warning("skipping a bad sample: %s", e)


def _empty(shape: tuple[int, ...]) -> torch.Tensor:
    """A float32 tensor; in a dataloader worker in shared memory, so handing it over copies nothing."""
    if get_worker_info() is None:
        return torch.empty(shape)
    numel = int(np.prod(shape))
    return torch.empty(0).set_(torch.UntypedStorage._new_shared(4 * numel), 0, shape)


def _batches(clips: Iterator[_Clip], transform: ClipTransform, batch_size: int, num_classes: int,
             rng: Optional[random.Random], skip_bad: bool, max_batches: Optional[int] = None) -> Iterator[dict]:
    """Decode clips straight into batch tensors; a clip that fails to decode is skipped (or raises)."""
    done = 0
    while max_batches is None or done < max_batches:
        frames, got = None, []
        for clip in clips:
            if frames is None:
                frames = _empty((batch_size, len(clip.jpegs), 3, transform.input_size, transform.input_size))
            try:
                transform(clip.jpegs, rng, out=frames[len(got)])
            except Exception as e:  # PIL raises OSError, SyntaxError, ValueError... on broken JPEGs
                err = DataError(f"{clip.where}: cannot decode its frames: {e}")
                if not skip_bad:
                    raise err from e
                logger.warning("skipping a bad sample: %s", err)
                continue
            got.append(clip)
            if len(got) == batch_size:
                break
        if not got:
            return
        labels = torch.zeros(len(got), num_classes)
        for i, c in enumerate(got):
            labels[i, c.labels] = 1.0
        yield {
            "frames": frames[: len(got)],
            "labels": labels,
            "label": torch.tensor([c.labels[0] if c.labels else -1 for c in got], dtype=torch.int64),
            "id": [c.id for c in got],
            "inside": torch.tensor([c.inside for c in got], dtype=torch.bool),
            "timestamps": torch.tensor([c.timestamps for c in got], dtype=torch.float32),
            "frame_index": torch.tensor([c.indices for c in got], dtype=torch.int64),
        }
        done += 1
        if len(got) < batch_size:
            return


def _worker() -> tuple[int, int]:
    info = get_worker_info()
    return (info.id, info.num_workers) if info is not None else (0, 1)


def _log_and_skip(exn: Exception) -> bool:
    logger.warning("skipping unreadable shard data: %s", exn)
    return True


def _raise_data_error(exn: Exception) -> bool:
    raise DataError(f"cannot read shard data: {exn}") from exn


# ---------------------------------------------------------------------------------------------------- datasets
class TrainClips(IterableDataset):
    """Training batches: exactly ``batches_per_epoch`` per rank (see the module docstring for the scheme)."""

    def __init__(self, urls: Sequence[str], sizes: Sequence[int], *, num_segments: int, num_classes: int,
                 transform: ClipTransform, batch_size: int, rank: int, world_size: int, epoch: int, seed: int,
                 shuffle_buffer: int) -> None:
        super().__init__()
        self.urls, self.sizes = list(urls), list(sizes)
        self.total = sum(self.sizes)
        if self.total == 0:
            raise DataError(f"sizes.json counts no samples in the {len(self.urls)} shards from {self.urls[0]}")
        self.num_segments, self.num_classes, self.transform = num_segments, num_classes, transform
        self.batch_size, self.rank, self.world_size = batch_size, rank, world_size
        self.epoch, self.seed, self.shuffle_buffer = epoch, seed, shuffle_buffer
        self.batches_per_epoch = max(1, self.total // (world_size * batch_size))

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch (shard permutation and random stream) that the next iteration reads."""
        self.epoch = epoch

    def __len__(self) -> int:
        return self.batches_per_epoch

    def _worker_batches(self, worker: int, num_workers: int) -> int:
        n = self.batches_per_epoch
        return n // num_workers + (worker < n % num_workers)

    def _shard_samples(self, index: int, skip: int) -> Iterator[dict[str, Any]]:
        url, count = self.urls[index], 0
        try:
            stream = gopen(url, "rb")
        except OSError as e:
            _log_and_skip(e)
            return
        try:  # closed here, also when the epoch ends inside the shard
            files = wds.tariterators.tar_file_expander([{"url": url, "stream": stream}], handler=_log_and_skip)
            for sample in wds.tariterators.group_by_keys(files, handler=_log_and_skip):
                count += 1
                if count > skip:
                    yield sample
        finally:
            stream.close()
        if count != self.sizes[index]:
            logger.warning("%s: sizes.json says %d samples, the shard has %d", url, self.sizes[index], count)

    def _samples_from(self, start: int) -> Iterator[dict[str, Any]]:
        """Samples from position ``start`` of this epoch's permutation on, then the next epochs' (endless)."""
        epoch, pos, empty_shards = self.epoch, start % self.total, 0
        while True:
            order = list(range(len(self.urls)))
            random.Random(f"sofnet-shards-{self.seed}-{epoch}").shuffle(order)
            for index in order:
                if pos >= self.sizes[index]:
                    pos -= self.sizes[index]
                    continue
                got = False
                for sample in self._shard_samples(index, pos):
                    got, empty_shards = True, 0
                    yield sample
                pos, empty_shards = 0, 0 if got else empty_shards + 1
                if empty_shards > len(self.urls):
                    raise DataError(f"no readable sample in any of the {len(self.urls)} shards from {self.urls[0]}")
            epoch += 1

    def __iter__(self) -> Iterator[dict]:
        worker, num_workers = _worker()
        n_batches = self._worker_batches(worker, num_workers)
        if n_batches == 0:
            return
        b = self.batch_size
        start = (self.rank * self.batches_per_epoch + sum(self._worker_batches(w, num_workers)
                                                          for w in range(worker))) * b
        rng = random.Random(f"sofnet-train-{self.seed}-{self.epoch}-{self.rank}-{worker}")
        clips = _prepared(self._samples_from(start), self.num_segments, self.num_classes, rng, skip_bad=True)
        head: Iterator[_Clip] = itertools.islice(clips, n_batches * b)
        if self.shuffle_buffer > 1:
            head = iter(wds.shuffle(self.shuffle_buffer, self.shuffle_buffer, rng=rng)(head))
        # The slot's range, shuffled; after it (only when bad samples were skipped) the samples that follow.
        yield from _batches(itertools.chain(head, clips), self.transform, b, self.num_classes, rng,
                            skip_bad=True, max_batches=n_batches)


def _split_by_rank(src: Iterable[Any], rank: int, world_size: int) -> Iterator[Any]:
    yield from itertools.islice(src, rank, None, world_size)


class EvalClips(IterableDataset):
    """Evaluation batches: whole shards per rank and worker, in order, every video exactly once."""

    def __init__(self, urls: Sequence[str], *, num_segments: int, num_classes: int, transform: ClipTransform,
                 batch_size: int, rank: int, world_size: int, num_videos: Optional[int]) -> None:
        super().__init__()
        self.num_segments, self.num_classes, self.transform = num_segments, num_classes, transform
        self.batch_size, self.num_videos = batch_size, num_videos
        self.pipeline = wds.WebDataset(
            list(urls), shardshuffle=False, empty_check=False, handler=_raise_data_error,
            nodesplitter=functools.partial(_split_by_rank, rank=rank, world_size=world_size),
            workersplitter=wds.split_by_worker)

    def __iter__(self) -> Iterator[dict]:
        clips = _prepared(iter(self.pipeline), self.num_segments, self.num_classes, None, skip_bad=False)
        yield from _batches(clips, self.transform, self.batch_size, self.num_classes, None, skip_bad=False)


# ------------------------------------------------------------------------------------------------- public API
def _check(rank: int, world_size: int, **positive: int) -> None:
    if not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
    for name, value in positive.items():
        if value < (0 if name == "num_workers" else 1):
            raise ValueError(f"{name} must be >= {0 if name == 'num_workers' else 1}, got {value}")


def _dataloader(dataset: IterableDataset, num_workers: int, pin_memory: bool) -> DataLoader:
    return DataLoader(dataset, batch_size=None, num_workers=num_workers, pin_memory=pin_memory,
                      persistent_workers=False, prefetch_factor=2 if num_workers else None)


def make_train_loader(shards: Shards, *, num_segments: int, input_size: int, batch_size: int, num_workers: int,
                      num_classes: int, rank: int = 0, world_size: int = 1, epoch: int = 0, seed: int = 0,
                      shuffle_buffer: int = 500, scales: Sequence[float] = DEFAULT_SCALES, flip: bool = True,
                      subset: str = "training", pin_memory: bool = False) -> tuple[DataLoader, int]:
    """The training loader of one rank for one epoch.

    Args:
        shards: Shard directory (with ``subset``), brace pattern or list; ``sizes.json`` must sit beside them.
        num_segments: Frames per clip ``T``.
        input_size: Output side ``S`` (square crops).
        batch_size: Clips per batch, per rank.
        num_workers: Dataloader worker processes (0: load in this process).
        num_classes: ``K``, length of the multi-hot label vector.
        rank: This training worker's rank (Ray Train world rank).
        world_size: Number of training workers.
        epoch: Epoch number: selects the shard permutation and random stream (``loader.dataset.set_epoch``
            changes it for the next iteration without rebuilding the loader).
        seed: Base seed; the same on every rank.
        shuffle_buffer: Samples per worker in the shuffle buffer (each holds only its ``T`` JPEGs).
        scales: Multi-scale crop scales (TSN).
        flip: Random horizontal flip.
        subset: Subset to read when ``shards`` is a directory.
        pin_memory: Pin batches (for GPU training).

    Returns:
        ``(loader, batches_per_epoch)``: iterating ``loader`` yields exactly ``batches_per_epoch`` full batches
        (``len(loader)`` too) on every rank: ``max(1, sum(sizes) // (world_size * batch_size))``.
    """
    _check(rank, world_size, num_segments=num_segments, input_size=input_size, batch_size=batch_size,
           num_workers=num_workers, num_classes=num_classes)
    if not scales or not all(0 < s <= 1 for s in scales):
        raise ValueError(f"scales must be in (0, 1], got {list(scales)}")
    urls = resolve_shards(shards, subset)
    dataset = TrainClips(urls, read_sizes(urls), num_segments=num_segments, num_classes=num_classes,
                         transform=ClipTransform(input_size, scales=scales, flip=flip), batch_size=batch_size,
                         rank=rank, world_size=world_size, epoch=epoch, seed=seed, shuffle_buffer=shuffle_buffer)
    logger.info("train loader rank %d/%d: %d shards, %d videos, %d batches of %d per epoch", rank, world_size,
                len(urls), dataset.total, dataset.batches_per_epoch, batch_size)
    return _dataloader(dataset, num_workers, pin_memory), dataset.batches_per_epoch


def make_eval_loader(shards: Shards, *, num_segments: int, input_size: int, resize: int, batch_size: int,
                     num_workers: int, num_classes: int, rank: int = 0, world_size: int = 1,
                     subset: str = "validation", pin_memory: bool = False) -> DataLoader:
    """The evaluation loader of one rank: its share of the videos, each exactly once overall.

    Args:
        shards: Shard directory (with ``subset``), brace pattern or list.
        num_segments: Frames per clip ``T`` (segment centres).
        input_size: Centre crop side ``S``.
        resize: Short side before the centre crop.
        batch_size: Clips per batch; the last batch of each worker may be smaller.
        num_workers: Dataloader worker processes.
        num_classes: ``K``.
        rank: This worker's rank.
        world_size: Number of ranks.
        subset: Subset to read when ``shards`` is a directory.
        pin_memory: Pin batches.

    Returns:
        A ``DataLoader``; ``loader.dataset.num_videos`` is the number of videos over all ranks according to
        ``sizes.json`` (None without one), the ``expected`` of :func:`gather_eval`.
    """
    _check(rank, world_size, num_segments=num_segments, input_size=input_size, resize=resize,
           batch_size=batch_size, num_workers=num_workers, num_classes=num_classes)
    if resize < input_size:
        raise ValueError(f"resize ({resize}) must be >= input_size ({input_size}): the centre crop would not fit")
    urls = resolve_shards(shards, subset)
    try:
        num_videos: Optional[int] = sum(read_sizes(urls))
    except (OSError, DataError) as e:
        logger.info("no video count for the eval shards (%s)", e)
        num_videos = None
    if len(urls) < world_size * max(1, num_workers):
        logger.info("%d eval shards for %d ranks x %d workers: some workers get none", len(urls), world_size,
                    max(1, num_workers))
    dataset = EvalClips(urls, num_segments=num_segments, num_classes=num_classes,
                        transform=ClipTransform(input_size, resize=resize), batch_size=batch_size, rank=rank,
                        world_size=world_size, num_videos=num_videos)
    return _dataloader(dataset, num_workers, pin_memory)


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
