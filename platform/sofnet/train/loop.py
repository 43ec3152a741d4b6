"""One training epoch, with explicit arguments (no Ray, no MLflow here); evaluation is ``sofnet.evaluation``.

Usage (inside a Ray Train worker, or any process with a DeepSpeed engine)::

    from sofnet.train.loop import train_one_epoch
    stats = train_one_epoch(engine, loader, loss_fn=lambda out, y: classification_loss(out, y), steps=steps,
                            epoch=0, epochs=15, stage="stage1", device=device, dtype=torch.float32, log_every=20)
"""

from __future__ import annotations

import datetime
import logging
import time
from typing import Any, Callable, Dict

import numpy as np
import torch


logger = logging.getLogger(__name__)

LossFn = Callable[[Any, torch.Tensor], Dict[str, torch.Tensor]]


def _several_ranks() -> bool:
    """A process group with more than one rank is running (what every cross-rank average here needs)."""
    dist = torch.distributed
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _dist_mean(values: Dict[str, float], device: torch.device) -> Dict[str, float]:
    """Average a dict of floats over the ranks (identity without a process group)."""
    dist = torch.distributed
    if not _several_ranks() or not values:
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
        Means over the epoch (averaged over ranks): the total loss as ``train/loss`` and each term as
        ``train/loss_<term>`` (``loss_acc`` is L_acc, a loss, not an accuracy), ``train/top1`` (the training clips'
        top-1 accuracy against their primary label, from the training-mode outputs), plus ``train/lr``,
        ``train/samples_per_s`` (all ranks), ``train/data_time`` and ``train/step_time``.
    """
    sums: Dict[str, float] = {}
    correct = torch.zeros((), device=device)
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
        terms = {k if k == "loss" else f"loss_{k}": v for k, v in loss_fn(out, label).items()}
        engine.backward(terms["loss"])
        engine.step()
        correct += (out.logits.detach().argmax(-1) == label).sum()  # stays on the device: no extra host sync
        for k, v in terms.items():
            sums[k] = sums.get(k, 0.0) + float(v.detach())
        n += 1
        samples += frames.shape[0]
        last = time.perf_counter()
        step_time += last - now
        if is_logger and (i + 1) % log_every == 0 and i + 1 < steps:  # the epoch's summary line follows the last
            elapsed = last - start
            parts = "  ".join(f"{k}: {float(v.detach()):.4f} ({sums[k] / n:.4f})" for k, v in terms.items())
            logger.info("%s epoch: [%d/%d]  [%*d/%d]  eta: %s  lr: %.6f  %s  samples/s: %.1f  data: %.3f  time: %.3f",
                        stage, epoch + 1, epochs, len(str(steps)), i + 1, steps,
                        _eta(elapsed / (i + 1) * (steps - i - 1)), lr, parts,
                        samples * world_size / max(elapsed, 1e-9), data_time / n, step_time / n)
    elapsed = time.perf_counter() - start
    stats = {f"train/{k}": v / max(n, 1) for k, v in sums.items()}
    stats["train/top1"] = float(correct) / max(samples, 1)
    stats = _dist_mean(stats, device)
    stats.update({"train/lr": lr, "train/samples_per_s": samples * world_size / max(elapsed, 1e-9),
                  "train/data_time": data_time / max(n, 1), "train/step_time": step_time / max(n, 1)})
    return stats


def average_bn_statistics(model: torch.nn.Module) -> int:
    """Make every rank's BatchNorm running statistics the mean over the ranks (a no-op without a process group).

    DeepSpeed (unlike DDP's ``broadcast_buffers``) never syncs buffers, so each rank's running mean/var follow
    only its own batches. Each rank then validated its share of the videos with different statistics and the
    epoch's ``val/*`` scored a mix of models, none of them the rank-0 weights that the best checkpoint keeps
    (measured: best-epoch top-1 56.2 % in training, 51.6 % from ``jobs/evaluate.py`` on the same checkpoint).
    Called at every epoch end, before validation and checkpoints: validation, the best checkpoint and the
    evaluator then see one model. Training is unchanged (train-mode BatchNorm uses batch statistics; frozen
    layers of partial BN do not update theirs). Cost: one all-reduce of the statistics (~10k floats for
    ResNet-18). Returns the number of tensors averaged.
    """
    dist = torch.distributed
    if not _several_ranks():
        return 0
    stats = [buf for mod in model.modules() if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm)
             and mod.track_running_stats and mod.running_mean is not None
             for buf in (mod.running_mean, mod.running_var)]
    if not stats:
        return 0
    flat = torch.cat([b.detach().reshape(-1).to(torch.float64) for b in stats])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    offset = 0
    with torch.no_grad():
        for b in stats:
            b.copy_(flat[offset:offset + b.numel()].view_as(b).to(b.dtype))
            offset += b.numel()
    return len(stats)


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch."""
    import random

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)

