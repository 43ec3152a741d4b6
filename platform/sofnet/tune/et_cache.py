"""The early-exit cache of a trained model on validation shards, and the metrics of a replayed (rho, T_min) point.

One skipping-path pass without early exit over the validation videos fixes the result of every early-exit
setting (:mod:`sofnet.replay`). This module writes that pass to a directory and scores replayed points with the
same metric code as the full evaluation (``sofnet.evaluation``), so a replayed point's mAP, GFLOPs and frame usage
equal those of ``jobs/evaluate.py --rho R --t-min T``::

    from sofnet.tune.et_cache import ETBundle, write_cache, replay_metrics
    write_cache(model, cfg, "runs/tune/early_exit/et_cache")            # cfg.data: shards, subset, batch size
    evaluate_model(model, cfg, out_dir="ev", et=et, et_cache="ev/et_cache")  # the same, from the evaluation's pass
    bundle = ETBundle.load("runs/tune/early_exit/et_cache")
    replay_metrics(bundle, rho=0.99, t_min=4)["val/et/mAP"]
    action_frames_metrics(bundle)["val/mAP"]        # a dense model (TSN) scored on the annotated action frames only

Directory layout: ``cache.pt`` (:class:`sofnet.replay.ETCache`, tensors only), ``targets.npz`` (multi-hot targets
and single labels, in the cache's video order), ``ids.json`` (video ids, sorted as the evaluation sorts them) and
``meta.json`` (model hyper-parameters, shards, subset, number of videos).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import torch

# The full evaluation's own loader and scoring: the replayed metrics must come from the same code to be comparable.
from sofnet.early_exit import EarlyExit
from sofnet.evaluation import eval_loader, score
from sofnet.models.output import SoFOutput
from sofnet.replay import ETCache, action_frames_only, replay

logger = logging.getLogger(__name__)

CACHE, TARGETS, IDS, META = "cache.pt", "targets.npz", "ids.json", "meta.json"
PREFIX = "val/et/"  # the metric names of a full evaluation with early exit (jobs/evaluate.py, training)


@dataclass
class ETBundle:
    """A cache with what scoring needs beside it: targets, labels and ids of the same videos, in the same order."""

    cache: ETCache
    targets: np.ndarray  # [N, K] multi-hot
    label: np.ndarray  # [N] single label (-1 unlabelled)
    ids: List[str]
    meta: Dict[str, Any]
    inside: Optional[np.ndarray] = None  # [N, T] 1 inside an annotated segment (caches written before: None)

    @classmethod
    def load(cls, directory: str | Path) -> "ETBundle":
        """Read a directory written by :func:`write_cache`.

        Raises:
            FileNotFoundError: a file is missing (the message says how to write the cache).
        """
        d = Path(directory)
        for name in (CACHE, TARGETS, IDS, META):
            if not (d / name).is_file():
                raise FileNotFoundError(f"{d / name}: early-exit cache incomplete (write it with "
                                        f"jobs/evaluate.py --et-cache {d} or jobs/tune_early_exit.py --checkpoint)")
        arrays = np.load(d / TARGETS)
        bundle = cls(cache=ETCache.load(d / CACHE), targets=arrays["targets"], label=arrays["label"],
                     ids=json.loads((d / IDS).read_text()), meta=json.loads((d / META).read_text()),
                     inside=arrays["inside"] if "inside" in arrays.files else None)
        if not len(bundle.cache) == len(bundle.targets) == len(bundle.ids):
            raise ValueError(f"{d}: cache, targets and ids disagree on the number of videos")
        return bundle


class CacheWriter:
    """One skipping-path pass without early exit, batch by batch, written as the cache directory.

    :func:`write_cache` feeds it from a pass of its own; the evaluator feeds it from its own pass without early exit
    (``evaluate(..., on_batch=writer.add)``, :func:`sofnet.evaluation.evaluate_model` with ``et_cache``): the same
    loader, model and ``model.infer`` call, so the same tensors, one pass fewer per evaluated checkpoint.

    Raises:
        ValueError: the model cannot exit early (bidirectional shift): at construction, before any pass.
    """

    def __init__(self, model: torch.nn.Module) -> None:
        if not EarlyExit.applies_to(model):
            raise ValueError("early exit needs a causal model; a bidirectional TSM reads frames it would not compute")
        hp = model.hparams()
        self.hparams = hp
        self.cost_by_decision = model.cost_table(hp["input_size"], hp["input_size"]).by_decision()
        self.outputs: List[SoFOutput] = []
        self.ids: List[str] = []
        self.targets: List[np.ndarray] = []
        self.labels: List[np.ndarray] = []
        self.inside: List[np.ndarray] = []
        self.start = time.perf_counter()

    def add(self, batch: Dict[str, Any], out: SoFOutput) -> None:
        """One batch of the loader and ``model.infer`` of its frames, early exit off."""
        self.outputs.append(out)
        self.ids += list(batch["id"])
        self.targets.append(batch["labels"].numpy())
        self.labels.append(batch["label"].numpy())
        self.inside.append(batch["inside"].numpy())

    def write(self, out_dir: str | Path, *, shards: str, subset: str, source: str = "",
              expected: Optional[int] = None) -> Path:
        """Write the directory (files replaced atomically); ``expected``: the videos the shards hold
        (``sizes.json``), checked.

        Raises:
            ValueError: no video was added, or not ``expected`` of them.
        """
        ids = self.ids
        if not ids:
            raise ValueError(f"{shards} ({subset}): no video to cache")
        if expected is not None and expected != len(ids):
            raise ValueError(f"{shards}: cached {len(ids)} videos, sizes.json says {expected}")
        cache = ETCache.from_outputs(self.outputs, self.cost_by_decision)
        # Sorted by id, as the full evaluation gathers them: the same row order gives the same tie-breaking in mAP.
        order = sorted(range(len(ids)), key=ids.__getitem__)
        index = torch.tensor(order)
        cache = ETCache(decisions=cache.decisions[index], frame_logits=cache.frame_logits[index],
                        logits=cache.logits[index], fallback=cache.fallback[index],
                        cost_by_decision=cache.cost_by_decision)
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        cache.save(out / CACHE)
        with open(out / (TARGETS + ".tmp"), "wb") as f:
            np.savez(f, targets=np.concatenate(self.targets)[order], label=np.concatenate(self.labels)[order],
                     inside=np.concatenate(self.inside)[order])
        (out / (TARGETS + ".tmp")).replace(out / TARGETS)
        _write_json(out / IDS, [ids[i] for i in order])
        seconds = time.perf_counter() - self.start
        _write_json(out / META, {"model": self.hparams, "shards": shards, "subset": subset, "videos": len(ids),
                                 "source": source, "seconds": seconds})
        logger.info("early-exit cache of %d videos written to %s (%.1fs after its pass began)", len(ids), out, seconds)
        return out


@torch.no_grad()
def write_cache(model: torch.nn.Module, cfg: Any, out_dir: str | Path, *, shards: str = "", subset: str = "",
                source: str = "") -> Path:
    """Run the skipping path without early exit over the validation videos and write the cache directory.

    Args:
        model: The trained network (causal: SoF-Net or SoF-Net^TSM); put in eval mode here.
        cfg: Our config; its ``data`` section gives shards, subset, batch size, workers and resize.
        out_dir: The cache directory (created; files replaced atomically).
        shards: Shards instead of ``cfg.data.val_shards``; subset: instead of ``cfg.data.val_subset``.
        source: Where the model came from (recorded in ``meta.json``).

    Returns:
        ``out_dir``.

    Raises:
        ValueError: the model cannot exit early (bidirectional shift), or the shards hold no video.
    """
    writer = CacheWriter(model)
    d = cfg.data
    shards, subset = shards or d.val_shards, subset or d.val_subset
    loader = eval_loader(model, d, shards, subset)  # the full evaluation's loader: same frames, same crop
    model.eval()
    dtype = next(model.parameters()).dtype
    for batch in loader:
        writer.add(batch, model.infer(batch["frames"].to(dtype=dtype)))
    return writer.write(out_dir, shards=shards, subset=subset, source=source, expected=loader.dataset.num_videos)


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    tmp.replace(path)


def replayed(bundle: ETBundle, rho: float, t_min: int, mode: str = "reached") -> SoFOutput:
    """The replayed output of ``(rho, t_min, mode)``, its video score the model's own (``model.video_score``; a cache
    written before that setting: the official mean, all there was)."""
    video_score = bundle.meta.get("model", {}).get("video_score", "passed_mean")
    return replay(bundle.cache, rho, int(t_min), mode, video_score)


def replay_metrics(bundle: ETBundle, rho: float, t_min: int, mode: str = "reached",
                   prefix: str = PREFIX) -> Dict[str, float]:
    """The metrics a full evaluation with early exit ``(rho, t_min, mode)`` reports, from the cache alone.

    Returns:
        ``{prefix + "mAP", "top1", "top5", "gflops_per_video", "gflops_per_frame", "frame_usage",
        "frames_processed", "fallback_rate", "survival/<block>", "stop_rate/...", "exit/..."}``, as
        ``sofnet.evaluation.evaluate`` names them.
    """
    out = replayed(bundle, rho, t_min, mode)
    metrics, _ = score(prefix, out.logits.float().softmax(-1).numpy(), bundle.targets, bundle.label,
                       out.decisions.numpy(), out.gflops.double().numpy(), out.fallback.numpy(),
                       bundle.inside, out.exit_step.numpy() if bundle.inside is not None else None)
    return metrics


def action_frames_metrics(bundle: ETBundle, prefix: str = "val/") -> Dict[str, float]:
    """The metrics of a dense model's cache scored on the annotated action frames only
    (:func:`sofnet.replay.action_frames_only`), by the full evaluation's scoring; ``{}`` for a cache without
    annotations (written before they were cached). No stop rates: the frames left out were chosen, not stopped."""
    if bundle.inside is None:
        return {}
    out = action_frames_only(bundle.cache, torch.as_tensor(bundle.inside))
    metrics, _ = score(prefix, out.logits.float().softmax(-1).numpy(), bundle.targets, bundle.label,
                       out.decisions.numpy(), out.gflops.double().numpy(), out.fallback.numpy())
    return metrics


def load_model(checkpoint: str, tracking_uri: Optional[str] = None) -> torch.nn.Module:
    """The trained network of a run/checkpoint directory (best epoch) or an MLflow model URI
    (``models:/name@alias``)."""
    if checkpoint.startswith(("models:/", "runs:/")):
        import mlflow

        from sofnet.train.pyfunc import load_network

        if tracking_uri:
            mlflow.set_tracking_uri(tracking_uri)
        return load_network(checkpoint)
    from sofnet import checkpoint as ckpt

    return ckpt.load_network(checkpoint)[0]
