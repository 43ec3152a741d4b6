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
``total - W * N * B`` (< ``W * B``) left over at the end of the permutation are seen (given no skipped bad
sample; a dataset smaller than ``W * B`` repeats videos); cost: a slot whose range starts inside a shard reads
(without decoding) the shard's first samples to skip them, at most one shard per slot per epoch, and shuffling
mixes only within a slot's range (plus the shard permutation).

Counts. The split is planned from ``sizes.json``, so a shard's sample count is checked against it while the
shard streams (a tar is never read up front): whenever a reader reaches the shard's end or its ``sizes.json``-th
sample, a mismatch raises :class:`DataError` naming the shard and both counts, in training and evaluation alike
(:func:`sofnet.shards.shard_samples`). In training the last slot of an epoch reads on (without decoding) to the
end of the permutation, so every shard is checked every epoch; cost: reading the fewer than ``W * B`` left-over
samples and the rest of that slot's last shard, per epoch on one worker. Unchecked, a count too high made
training run past the shard into the next ones and wrap into the next permutation (videos repeated within an
epoch, ranks overlapped), too low left the rest of the shard unread; in evaluation both change the set of videos
scored. A shard that training cannot read to its end (an I/O or tar error, logged) is not count-checked: the
error explains the shortfall, and the next samples take its place as for a bad sample.

Bad input. A missing directory, shard, ``sizes.json`` entry or subset raises ``FileNotFoundError`` /
:class:`DataError` naming the path when the loader is made. A corrupt sample (bad JSON, missing frame,
undecodable JPEG, label out of range) or unreadable shard is skipped and logged (WARNING, naming the shard
and the key) in training, where the next sample takes its place so the batch count stays exact; in
evaluation it raises :class:`DataError` naming the shard and key, because a dropped video makes mAP wrong.

Modules. ``sofnet.shards`` (shard lists, manifest, sizes, one shard's samples counted), ``sofnet.clips``
(sample to clip to batch tensors), this module (the two datasets and loaders), ``sofnet.evalgather``
(joining evaluation outputs); the names other code uses are all importable from here.
"""

from __future__ import annotations

import itertools
import logging
import random
from typing import Any, Iterator, Optional, Sequence

import webdataset as wds
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from sofnet.clips import (
    DEFAULT_SCALES, IMAGENET_MEAN, IMAGENET_STD, Clip, ClipTransform, DataError, batches, prepared, sample_crop,
    segment_indices,
)
from sofnet.evalgather import gather_eval, merge_eval_parts
from sofnet.shards import Shards, read_manifest, read_sizes, resolve_shards, shard_samples

# The loader's API, as before the split (other modules import these from here).
__all__ = ["DEFAULT_SCALES", "IMAGENET_MEAN", "IMAGENET_STD", "ClipTransform", "DataError", "EvalClips", "Shards",
           "TrainClips", "gather_eval", "make_eval_loader", "make_train_loader", "merge_eval_parts", "read_manifest",
           "read_sizes", "resolve_shards", "sample_crop", "segment_indices"]

logger = logging.getLogger(__name__)


def _worker() -> tuple[int, int]:
    info = get_worker_info()
    return (info.id, info.num_workers) if info is not None else (0, 1)


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

    def _samples_from(self, start: int, reading: list[int]) -> Iterator[dict[str, Any]]:
        """Samples from position ``start`` of this epoch's permutation on, then the next epochs' (endless).

        ``reading[0]`` is kept at the epoch whose permutation is being read.
        """
        epoch, pos, empty_shards = self.epoch, start % self.total, 0
        while True:
            reading[0] = epoch
            order = list(range(len(self.urls)))
            random.Random(f"sofnet-shards-{self.seed}-{epoch}").shuffle(order)
            for index in order:
                size = self.sizes[index]
                if size and pos >= size:  # wholly before this slot's range: another slot reads (and checks) it
                    pos -= size
                    continue
                got = False  # a shard that sizes.json calls empty is opened all the same, to check that it is
                for sample in shard_samples(self.urls[index], size, skip=pos, strict=False):
                    got, empty_shards = True, 0
                    yield sample
                pos, empty_shards = 0 if size else pos, 0 if got else empty_shards + 1
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
        reading = [self.epoch]
        samples = self._samples_from(start, reading)
        clips = prepared(samples, self.num_segments, self.num_classes, rng, skip_bad=True)
        head: Iterator[Clip] = itertools.islice(clips, n_batches * b)
        if self.shuffle_buffer > 1:
            head = iter(wds.shuffle(self.shuffle_buffer, self.shuffle_buffer, rng=rng)(head))
        # The slot's range, shuffled; after it (only when bad samples were skipped) the samples that follow.
        yield from batches(itertools.chain(head, clips), self.transform, b, self.num_classes, rng,
                           skip_bad=True, max_batches=n_batches)
        if self.rank == self.world_size - 1 and worker == min(num_workers, self.batches_per_epoch) - 1:
            # The last slot of the epoch reads on (without decoding) to the end of the permutation, so every shard
            # gets its sizes.json count checked every epoch, also those holding the < W * B left-over samples:
            # costs reading those samples and the rest of the slot's last shard, once per epoch on one worker.
            for _ in samples if reading[0] == self.epoch else ():
                if reading[0] != self.epoch:
                    break


class EvalClips(IterableDataset):
    """Evaluation batches: whole shards per rank and worker, in order, every video exactly once.

    Rank ``r`` of ``W`` reads shards ``r, r + W, ...``, its worker ``w`` of ``n`` every ``n``-th of those. Each
    shard's count is checked against ``sizes`` (when given) at its end; any read error raises.
    """

    def __init__(self, urls: Sequence[str], *, num_segments: int, num_classes: int, transform: ClipTransform,
                 batch_size: int, rank: int, world_size: int, num_videos: Optional[int],
                 sizes: Optional[Sequence[int]] = None) -> None:
        super().__init__()
        self.urls, self.sizes = list(urls), (list(sizes) if sizes is not None else None)
        self.num_segments, self.num_classes, self.transform = num_segments, num_classes, transform
        self.batch_size, self.rank, self.world_size, self.num_videos = batch_size, rank, world_size, num_videos

    def _samples(self) -> Iterator[dict[str, Any]]:
        worker, num_workers = _worker()
        for index in range(len(self.urls))[self.rank::self.world_size][worker::num_workers]:
            expected = self.sizes[index] if self.sizes is not None else None
            yield from shard_samples(self.urls[index], expected, strict=True)

    def __iter__(self) -> Iterator[dict]:
        clips = prepared(self._samples(), self.num_segments, self.num_classes, None, skip_bad=False)
        yield from batches(clips, self.transform, self.batch_size, self.num_classes, None, skip_bad=False)


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
        sizes: Optional[list[int]] = read_sizes(urls)
    except (OSError, DataError) as e:
        logger.info("no video count for the eval shards, so no per-shard count check (%s)", e)
        sizes = None
    if len(urls) < world_size * max(1, num_workers):
        logger.info("%d eval shards for %d ranks x %d workers: some workers get none", len(urls), world_size,
                    max(1, num_workers))
    dataset = EvalClips(urls, num_segments=num_segments, num_classes=num_classes,
                        transform=ClipTransform(input_size, resize=resize), batch_size=batch_size, rank=rank,
                        world_size=world_size, num_videos=sum(sizes) if sizes is not None else None, sizes=sizes)
    return _dataloader(dataset, num_workers, pin_memory)
