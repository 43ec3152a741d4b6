"""Frames to JPEGs at target times: the part of :mod:`data_prep.decode` that sees decoded frames, not packets.

Usage (what ``decode.sample_frames`` does for each decoded frame, in presentation order)::

    sampler = Sampler(fps=1.0, timestamps=None, short_side=256, quality=90)
    for rel, frame in frames:        # seconds from the stream start, av.VideoFrame
        sampler.add(rel, frame)
    sampler.finish(end)              # end of the last frame
    sampler.jpegs, sampler.timestamps

A target is filled with the frame on screen at its time: the last frame that starts at or before it (the first
frame for a target before it). The same frame filling several targets is encoded once.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import av


def target_size(width: int, height: int, short_side: int) -> tuple[int, int]:
    """Size with the short side scaled to ``short_side`` (aspect kept; 0 keeps the size).

    Args:
        width: Source width in pixels.
        height: Source height in pixels.
        short_side: Wanted length of the shorter side, or 0 for no resize.

    Returns:
        ``(width, height)`` of the output, each at least 1.
    """
    if short_side <= 0 or min(width, height) == short_side:
        return width, height
    scale = short_side / min(width, height)
    if width <= height:
        return short_side, max(1, round(height * scale))
    return max(1, round(width * scale)), short_side


class Sampler:
    """Turns decoded frames into JPEGs at the target times (one pass over the stream)."""

    def __init__(self, fps: float, timestamps: Sequence[float] | None, short_side: int, quality: int) -> None:
        self.fps = fps
        self.fixed = sorted(timestamps) if timestamps is not None else None
        self.short_side = short_side
        self.quality = quality
        self.k = 0
        self.prev: tuple[float, av.VideoFrame] | None = None
        self.size: tuple[int, int] | None = None
        self.source_size: tuple[int, int] = (0, 0)
        self.jpegs: list[bytes] = []
        self.timestamps: list[float] = []
        self._last_jpeg: tuple[av.VideoFrame, bytes] | None = None  # holds the frame, so identity is safe

    def target(self) -> float | None:
        """The next time to fill, or None when an explicit list is exhausted."""
        if self.fixed is not None:
            return self.fixed[self.k] if self.k < len(self.fixed) else None
        return (self.k + 0.5) / self.fps

    def _emit(self, rel: float, frame: av.VideoFrame) -> None:
        if self._last_jpeg is not None and self._last_jpeg[0] is frame:
            data = self._last_jpeg[1]  # the same frame fills several targets: encode it once
        else:
            if self.size is None:
                self.source_size = (frame.width, frame.height)
                self.size = target_size(frame.width, frame.height, self.short_side)
            width, height = self.size
            shrink = width * height < frame.width * frame.height
            image = frame.to_image(width=width, height=height, interpolation="AREA" if shrink else "BILINEAR")
            buffer = io.BytesIO()
            image.save(buffer, format="JPEG", quality=self.quality)
            data = buffer.getvalue()
            self._last_jpeg = (frame, data)
        self.jpegs.append(data)
        self.timestamps.append(round(rel, 4))
        self.k += 1

    def add(self, rel: float, frame: av.VideoFrame) -> None:
        """Take the next decoded frame (presentation order), at ``rel`` seconds from the stream start."""
        while (t := self.target()) is not None and t < rel:
            # The previous frame is on screen at t; a target before the first frame gets the first frame.
            self._emit(self.prev[0] if self.prev else rel, self.prev[1] if self.prev else frame)
        self.prev = (rel, frame)

    def finish(self, end: float) -> None:
        """Fill the targets up to the end of the last frame."""
        while self.prev is not None and (t := self.target()) is not None and t < end:
            self._emit(self.prev[0], self.prev[1])
