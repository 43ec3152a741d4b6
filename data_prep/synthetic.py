"""A small synthetic action dataset in the real ActivityNet format, for the demo and the tests.

Usage::

    python -m data_prep.synthetic --out data/synthetic --videos 48 --classes 4 [--seed 0] [--shards data/shards]

    from data_prep.synthetic import generate, make_shards
    annotation = generate("data/synthetic", videos=48, classes=4, seed=0)  # data/synthetic/activity_net.synthetic.json
    summary = make_shards(annotation, "data/shards")                         # training-*.tar, validation-*.tar, ...

What is written: ``videos/v_<id>.mp4`` (H.264, yuv420p, encoded with PyAV), ``activity_net.synthetic.json`` in
the official schema (``version``, ``taxonomy``, ``database`` with ``subset``, ``duration``, ``resolution``,
``url``, ``annotations: [{segment, label}]``), with training and validation subsets (stratified, about
``val_fraction`` of each class), and ``classInd.txt`` (``idx,Name``, the ids of the manifest). Ids look like
YouTube ids (11 characters of ``[A-Za-z0-9_-]``, the first one starts with ``-``).

What a video shows: a panning textured background with a grey disc drifting over it, the same kind of scene for
every class (so background frames say nothing about the class), and, only inside its annotated segment(s), a
shape whose colour and form are the class's, moving across the frame. One video in four has two segments. A model
can learn the class from segment frames and a gate can learn that background frames are worth stopping early.
Everything follows from ``seed``: the same call writes the same annotations and the same pictures (the H.264
bytes may differ by encoder noise in the first group of pictures now and then; the decoded frames stay within a few
grey levels).
"""

from __future__ import annotations

import colorsys
import json
import logging
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from data_prep import bench_task
from data_prep.checks import InputError, check_number, check_out_dir
from data_prep.cli import add_prep_args, check_prep_args, main_guard, prep_parser, run_prep
from data_prep.labels import load_activitynet_json
from data_prep.media import write_video
from data_prep.runner import prepare
from data_prep.shards import PrepParams

log = logging.getLogger(__name__)

ANNOTATION = "activity_net.synthetic.json"
TASKS = ("easy", "bench")
SHAPES = ("square", "disc", "ring")
ID_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
COLOUR_NAMES = (  # one per 30 degrees of hue
    "Red", "Orange", "Yellow", "Lime", "Green", "Spring", "Cyan", "Azure", "Blue", "Violet", "Magenta", "Rose"
)


def _classes(classes: int) -> list[tuple[str, np.ndarray, str]]:
    """``(name, RGB colour, shape)`` per class, in id order (sorted names, the ActivityNet convention)."""
    styles = []
    for k in range(classes):
        nearest = round(k / classes * len(COLOUR_NAMES)) % len(COLOUR_NAMES)  # the name of the 30-degree hue bin
        hue = COLOUR_NAMES[nearest] if classes <= len(COLOUR_NAMES) else f"Hue {k:02d}"
        red, green, blue = colorsys.hsv_to_rgb(k / classes, 0.9, 1.0)  # evenly spaced, saturated hues
        shape = SHAPES[k % len(SHAPES)]
        styles.append((f"{hue} {shape}", np.array([red, green, blue]) * 255.0, shape))
    return sorted(styles, key=lambda style: style[0])


def class_names(classes: int) -> list[str]:
    """Class names in id order, e.g. ``Blue disc``, ``Green ring``, ``Red square``, ``Yellow disc``."""
    return [name for name, _, _ in _classes(classes)]


def _texture(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A muted, smooth random texture (sum of upsampled noise octaves), float RGB in 0..255."""
    texture = np.zeros((height, width, 3))
    for cells, weight in ((4, 0.5), (12, 0.3), (40, 0.2)):
        coarse = rng.random((cells, cells * width // height + 1, 3))
        rows = np.linspace(0, coarse.shape[0] - 1, height).round().astype(int)
        cols = np.linspace(0, coarse.shape[1] - 1, width).round().astype(int)
        texture += weight * coarse[rows][:, cols]
    grey = texture.mean(axis=2, keepdims=True)
    return (0.25 * texture + 0.75 * grey) * 150 + 50  # low saturation: colour belongs to the actions


def _mask(shape: str, ys: np.ndarray, xs: np.ndarray, cy: float, cx: float, radius: float) -> np.ndarray:
    if shape == "square":
        return (np.abs(ys - cy) <= radius * 0.85) & (np.abs(xs - cx) <= radius * 0.85)
    distance = np.hypot(ys - cy, xs - cx)
    if shape == "disc":
        return distance <= radius
    return (distance <= radius) & (distance >= radius * 0.55)


def _bounce(position: float, velocity: float, t: float, low: float, high: float) -> float:
    span = high - low
    phase = (position - low + velocity * t) % (2 * span)
    return low + (phase if phase <= span else 2 * span - phase)


def _render(
    rng: np.random.Generator, path: Path, duration: float, segments: list[list[float]], style: tuple[np.ndarray, str],
    size: tuple[int, int], fps: int,
) -> None:
    """Encode one video: background everywhere, the class shape only inside ``segments``."""
    width, height = size
    texture = _texture(rng, height * 2, width * 2)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    pan = rng.uniform(-6, 6, size=2)  # pixels per second
    offset = rng.uniform(0, [height, width])
    disc = (rng.uniform(10, height - 10), rng.uniform(10, width - 10), rng.uniform(-20, 20), rng.uniform(-20, 20))
    colour, shape = style
    radius = height * rng.uniform(0.14, 0.2)
    actor = (rng.uniform(radius, height - radius), rng.uniform(radius, width - radius))
    speed = rng.uniform(-35, 35, size=2)

    def frames() -> Iterator[np.ndarray]:
        for index in range(int(round(duration * fps))):
            t = index / fps
            top = int(offset[0] + pan[0] * t) % height
            left = int(offset[1] + pan[1] * t) % width
            frame = texture[top : top + height, left : left + width].copy()
            cy, cx = _bounce(disc[0], disc[2], t, 8, height - 8), _bounce(disc[1], disc[3], t, 8, width - 8)
            frame[_mask("disc", ys, xs, cy, cx, height * 0.12)] = 128.0
            if any(start <= t <= end for start, end in segments):
                ay = _bounce(actor[0], speed[0], t, radius, height - radius)
                ax = _bounce(actor[1], speed[1], t, radius, width - radius)
                frame[_mask(shape, ys, xs, ay, ax, radius)] = colour
            frame += rng.normal(0, 4, size=frame.shape)
            yield np.clip(frame, 0, 255).astype(np.uint8)

    # a keyframe every 2 s, like many real videos
    write_video(path, frames(), fps=fps, container="mp4", gop=2 * fps, options={"crf": "23", "preset": "veryfast"})


def _easy_segments(rng: np.random.Generator, length: float) -> list[list[float]]:
    """Segments of the easy task: 30-50 % of the video; one video in four has two halves with background between."""
    segment_length = length * rng.uniform(0.3, 0.5)
    margin = min(0.5, length / 8)  # background before, after and between segments
    if rng.random() < 0.25:  # two shorter segments of the same action, background between them
        half = segment_length / 2
        first = float(rng.uniform(margin, length / 2 - half))
        second = float(rng.uniform(length / 2 + margin, length - half - margin))
        segments = [[first, first + half], [second, second + half]]
    else:
        begin = float(rng.uniform(margin, length - segment_length - margin))
        segments = [[begin, begin + segment_length]]
    segments = [[round(a, 3), round(b, 3)] for a, b in segments]
    return segments


def _video_ids(rng: np.random.Generator, count: int) -> list[str]:
    ids: list[str] = []
    while len(ids) < count:
        new = "".join(rng.choice(list(ID_ALPHABET), size=11))
        new = "-" + new[1:] if not ids else new  # ids may start with '-' in the real lists
        if new not in ids:
            ids.append(new)
    return ids


def generate(
    out_dir: str | Path,
    videos: int = 48,
    classes: int = 4,
    seed: int = 0,
    duration: tuple[float, float] = (10.0, 20.0),
    size: tuple[int, int] = (160, 120),
    fps: int = 12,
    val_fraction: float = 0.25,
    task: str = "easy",
) -> Path:
    """Write the synthetic dataset; returns the path of its ActivityNet-format annotation JSON.

    Args:
        out_dir: Folder for ``videos/``, the JSON and ``classInd.txt`` (created if missing).
        videos: Number of videos (classes get equal shares, round robin).
        classes: Number of classes (up to 12 named by colour; more get numbered hues).
        seed: Everything follows from it.
        duration: Range of video durations, seconds.
        size: ``(width, height)`` of the videos, even numbers (H.264 with yuv420p).
        fps: Frame rate of the videos.
        val_fraction: Share of each class in the validation subset (at least one video of each class that has two).
        task: ``easy`` (the class is a colour the stem sees; the tests' small sets) or ``bench`` (the benchmark task of
            :mod:`data_prep.bench_task`: classes need depth, segments vary; at most 8 classes).

    Returns:
        Path of ``activity_net.synthetic.json``.
    """
    out = Path(out_dir)
    (out / "videos").mkdir(parents=True, exist_ok=True)
    if task not in TASKS:
        raise ValueError(f"--task: {task!r} is not one of {', '.join(TASKS)}")
    rng = np.random.default_rng(seed)
    styles = _classes(classes) if task == "easy" else []
    names = [name for name, _, _ in styles] if task == "easy" else bench_task.class_names(classes)
    labels = rng.permutation([i % classes for i in range(videos)])
    validation = set()
    for k in range(classes):
        members = [i for i in range(videos) if labels[i] == k]
        share = max(1, round(len(members) * val_fraction)) if len(members) >= 2 and val_fraction > 0 else 0
        validation.update(members[:share])  # every class with two videos or more is in both subsets
    database = {}
    for i, video_id in enumerate(_video_ids(rng, videos)):
        length = float(rng.uniform(*duration))
        path = out / "videos" / f"v_{video_id}.mp4"
        if task == "bench":
            segments = bench_task.segments_for(rng, length)
            bench_task.render(rng, path, length, segments, names[labels[i]], size, fps)
        else:
            segments = _easy_segments(rng, length)
            _render(rng, path, length, segments, styles[labels[i]][1:], size, fps)
        database[video_id] = {
            "subset": "validation" if i in validation else "training",
            "duration": round(length, 3),
            "resolution": f"{size[0]}x{size[1]}",
            "url": "",
            "annotations": [{"segment": segment, "label": names[labels[i]]} for segment in segments],
        }
        log.debug("video %d/%d: %s %s", i + 1, videos, video_id, names[labels[i]])
    taxonomy = [{"nodeId": 0, "nodeName": "Root", "parentId": None, "parentName": None}]
    taxonomy += [
        {"nodeId": k + 1, "nodeName": name, "parentId": 0, "parentName": "Root"} for k, name in enumerate(names)
    ]
    annotation = out / ANNOTATION
    annotation.write_text(json.dumps({"version": "VERSION 1.3", "taxonomy": taxonomy, "database": database}, indent=1))
    (out / "classInd.txt").write_text("".join(f"{k},{name}\n" for k, name in enumerate(names)))
    return annotation


def make_shards(
    annotation: str | Path,
    out_dir: str | Path,
    params: PrepParams | None = None,
    num_cpus: int | None = None,
    use_ray: bool = True,
    progress: bool = False,
) -> dict:
    """Shard a dataset made by :func:`generate` (training and validation), like ``data_prep.activitynet`` would.

    Args:
        annotation: The JSON :func:`generate` returned; the videos are in ``videos/`` beside it.
        out_dir: Shard folder.
        params: Default: ``PrepParams(short_side=128, shard_size=8)`` (160x120 videos: no point in upscaling;
            several shards per subset, so that ranks and loader workers each get some).
        num_cpus: CPUs of the local Ray (None: all); ignored when Ray is already initialised.
        use_ray: False writes the shards in this process.
        progress: Show the tqdm bar.

    Returns:
        The summary of :func:`data_prep.runner.prepare` (``written``, ``skipped``, ``shards``, ``out``...).
    """
    annotation = Path(annotation)
    source = load_activitynet_json(annotation, subsets=["training", "validation"])
    return prepare(source, annotation.parent / "videos", out_dir, params or PrepParams(short_side=128, shard_size=8),
                   num_cpus=num_cpus, use_ray=use_ray, progress=progress)


def main(argv: list[str] | None = None) -> int:
    """Parse the flags, write the dataset and, with ``--shards``, its shards; returns the exit status.

    Every flag is checked before the first video is written (bad input: one line on stderr, exit status 2).
    """
    parser = prep_parser("python -m data_prep.synthetic", __doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="dataset folder (videos/, the JSON, classInd.txt)")
    parser.add_argument("--videos", type=int, default=48, help="number of videos")
    parser.add_argument("--classes", type=int, default=4, help="number of classes")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    parser.add_argument("--min-duration", type=float, default=10.0, help="shortest video, seconds")
    parser.add_argument("--max-duration", type=float, default=20.0, help="longest video, seconds")
    parser.add_argument("--task", choices=TASKS, default="easy",
                        help="easy: the class is a colour (tests); bench: the benchmark task (data_prep.bench_task)")
    parser.add_argument("--video-fps", type=int, default=12, help="frame rate of the generated videos")
    parser.add_argument("--val-fraction", type=float, default=0.25, help="share of each class in validation")
    add_prep_args(parser, out_flag="--shards", out_required=False)
    parser.set_defaults(short_side=128, shard_size=8)  # small videos; several shards for ranks and workers

    def run() -> int:
        args = parser.parse_args(argv)
        params = check_prep_args(args, videos_flag=None, out_flag="--shards")
        check_number("--videos", args.videos, low=1, high=100_000)
        check_number("--classes", args.classes, low=1, high=1_000)
        check_number("--min-duration", args.min_duration, low=0.0, high=3600.0, low_open=True)
        check_number("--max-duration", args.max_duration, low=args.min_duration, high=3600.0)
        check_number("--video-fps", args.video_fps, low=1, high=120)
        check_number("--val-fraction", args.val_fraction, low=0.0, high=1.0, low_open=True)
        if args.task == "bench" and args.classes > bench_task.MAX_CLASSES:
            raise InputError(f"--classes: the bench task has at most {bench_task.MAX_CLASSES} classes, "
                             f"not {args.classes}")
        check_out_dir(args.out, "--out")
        logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
        annotation = generate(args.out, args.videos, args.classes, args.seed, (args.min_duration, args.max_duration),
                              fps=args.video_fps, val_fraction=args.val_fraction, task=args.task)
        print(f"{args.videos} videos, {args.classes} classes: {annotation}")
        if not args.shards_out:
            return 0
        source = load_activitynet_json(annotation, subsets=["training", "validation"])
        return run_prep(source, str(annotation.parent / "videos"), args, params)

    return main_guard(run)


if __name__ == "__main__":
    sys.exit(main())
