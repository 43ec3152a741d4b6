"""The benchmark task of ``data_prep.synthetic`` (``--task bench``): a video set where SoF-Net's gates must earn
their savings.

Usage::

    python -m data_prep.synthetic --task bench --out data/bench/raw --videos 768 --classes 8 --seed 0 \\
        --shards data/bench/shards --no-ray

    from data_prep.bench_task import class_names, video_plan, render
    names = class_names(8)           # 'Disc, knob above', 'Disc, knob below', ... 'Square, knob right'

What a video shows, and why (issue "results that hold"):

- **Background** (everywhere outside the annotated segments): a panning texture in the same colours as the actors,
  two moving distractors (a disc and a square, solid, in palette colours: the actors' colours and shapes are no cue),
  a slow brightness drift and sensor noise. Nothing in it says anything about the class; what tells it apart from an
  action frame is local structure (the actor's high-contrast stripes), which a shallow block sees.
- **Action** (inside the segments): an actor made of a striped body (a square or a disc, stripes of random colour
  and orientation) and a solid knob of another colour attached on one side. The class is the body's form and the
  side of the knob (8 classes: 2 forms x 4 sides): no colour, orientation or texture statistic names it; it takes
  the spatial arrangement of two parts, i.e. receptive fields of the deeper blocks. Up vs down and left vs right of
  one form are the hard pairs (mirror images); square vs disc differ only in the body's outline.
- **Segments** vary in position and length (15-60 % of the video, one video in four has two), so some actions start
  late or are short: early exit that trusts the first frames costs accuracy and Table C shows a trade-off.

Costs: each frame's rendering (numpy; its largest part the sensor noise's normal draws, fixed by the random stream)
runs beside x264's encoding of the one before, in two threads (:func:`data_prep.media.write_video`), and each shape's
mask is computed in its box only (:func:`_box`). ``make bench-data`` (768 videos of 6-12 s at 8 fps, 160x120, and
their shards) took 162-170 s on 2 cores (AMD EPYC, 2026-12-07), 185-207 s with the threads alone, 275 s with neither.
"""

from __future__ import annotations

import colorsys
import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from data_prep.media import write_video

FORMS = ("Disc", "Square")
SIDES = ("above", "below", "left", "right")  # where the knob sits on the body
_SIDE_VECTORS = {"above": (-1.0, 0.0), "below": (1.0, 0.0), "left": (0.0, -1.0), "right": (0.0, 1.0)}
# Six saturated hues shared by actors, distractors and the background texture (no colour names a class).
PALETTE = np.array([colorsys.hsv_to_rgb(h / 6, 0.85, 0.95) for h in range(6)]) * 255.0
MAX_CLASSES = len(FORMS) * len(SIDES)
BODY = PALETTE[1]  # every actor's stripes are this hue and black: the colour is in every class and in distractors
KNOB = 235.0  # the knob is near-white in every video (the distractors never are): its side is the cue, not its look


def class_names(classes: int) -> list[str]:
    """The first ``classes`` class names in id order (sorted, the ActivityNet convention); at most 8."""
    if not 1 <= classes <= MAX_CLASSES:
        raise ValueError(f"--classes: the bench task has 1 to {MAX_CLASSES} classes, not {classes}")
    names = [f"{form}, knob {side}" for form in FORMS for side in SIDES]
    return sorted(names[:classes])


def _style(name: str) -> tuple[str, str]:
    form, rest = name.split(", knob ")
    return form, rest


def segments_for(rng: np.random.Generator, length: float) -> list[list[float]]:
    """Annotated segments of one video: 15-60 % of it, anywhere; one video in four has two shorter ones."""
    share = rng.uniform(0.15, 0.6)
    margin = min(0.5, length / 10)
    if rng.random() < 0.25:
        half = length * share / 2
        first = float(rng.uniform(margin, max(margin, length / 2 - half)))
        second = float(rng.uniform(length / 2 + margin, max(length / 2 + margin, length - half - margin)))
        spans = [[first, first + half], [second, min(length - margin, second + half)]]
    else:
        span = length * share
        begin = float(rng.uniform(margin, length - span - margin))
        spans = [[begin, begin + span]]
    return [[round(a, 3), round(b, 3)] for a, b in spans]


def _texture(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A smooth random texture tinted with two palette colours, float RGB in 0..255."""
    field = np.zeros((height, width))
    for cells, weight in ((3, 0.5), (8, 0.3), (24, 0.2)):
        coarse = rng.random((cells, cells * width // height + 1))
        rows = np.linspace(0, coarse.shape[0] - 1, height).round().astype(int)
        cols = np.linspace(0, coarse.shape[1] - 1, width).round().astype(int)
        field += weight * coarse[rows][:, cols]
    a, b = PALETTE[rng.choice(len(PALETTE), size=2, replace=False)]
    mix = field[..., None]
    return 0.4 * (mix * a + (1 - mix) * b) + 0.6 * 110.0  # muted, but the actors' hues


def _bounce(position: float, velocity: float, t: float, low: float, high: float) -> float:
    span = max(high - low, 1e-6)
    phase = (position - low + velocity * t) % (2 * span)
    return low + (phase if phase <= span else 2 * span - phase)


def _box(cy: float, cx: float, extent: float, height: int, width: int) -> tuple[slice, slice]:
    """The rows and columns a shape of half-size ``extent`` centred at (cy, cx) can cover, a pixel to spare: a mask
    computed there gives the same pixels as on the whole frame, over the shape's square instead of every pixel
    (rendering, not x264, set the pace of the benchmark task's generation; ``make bench-data`` ~13 % faster)."""
    return (slice(max(0, math.floor(cy - extent) - 1), min(height, math.ceil(cy + extent) + 2)),
            slice(max(0, math.floor(cx - extent) - 1), min(width, math.ceil(cx + extent) + 2)))


def _shape(form: str, ys: np.ndarray, xs: np.ndarray, cy: float, cx: float, radius: float) -> np.ndarray:
    if form == "Square":
        return (np.abs(ys - cy) <= radius * 0.88) & (np.abs(xs - cx) <= radius * 0.88)
    return np.hypot(ys - cy, xs - cx) <= radius


def render(rng: np.random.Generator, path: Path, duration: float, segments: list[list[float]], name: str,
           size: tuple[int, int], fps: int) -> None:
    """Encode one video of class ``name`` (H.264): background everywhere, the actor only inside ``segments``."""
    width, height = size
    form, side = _style(name)
    texture = _texture(rng, height * 2, width * 2)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    pan = rng.uniform(-8, 8, size=2)
    offset = rng.uniform(0, [height, width])
    drift = (rng.uniform(-25, 25), rng.uniform(0.05, 0.3))  # brightness amplitude and frequency (Hz)
    distractors = []
    for form_d in FORMS:  # one solid disc and one solid square, in palette colours, wandering
        r = height * rng.uniform(0.08, 0.13)
        distractors.append((form_d, r, PALETTE[rng.integers(len(PALETTE))], rng.uniform(r, height - r),
                            rng.uniform(r, width - r), rng.uniform(-25, 25), rng.uniform(-25, 25)))
    radius = height * rng.uniform(0.17, 0.2)
    body_colour = BODY
    stripes = np.sin((ys + xs) * 2 * np.pi / 12) > 0  # diagonal, 8.5 px period: a texture the stem sees
    reach = radius * 2.1  # the actor's extent from its body's centre, knob included
    actor = (rng.uniform(reach, height - reach), rng.uniform(reach, width - reach))
    speed = rng.uniform(-30, 30, size=2)
    dy, dx = _SIDE_VECTORS[side]

    def frames() -> Iterator[np.ndarray]:
        for index in range(int(round(duration * fps))):
            t = index / fps
            top = int(offset[0] + pan[0] * t) % height
            left = int(offset[1] + pan[1] * t) % width
            frame = texture[top: top + height, left: left + width].copy()
            frame += drift[0] * np.sin(2 * np.pi * drift[1] * t)
            for form_d, r, colour, y0, x0, vy, vx in distractors:
                cy, cx = _bounce(y0, vy, t, r, height - r), _bounce(x0, vx, t, r, width - r)
                box = _box(cy, cx, r, height, width)
                frame[box][_shape(form_d, ys[box], xs[box], cy, cx, r)] = colour  # frame[box]: a view
            if any(start <= t <= end for start, end in segments):
                cy = _bounce(actor[0], speed[0], t, reach, height - reach)
                cx = _bounce(actor[1], speed[1], t, reach, width - reach)
                box = _box(cy, cx, radius, height, width)
                body, patch, striped = _shape(form, ys[box], xs[box], cy, cx, radius), frame[box], stripes[box]
                patch[body & striped] = body_colour
                patch[body & ~striped] = 25.0
                ky, kx = cy + dy * radius * 1.45, cx + dx * radius * 1.45
                box = _box(ky, kx, radius * 0.6, height, width)
                frame[box][np.hypot(ys[box] - ky, xs[box] - kx) <= radius * 0.6] = KNOB
            frame += rng.normal(0, 5, size=frame.shape)
            yield np.clip(frame, 0, 255).astype(np.uint8)

    write_video(path, frames(), fps=fps, container="mp4", gop=2 * fps, options={"crf": "23", "preset": "veryfast"})
