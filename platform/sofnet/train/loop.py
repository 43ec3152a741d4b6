"""One training epoch and one evaluation pass, with explicit arguments (no Ray, no MLflow here).

Usage (inside a Ray Train worker, or any process with a DeepSpeed engine)::

    from sofnet.train.loop import evaluate, train_one_epoch
    stats = train_one_epoch(engine, loader, loss_fn=lambda out, y: classification_loss(out, y), steps=steps,
                            epoch=0, epochs=15, stage="stage1", device=device, dtype=torch.float32, log_every=20)
    result = evaluate(engine.module, val_loader, device=device, dtype=torch.float32, num_classes=200,
                      et=(0.999, 4, "reached"), expected=val_loader.dataset.num_videos)
    result.metrics["val/mAP"], result.metrics["val/et/gflops_per_video"]

Evaluation runs the real skipping path (``model.infer``) twice per batch: without early exit and, where the
model is causal, with it; the results of all ranks are gathered (every video exactly once) before scoring.
"""

from __future__ import annotations

import datetime
import logging
import time
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import torch

from sofnet.data import gather_eval
from sofnet.flops import summarize
from sofnet.metrics import activitynet_map, topk_accuracy

logger = logging.getLogger(__name__)

LossFn = Callable[[Any, torch.Tensor], Dict[str, torch.Tensor]]
BLOCK_NAMES = ("block0", "block1", "block2", "block3", "block4", "classifier")


def _dist_mean(values: Dict[str, float], device: torch.device) -> Dict[str, float]:
    """Average a dict of floats over the ranks (identity without a process group)."""
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1) or not values:
        return values
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    t /= dist.get_world_size()
    return dict(zip(keys, t.tolist()))


def _eta(seconds: float) -> str:
    return str(datetime.timedelta(seconds=int(max(0.0, seconds))))


def train_one_epoch(engine: Any, loader: Any, *, loss_fn: LossFn, steps: int, epoch: int, epochs: int,
                    stage: str, device: torch.device, dtype: torch.dtype = torch.float32, log_every: int = 20,
                    is_logger: bool = True, world_size: int = 1) -> Dict[str, float]:
    """Train one epoch with a DeepSpeed engine (``engine(x)``, ``engine.backward``, ``engine.step``).

    Args:
        engine: A DeepSpeed engine (or anything with the same three calls and ``.optimizer``).
        loader: Training batches (dicts with ``frames`` [B, T, 3, H, W] and ``label`` [B]).
        loss_fn: ``(output, label) -> {"loss": ..., <part>: ...}``.
        steps: Batches in this epoch (the loader's exact count; used for the ETA).
        epoch: 0-based epoch of this stage; epochs: the stage's epoch count (for the log line).
        stage: Stage name for the log line.
        device: Where batches go; dtype: the engine's compute dtype (inputs are cast to it).
        log_every: Steps between progress lines.
        is_logger: Whether this process writes progress lines (rank 0 only).
        world_size: Number of ranks (for the global samples/s).

    Returns:
        Means over the epoch (averaged over ranks) of every loss part as ``train/<name>``, plus
        ``train/lr``, ``train/samples_per_s`` (all ranks), ``train/data_time`` and ``train/step_time``.
    """
    sums: Dict[str, float] = {}
    n = samples = 0
    data_time = step_time = 0.0
    start = last = time.perf_counter()
    lr = float(engine.optimizer.param_groups[0]["lr"] / engine.optimizer.param_groups[0].get("lr_mult", 1.0))
    for i, batch in enumerate(loader):
        now = time.perf_counter()
        data_time += now - last
        frames = batch["frames"].to(device=device, dtype=dtype, non_blocking=True)
        label = batch["label"].to(device=device, non_blocking=True)
        out = engine(frames)
        terms = loss_fn(out, label)
        engine.backward(terms["loss"])
        engine.step()
        for k, v in terms.items():
            sums[k] = sums.get(k, 0.0) + float(v.detach())
        n += 1
        samples += frames.shape[0]
        last = time.perf_counter()
        step_time += last - now
        if is_logger and (i % log_every == 0 or i + 1 == steps):
            elapsed = last - start
            parts = "  ".join(f"{k}: {float(v.detach()):.4f} ({sums[k] / n:.4f})" for k, v in terms.items())
            logger.info("%s epoch: [%d/%d]  [%*d/%d]  eta: %s  lr: %.6f  %s  samples/s: %.1f  data: %.3f  time: %.3f",
                        stage, epoch + 1, epochs, len(str(steps)), i + 1, steps,
                        _eta(elapsed / (i + 1) * (steps - i - 1)), lr, parts,
                        samples * world_size / max(elapsed, 1e-9), data_time / n, step_time / n)
    elapsed = time.perf_counter() - start
    stats = {f"train/{k}": v / max(n, 1) for k, v in sums.items()}
    stats = _dist_mean(stats, device)
    stats.update({"train/lr": lr, "train/samples_per_s": samples * world_size / max(elapsed, 1e-9),
                  "train/data_time": data_time / max(n, 1), "train/step_time": step_time / max(n, 1)})
    return stats


@dataclass
class EvalResult:
    """Gathered evaluation results (identical on every rank).

    Attributes:
        metrics: ``val/...`` (no early exit) and ``val/et/...`` (with early exit) scalars.
        per_class_ap: ``{"": [K] AP without ET, "et": [K] with ET}``.
        ids: Video ids (sorted); arrays: per-video arrays keyed by name, without (``""``) and with ET (``et_``):
            ``scores``, ``decisions``, ``exit_step``, ``gflops``; plus ``targets``, ``label``, ``inside``,
            ``timestamps``.
    """

    metrics: Dict[str, float]
    per_class_ap: Dict[str, List[float]]
    ids: List[str]
    arrays: Dict[str, np.ndarray] = field(default_factory=dict)


def _variant_metrics(prefix: str, scores: np.ndarray, targets: np.ndarray, label: np.ndarray,
                     decisions: np.ndarray, gflops: np.ndarray, fallback: np.ndarray) -> Tuple[Dict[str, float], list]:
    k = scores.shape[1]
    m: Dict[str, float] = {}
    ap = activitynet_map(scores, targets)
    m[f"{prefix}mAP"] = float(ap.map)
    labelled = label >= 0
    if labelled.any():
        top = topk_accuracy(scores[labelled], label[labelled], ks=(1, min(5, k)))  # top-5 is top-K when K < 5
        m[f"{prefix}top1"], m[f"{prefix}top5"] = top["top1"], top[f"top{min(5, k)}"]
    s = summarize([SimpleNamespace(gflops=torch.from_numpy(gflops), decisions=torch.from_numpy(decisions),
                                   fallback=torch.from_numpy(fallback))])
    for key in ("gflops_per_video", "gflops_per_frame", "frame_usage", "frames_processed", "fallback_rate"):
        m[f"{prefix}{key}"] = s[key]
    for name, v in zip(BLOCK_NAMES, s["survival"]):
        m[f"{prefix}survival/{name}"] = v
    return m, [float(x) for x in np.asarray(ap.per_class, dtype=float)]


@torch.no_grad()
def evaluate(model: torch.nn.Module, loader: Any, *, device: torch.device, dtype: torch.dtype = torch.float32,
             num_classes: int, et: Optional[Tuple[float, int, str]] = None, expected: Optional[int] = None,
             log_every: int = 50, is_logger: bool = True) -> EvalResult:
    """Evaluate with the real skipping path (``model.infer``) and gather all ranks' videos.

    Args:
        model: The bare network (``engine.module``); put in eval mode here and back in train mode after.
        loader: This rank's evaluation loader (every video once over all ranks).
        device: Device of the model; dtype: its parameter dtype (inputs are cast to it).
        num_classes: ``K``.
        et: ``(rho, t_min, mode)`` to also evaluate with early exit; None or a non-causal model (bidirectional
            TSM) evaluates without it only.
        expected: Total number of videos (``loader.dataset.num_videos``), checked after gathering.
        log_every: Batches between progress lines; is_logger: whether this process logs.

    Returns:
        An :class:`EvalResult`, the same on every rank.
    """
    was_training = model.training
    model.eval()
    use_et = et is not None and getattr(model, "shift", None) != "bidirectional"
    cols: Dict[str, List[Any]] = {}
    ids: List[str] = []
    start = time.perf_counter()
    try:
        for i, batch in enumerate(loader):
            frames = batch["frames"].to(device=device, dtype=dtype)
            variants = [("", model.infer(frames))]
            if use_et:
                rho, t_min, mode = et
                variants.append(("et_", model.infer(frames, rho=rho, t_min=t_min, mode=mode)))
            for prefix, out in variants:
                for name, v in (("scores", out.logits.float().softmax(-1)), ("decisions", out.decisions),
                                ("exit_step", out.exit_step), ("gflops", out.gflops.double()),
                                ("fallback", out.fallback)):
                    cols.setdefault(prefix + name, []).append(v.cpu())
            for name in ("labels", "label", "inside", "timestamps"):
                cols.setdefault(name, []).append(batch[name])
            ids += list(batch["id"])
            if is_logger and i % log_every == 0:
                logger.info("eval: batch %d, %d videos, %.1f videos/s", i + 1, len(ids),
                            len(ids) / max(time.perf_counter() - start, 1e-9))
    finally:
        model.train(was_training)
    outputs = ("scores", "decisions", "exit_step", "gflops", "fallback")
    names = list(outputs) + [f"et_{n}" for n in outputs if use_et] + ["labels", "label", "inside", "timestamps"]
    gathered_ids, arrays = gather_eval(ids, *[cols.get(n, []) for n in names], expected=expected)
    a = dict(zip(names, arrays))
    a["targets"] = a.pop("labels")
    metrics, per_class = _variant_metrics("val/", a["scores"], a["targets"], a["label"], a["decisions"],
                                          a["gflops"], a["fallback"])
    aps = {"": per_class}
    if "et_scores" in a:
        m_et, aps["et"] = _variant_metrics("val/et/", a["et_scores"], a["targets"], a["label"], a["et_decisions"],
                                           a["et_gflops"], a["et_fallback"])
        metrics.update(m_et)
    metrics["val/videos"] = float(len(gathered_ids))
    return EvalResult(metrics=metrics, per_class_ap=aps, ids=gathered_ids, arrays=a)


def primary_metric(dataset: str) -> str:
    """The metric that picks the best epoch/model: ``val/mAP`` for ActivityNet, ``val/top1`` for Sports-1M."""
    return "val/top1" if dataset == "sports1m" else "val/mAP"


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch."""
    import random

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)

