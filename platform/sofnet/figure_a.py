"""Figure A for chosen videos: the frames the evaluation saw, beside where each one stopped.

From a trained checkpoint (a run directory gives its final stage's best epoch), for ids you name or for the most
confident correct and failed videos::

    python -m sofnet.figure_a --config jobs/configs/demo.yaml --checkpoint runs/demo --ids=v_a,v_b --out figs/
    python -m sofnet.figure_a --config jobs/configs/demo.yaml --checkpoint runs/demo --correct 3 --failed 3 --out figs/
    python -m sofnet.figure_a ... --no-et             # the decisions without early exit

writes ``figs/correct/<id>.png``, ``figs/failed/<id>.png`` (``figs/chosen/<id>.png`` for ``--ids``, ``unlabelled``
for a video without a label). Exit status 0, or 2 with one line on bad input (config, checkpoint, shards, an id
that is not in the shards). The same pieces, in a program (training logs them to MLflow this way)::

    from sofnet.figure_a import choose_videos, eval_frames, figures
    picks = choose_videos(result, correct=2, failed=2)          # {"correct": [ids], "failed": [ids]}
    frames = eval_frames(shards, ids, subset="validation", num_segments=16, input_size=224, resize=256)
    for rel, fig in figures(result, picks, class_names, frames):   # rel = "correct/<id>.png"
        fig.savefig(out / rel)

A video is correct when its top-1 class is its primary label (as ``val/top1``); videos are ranked by the
probability of their top-1 class, highest first (ties by id). When the result has the early-exit columns, the
early-exit scores and decisions are used (what the deployed model does), else those without early exit.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
from matplotlib.figure import Figure

from sofnet.clips import IMAGENET_MEAN, IMAGENET_STD, Clip, ClipTransform, batches, prepared
from sofnet.shards import resolve_shards, shard_samples
from sofnet.viz import decision_map

logger = logging.getLogger(__name__)


class FigureError(ValueError):
    """Bad input for a figure (an id not in the shards, a bad count), as one line."""


def variant(result: Any) -> str:
    """The array prefix the figures show: ``et_`` when the result has early-exit columns, else ``""``."""
    return "et_" if "et_decisions" in result.arrays else ""


def _verdicts(result: Any, prefix: str) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per video: predicted class, its probability, and 1 correct / 0 failed / -1 unlabelled."""
    scores = np.asarray(result.arrays[prefix + "scores"])
    label = np.asarray(result.arrays["label"])
    pred = scores.argmax(axis=1)
    conf = scores[np.arange(len(pred)), pred]
    return pred, conf, np.where(label < 0, -1, (pred == label).astype(np.int64))


def choose_videos(result: Any, correct: int, failed: int, prefix: Optional[str] = None) -> Dict[str, List[str]]:
    """The ``correct`` most confident correctly classified videos and the ``failed`` most confident failures.

    Args:
        result: A :class:`sofnet.evaluation.EvalResult`.
        correct, failed: How many of each (fewer when the evaluation has fewer).
        prefix: ``""`` or ``"et_"`` (which scores); default :func:`variant`.

    Returns:
        ``{"correct": [ids], "failed": [ids]}``, each by descending top-1 probability, ties by id.
    """
    if correct < 0 or failed < 0:
        raise FigureError(f"the numbers of correct and failed videos must be >= 0, got {correct} and {failed}")
    _, conf, verdict = _verdicts(result, variant(result) if prefix is None else prefix)
    ids = list(result.ids)
    out: Dict[str, List[str]] = {}
    for name, flag, n in (("correct", 1, correct), ("failed", 0, failed)):
        rows = sorted(np.flatnonzero(verdict == flag), key=lambda i: (-float(conf[i]), ids[i]))
        out[name] = [ids[i] for i in rows[:n]]
        if len(out[name]) < n:
            logger.info("decision maps: %d %s videos asked for, the evaluation has %d", n, name, len(rows))
    return out


def to_uint8(frames: torch.Tensor) -> np.ndarray:
    """Undo the loader's ImageNet normalization: ``[T, 3, H, W]`` float -> ``[T, H, W, 3]`` uint8 (the pixels)."""
    mean = torch.tensor([255.0 * m for m in IMAGENET_MEAN], dtype=torch.float64).view(3, 1, 1)
    std = torch.tensor([255.0 * s for s in IMAGENET_STD], dtype=torch.float64).view(3, 1, 1)
    pixels = (frames.detach().cpu().double() * std + mean).round().clamp(0, 255)
    return pixels.to(torch.uint8).permute(0, 2, 3, 1).numpy()


def find_clips(shards: Any, ids: Iterable[str], *, subset: str, num_segments: int,
               num_classes: int = 1 << 30) -> List[Clip]:
    """The eval loader's clips (segment-centre frames chosen, not decoded) of ``ids``, in shard order.

    Reads the shards in order (``sofnet.shards``) and stops once every id was found: one pass at most.

    Args:
        shards: A shard directory (with ``subset``), brace pattern or list, as ``make_eval_loader`` takes.
        ids: Video ids; num_segments: ``T``; num_classes: labels are checked against it, as the loader does.

    Raises:
        FigureError: Ids not in the shards (the first named). FileNotFoundError / sofnet.clips.DataError: bad shards.
    """
    wanted = set(ids)
    found: Dict[str, Clip] = {}
    urls = resolve_shards(shards, subset)

    def samples() -> Iterator[dict]:
        for url in urls:
            yield from shard_samples(url, None, strict=True)

    if wanted:
        for clip in prepared(samples(), num_segments, num_classes, None, skip_bad=False):
            if clip.id in wanted:
                found[clip.id] = clip
                if len(found) == len(wanted):
                    break
    missing = sorted(wanted - set(found))
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise FigureError(f"video {missing[0]!r}{more} is not in the {len(urls)} {subset} shards from {urls[0]}")
    return list(found.values())


def eval_frames(shards: Any, ids: Iterable[str], *, subset: str, num_segments: int, input_size: int, resize: int,
                num_classes: int = 1 << 30) -> Dict[str, np.ndarray]:
    """The frames the evaluation loader feeds the model for ``ids`` (:func:`find_clips`, then the loader's resize
    + centre crop), as pixels: ``{id: [T, S, S, 3] uint8}``. Raises as :func:`find_clips`."""
    transform = ClipTransform(input_size, resize=resize)
    clips = find_clips(shards, ids, subset=subset, num_segments=num_segments, num_classes=num_classes)
    return {c.id: to_uint8(transform(c.jpegs)) for c in clips}


def figures(result: Any, picks: Mapping[str, Sequence[str]], class_names: Sequence[str],
            frames: Optional[Mapping[str, np.ndarray]] = None, note: str = "") -> Iterator[Tuple[str, Figure]]:
    """One decision map per picked video, with its frames when ``frames`` has them.

    Args:
        result: The evaluation; picks: ``{group: [ids]}`` (e.g. :func:`choose_videos`'s); class_names: ``K`` names.
        frames: ``{id: [T, H, W, 3] uint8}`` (:func:`eval_frames`); note: added to each title, e.g. ``epoch 4``.

    Yields:
        ``("<group>/<id>.png", figure)``; the caller saves or logs the figure.

    Raises:
        FigureError: A picked id that the result does not hold.
    """
    prefix = variant(result)
    a = result.arrays
    row = {vid: i for i, vid in enumerate(result.ids)}
    pred, conf, _ = _verdicts(result, prefix)
    for group, ids in picks.items():
        for vid in ids:
            if vid not in row:
                raise FigureError(f"video {vid!r} is not in the evaluation ({len(row)} videos)")
            i = row[vid]
            label = int(a["label"][i])
            fallback = bool(a[prefix + "fallback"][i]) if prefix + "fallback" in a else False
            extra = ", ".join(x for x in (note, "early exit" if prefix else "", f"p={conf[i]:.2f}",
                                          "fallback: aux head" if fallback else "") if x)
            fig = decision_map(a[prefix + "decisions"][i], exit_step=int(a[prefix + "exit_step"][i]),
                               inside=a["inside"][i], timestamps=a["timestamps"][i],
                               thumbnails=None if frames is None or vid not in frames else list(frames[vid]),
                               title=f"{vid} ({extra})",
                               true_label=class_names[label] if 0 <= label < len(class_names) else None,
                               pred_label=class_names[pred[i]] if pred[i] < len(class_names) else str(pred[i]))
            yield f"{group}/{vid}.png", fig


def _groups(result: Any, ids: Sequence[str]) -> Dict[str, List[str]]:
    """``ids`` grouped by their verdict: ``correct``, ``failed`` or ``unlabelled``."""
    _, _, verdict = _verdicts(result, variant(result))
    row = {vid: i for i, vid in enumerate(result.ids)}
    groups: Dict[str, List[str]] = {}
    for v in ids:
        groups.setdefault({1: "correct", 0: "failed", -1: "unlabelled"}[int(verdict[row[v]])], []).append(v)
    return groups


def run(args: argparse.Namespace, cfg: Any) -> List[Path]:
    """Load the checkpoint, evaluate, draw the videos into ``args.out``; returns the files written.

    With ``args.ids`` only those videos are read (one pass over the shards, stopping when all are found) and
    evaluated; else every video is evaluated and the most confident correct/failed ones are drawn.
    """
    from sofnet.checkpoint import load_network
    from sofnet.early_exit import EarlyExit
    from sofnet.evaluation import class_names, eval_loader, evaluate, resolve_device
    from sofnet.preflight import check_shards

    shards, subset = args.shards or cfg.data.val_shards, args.subset or cfg.data.val_subset
    model, _ = load_network(args.checkpoint, which=args.which)
    hp = model.hparams()
    et = None if args.no_et else EarlyExit.from_config(cfg.early_exit, num_segments=hp["num_segments"])
    check_shards(shards, subset, key="--shards" if args.shards else "data.val_shards", num_classes=hp["num_classes"])
    device = resolve_device(args.device)
    model = model.to(device)
    loader = eval_loader(model, cfg.data, shards, subset)  # its transform and batch size, also for --ids
    transform, k = loader.dataset.transform, hp["num_classes"]

    def evaluate_on(videos: Iterable[dict], n: Optional[int]) -> Any:
        return evaluate(model, videos, device=device, dtype=next(model.parameters()).dtype, num_classes=k, et=et,
                        expected=n)

    if args.ids:
        ids = list(dict.fromkeys(v.strip() for v in args.ids.split(",") if v.strip()))
        clips = find_clips(shards, ids, subset=subset, num_segments=hp["num_segments"], num_classes=k)
        videos = list(batches(iter(clips), transform, loader.dataset.batch_size, k, None, skip_bad=False))
        result = evaluate_on(videos, len(clips))
        frames = {vid: to_uint8(f) for b in videos for vid, f in zip(b["id"], b["frames"])}  # what it was fed
        picks = _groups(result, ids)
    else:
        result = evaluate_on(loader, loader.dataset.num_videos)
        picks = choose_videos(result, args.correct, args.failed)
        frames = eval_frames(shards, [v for group in picks.values() for v in group], subset=subset,
                             num_segments=hp["num_segments"], input_size=hp["input_size"], resize=transform.resize,
                             num_classes=k)
    names = class_names(shards, k)
    written = []
    for rel, fig in figures(result, picks, names, frames, note=Path(args.checkpoint).name):
        path = Path(args.out) / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=args.dpi)
        written.append(path)
    return written


def main(argv: Optional[Sequence[str]] = None) -> int:
    """The command line (see the module docstring); returns the exit status."""
    p = argparse.ArgumentParser(prog="python -m sofnet.figure_a", description=__doc__.split("\n")[0])
    p.add_argument("--config", required=True, help="experiment YAML (data section: shards, batch size, workers)")
    p.add_argument("--checkpoint", required=True, help="a run directory (its best epoch) or one checkpoint directory")
    p.add_argument("--which", choices=["best", "last"], default="best", help="for a run directory: best or last epoch")
    p.add_argument("--out", required=True, help="output directory: <out>/<correct|failed|...>/<id>.png")
    p.add_argument("--ids", default="", help="comma-separated video ids; write --ids=-abc,... for an id starting "
                   "with '-' (default: --correct/--failed)")
    p.add_argument("--correct", type=int, default=None, help="most confident correct videos (2; not with --ids)")
    p.add_argument("--failed", type=int, default=None, help="most confident failed videos (2; not with --ids)")
    p.add_argument("--shards", default="", help="shards to evaluate (default: data.val_shards)")
    p.add_argument("--subset", default="", help="subset of a shard directory (default: data.val_subset)")
    p.add_argument("--no-et", action="store_true", help="decisions without early exit (default: early_exit.*)")
    p.add_argument("--device", default="auto", help="auto (cuda when present), cpu, cuda, ...")
    p.add_argument("--dpi", type=int, default=110, help="PNG resolution")
    from sofnet.clips import DataError
    from sofnet.session import run_command

    return run_command(p, argv, _main, errors=(DataError, FigureError, FileNotFoundError))


def _main(args: argparse.Namespace, cfg: Any) -> int:
    if args.ids and (args.correct is not None or args.failed is not None):
        raise FigureError("give either --ids or --correct/--failed, not both")
    args.correct = 2 if args.correct is None else args.correct
    args.failed = 2 if args.failed is None else args.failed
    for path in run(args, cfg):
        sys.stdout.write(f"{path}\n")  # the command's result: one written file per line
    return 0


if __name__ == "__main__":
    sys.exit(main())
