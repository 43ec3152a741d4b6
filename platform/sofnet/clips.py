"""From a shard sample to a batch: TSN clip sampling, the train/eval transforms, batch tensors (``sofnet.data``).

    idx = segment_indices(num_frames=120, num_segments=16)            # evaluation: segment centres
    idx = segment_indices(120, 16, rng=random.Random(0))              # training: random frame per segment
    frames = ClipTransform(224)([jpeg_bytes[i] for i in idx], rng)   # [16, 3, 224, 224], normalized

    clips = prepared(samples, num_segments=16, num_classes=200, rng=None, skip_bad=False)  # frames chosen, not decoded
    for batch in batches(clips, ClipTransform(224, resize=256), 24, 200, None, skip_bad=False):
        batch["frames"]                                               # [B, 16, 3, 224, 224]; see sofnet.data
"""

from __future__ import annotations

import io
import json
import logging
import random
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Optional, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import get_worker_info

logger = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_SCALES = (1.0, 0.875, 0.75, 0.66)


class DataError(ValueError):
    """Shards or samples that do not follow the shard contract; the message names the file (and key)."""


def segment_indices(num_frames: int, num_segments: int, rng: Optional[random.Random] = None) -> list[int]:
    """TSN sampling: ``num_segments`` equal segments of the stored frames, one frame from each.

    With ``rng`` (training) a uniformly random frame of segment ``i``, frames ``[i*n//T, max(i*n//T + 1,
    (i+1)*n//T))``; without (evaluation) its centre ``floor((i + 1/2) * n / T)``, as TSN. A video shorter
    than ``T`` gets its frames repeated about ``T/n`` times each, in time order, in both modes.
    """
    if num_frames < 1 or num_segments < 1:
        raise ValueError(f"need num_frames >= 1 and num_segments >= 1, got {num_frames} and {num_segments}")
    n, t = num_frames, num_segments
    if rng is None:
        return [(2 * i + 1) * n // (2 * t) for i in range(t)]
    return [rng.randrange(i * n // t, max(i * n // t + 1, (i + 1) * n // t)) for i in range(t)]


def sample_crop(width: int, height: int, input_size: int, scales: Sequence[float],
                rng: random.Random) -> tuple[int, int, int, int]:
    """TSN ``GroupMultiScaleCrop`` (max_distort 1, fixed corner/centre offsets): ``(x, y, crop_w, crop_h)``."""
    base = min(width, height)
    sizes = [input_size if abs(int(base * s) - input_size) < 3 else int(base * s) for s in scales]
    pairs = [(w, h) for i, h in enumerate(sizes) for j, w in enumerate(sizes) if abs(i - j) <= 1]
    cw, ch = rng.choice(pairs)
    ws, hs = (width - cw) // 4, (height - ch) // 4
    offsets = [(0, 0), (4, 0), (0, 4), (4, 4), (2, 2), (0, 2), (4, 2), (2, 4), (2, 0), (1, 1), (3, 1), (1, 3), (3, 3)]
    ox, oy = rng.choice(offsets)
    return ox * ws, oy * hs, cw, ch


class ClipTransform:
    """Decode the JPEGs of one clip into a normalized float32 tensor ``[T, 3, S, S]``.

    Training (``rng`` given): one TSN multi-scale crop resized to ``input_size`` and, with ``flip``, a
    horizontal flip with probability 1/2, the same for all frames. Evaluation (``rng`` None): resize the
    short side to ``resize``, centre crop ``input_size``. Normalized with the ImageNet mean and std.
    """

    def __init__(self, input_size: int, *, scales: Sequence[float] = DEFAULT_SCALES, flip: bool = True,
                 resize: int = 256) -> None:
        self.input_size, self.scales, self.flip, self.resize = input_size, tuple(scales), flip, resize
        self._sub = torch.tensor([255.0 * m for m in IMAGENET_MEAN]).view(3, 1, 1)
        self._mul = torch.tensor([1.0 / (255.0 * s) for s in IMAGENET_STD]).view(3, 1, 1)

    def _geometry(self, width: int, height: int, rng: Optional[random.Random]) -> tuple[Callable, bool]:
        s = self.input_size
        if rng is not None:
            x, y, cw, ch = sample_crop(width, height, s, self.scales, rng)
            flip = self.flip and rng.random() < 0.5
            return lambda im: im.resize((s, s), Image.Resampling.BILINEAR, box=(x, y, x + cw, y + ch)), flip
        short = min(width, height)
        rw, rh = (self.resize, int(self.resize * height / width)) if width == short else \
            (int(self.resize * width / height), self.resize)
        left, top = int(round((rw - s) / 2.0)), int(round((rh - s) / 2.0))
        return lambda im: im.resize((rw, rh), Image.Resampling.BILINEAR).crop((left, top, left + s, top + s)), False

    def __call__(self, jpegs: Sequence[bytes], rng: Optional[random.Random] = None,
                 out: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Decode ``jpegs`` into ``out`` (allocated when None) and return it."""
        s = self.input_size
        out = torch.empty((len(jpegs), 3, s, s)) if out is None else out
        size, geometry, flip = None, None, False
        for t, data in enumerate(jpegs):
            if t and data is jpegs[t - 1]:  # a repeated frame (short video): same bytes, same crop
                out[t].copy_(out[t - 1])
                continue
            img = Image.open(io.BytesIO(data))
            if img.mode != "RGB":
                img = img.convert("RGB")
            if size is None:
                size = img.size
                geometry, flip = self._geometry(*size, rng)
            elif img.size != size:
                raise DataError(f"frame {t} is {img.size[0]}x{img.size[1]}, frame 0 is {size[0]}x{size[1]}")
            img = geometry(img)
            if flip:
                img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            out[t].copy_(torch.from_numpy(np.array(img)).permute(2, 0, 1))
        return out.sub_(self._sub).mul_(self._mul)


# ------------------------------------------------------------------------------------------ samples, batches
@dataclass
class Clip:
    """A sample with its frames chosen: only the chosen JPEGs are kept (cheap in the shuffle buffer)."""

    id: str
    where: str  # "shard: key" for messages
    jpegs: list[bytes]
    indices: list[int]
    labels: list[int]
    inside: list[bool]
    timestamps: list[float]


def prepare(sample: dict[str, Any], num_segments: int, num_classes: int, rng: Optional[random.Random]) -> Clip:
    """Check a shard sample's JSON and frames and choose its ``num_segments`` frames (random with ``rng``).

    Raises:
        DataError: Naming the shard and key: no or bad JSON, a label out of range, a missing frame.
    """
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
        clip = Clip(str(meta["id"]), where, [], idx, labels, [bool(inside[i]) for i in idx],
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


def prepared(samples: Iterable[dict[str, Any]], num_segments: int, num_classes: int,
             rng: Optional[random.Random], skip_bad: bool) -> Iterator[Clip]:
    """:func:`prepare` each sample; a bad one raises, or with ``skip_bad`` is logged (WARNING) and skipped."""
    for sample in samples:
        try:
            yield prepare(sample, num_segments, num_classes, rng)
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


def batches(clips: Iterator[Clip], transform: ClipTransform, batch_size: int, num_classes: int,
            rng: Optional[random.Random], skip_bad: bool, max_batches: Optional[int] = None) -> Iterator[dict]:
    """Decode clips straight into batch tensors (the batch dict of ``sofnet.data``); the last may be smaller.

    A clip that fails to decode raises :class:`DataError` naming shard and key, or with ``skip_bad`` is logged
    and the next clip takes its place. Stops after ``max_batches`` batches, or when ``clips`` runs out.
    """
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
