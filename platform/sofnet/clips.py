"""TSN clip sampling and the train/eval transforms of the loader (``sofnet.data``).

    idx = segment_indices(num_frames=120, num_segments=16)            # evaluation: segment centres
    idx = segment_indices(120, 16, rng=random.Random(0))              # training: random frame per segment
    frames = ClipTransform(224)([jpeg_bytes[i] for i in idx], rng)   # [16, 3, 224, 224], normalized
"""

from __future__ import annotations

import io
import random
from typing import Callable, Optional, Sequence

import numpy as np
import torch
from PIL import Image

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
