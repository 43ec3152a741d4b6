"""The DeepSpeed config and the optimizer's parameter groups, generated from our config (no second file).

Usage::

    from sofnet.train.deepspeed_config import build_optimizer, deepspeed_config, resolve_precision
    precision = resolve_precision(cfg.train.precision, use_gpu=cfg.scaling.use_gpu)
    ds_config = deepspeed_config(cfg, stage_optim=cfg.train.stage1.optim, world_size=2, precision=precision)
    optimizer = build_optimizer(model, cfg.train.stage1.optim)
    engine, optimizer, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=ds_config)
    engine = build_engine(model, cfg, cfg.train.stage1.optim, world_size=2, precision=precision)  # all in one

Learning-rate groups follow the official code: linear weights ``linear_lr_mult`` (5x) the base lr, linear
biases twice that (10x) without weight decay, convolution biases 2x without weight decay, BatchNorm
parameters without weight decay, everything else (convolutions, the gates' LSTM cells) the base lr with weight
decay. Each group carries ``lr_mult`` so that :func:`set_lr` can apply the step schedule per epoch.
"""

from __future__ import annotations

from typing import Any, Dict, List

import torch
from torch import nn

PRECISIONS = ("auto", "fp32", "bf16")


def resolve_precision(precision: str, use_gpu: bool) -> str:
    """``auto`` -> ``bf16`` on a GPU that supports it, else ``fp32`` (CPU training is always fp32 here).

    Raises:
        ValueError: an unknown precision, or bf16 asked for where the GPU lacks it.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"train.precision={precision!r} is not one of {', '.join(PRECISIONS)}")
    gpu_bf16 = use_gpu and torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if precision == "auto":
        return "bf16" if gpu_bf16 else "fp32"
    if precision == "bf16" and use_gpu and not gpu_bf16:
        raise ValueError("train.precision=bf16 but this GPU does not support bfloat16")
    return precision


def param_groups(model: nn.Module, lr: float, weight_decay: float, linear_lr_mult: float,
                 gate_lr_mult: float = 1.0) -> List[Dict[str, Any]]:
    """Split the trainable parameters into the official learning-rate groups (empty groups are left out).

    Args:
        model: The network (frozen parameters, e.g. partial BatchNorm, are skipped).
        lr: Base learning rate.
        weight_decay: Weight decay of the groups that have it.
        linear_lr_mult: Multiplier of linear weights; linear biases get twice this.
        gate_lr_mult: Extra multiplier of every parameter under ``gates.`` (its groups are named ``gate_*``).

    Returns:
        Torch optimizer parameter groups with ``lr``, ``weight_decay``, ``lr_mult`` and ``name``.
    """
    kinds = ("base", "conv_bias", "bn", "linear_weight", "linear_bias")
    buckets: Dict[str, List[nn.Parameter]] = {f"{pre}{k}": [] for pre in ("", "gate_") for k in kinds}
    seen: set[int] = set()
    for mname, module in model.named_modules():
        pre = "gate_" if mname == "gates" or mname.startswith("gates.") else ""
        for pname, p in module.named_parameters(recurse=False):
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            if isinstance(module, nn.Linear):
                kind = "linear_weight" if pname == "weight" else "linear_bias"
            elif isinstance(module, nn.modules.batchnorm._BatchNorm):
                kind = "bn"
            elif isinstance(module, nn.modules.conv._ConvNd) and pname == "bias":
                kind = "conv_bias"
            else:
                kind = "base"
            buckets[pre + kind].append(p)
    rules = {  # kind: (lr multiplier, weight decay)
        "base": (1.0, weight_decay), "conv_bias": (2.0, 0.0), "bn": (1.0, 0.0),
        "linear_weight": (linear_lr_mult, weight_decay), "linear_bias": (2.0 * linear_lr_mult, 0.0),
    }
    groups = []
    for name, params in buckets.items():
        if params:
            mult, wd = rules[name.removeprefix("gate_")]
            mult *= gate_lr_mult if name.startswith("gate_") else 1.0
            groups.append({"params": params, "lr": lr * mult, "lr_mult": mult, "weight_decay": wd, "name": name})
    return groups


def build_optimizer(model: nn.Module, optim: Any) -> torch.optim.Optimizer:
    """SGD with momentum over :func:`param_groups` (``optim`` is an ``OptimConfig``)."""
    groups = param_groups(model, optim.lr, optim.weight_decay, optim.linear_lr_mult, optim.gate_lr_mult)
    return torch.optim.SGD(groups, lr=optim.lr, momentum=optim.momentum, weight_decay=optim.weight_decay)


def lr_at(optim: Any, epoch: int) -> float:
    """The base learning rate of ``epoch`` (0-based): ``lr * lr_gamma ** (number of lr_steps <= epoch)``."""
    return float(optim.lr * optim.lr_gamma ** sum(1 for s in optim.lr_steps if epoch >= s))


def set_lr(optimizer: Any, base_lr: float) -> None:
    """Set every group's lr to ``base_lr * lr_mult`` (works on a DeepSpeed/ZeRO-wrapped optimizer too)."""
    for group in optimizer.param_groups:
        group["lr"] = base_lr * group.get("lr_mult", 1.0)


def deepspeed_config(cfg: Any, *, stage_optim: Any, world_size: int, precision: str) -> Dict[str, Any]:
    """The DeepSpeed config dict of one stage.

    Args:
        cfg: Our full config (``data.batch_size`` per worker, ``train.zero_stage``).
        stage_optim: The stage's ``OptimConfig`` (gradient clipping).
        world_size: Number of training workers.
        precision: ``fp32`` or ``bf16`` (see :func:`resolve_precision`).

    Returns:
        A dict for ``deepspeed.initialize(config=...)``: micro batch = our per-worker batch, no gradient
        accumulation, gradient clipping, the ZeRO stage, bf16 or fp32, and ``zero_allow_untested_optimizer``
        (our optimizer is torch's SGD, built by :func:`build_optimizer`).
    """
    if cfg.train.zero_stage not in (0, 1, 2):
        raise ValueError(f"train.zero_stage={cfg.train.zero_stage}: choose 0, 1 or 2")
    if precision not in ("fp32", "bf16"):
        raise ValueError(f"precision must be fp32 or bf16 here, got {precision!r}")
    return {
        "train_micro_batch_size_per_gpu": int(cfg.data.batch_size),
        "gradient_accumulation_steps": 1,
        "train_batch_size": int(cfg.data.batch_size) * int(world_size),
        "gradient_clipping": float(stage_optim.clip_grad),
        "zero_optimization": {"stage": int(cfg.train.zero_stage)},
        "bf16": {"enabled": precision == "bf16"},
        "fp16": {"enabled": False},
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }


def build_engine(model: nn.Module, cfg: Any, stage_optim: Any, world_size: int, precision: str) -> Any:
    """``deepspeed.initialize`` with our optimizer and generated config; returns the engine.

    With one worker and no ZeRO there is nothing to all-reduce, so the engine's backward all-reduce (a flatten,
    a one-rank collective and a copy back of every gradient: ~20% of a CPU step) is switched off.
    """
    import deepspeed  # imported here: DS_ACCELERATOR must be set before the first import

    ds_config = deepspeed_config(cfg, stage_optim=stage_optim, world_size=world_size, precision=precision)
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=build_optimizer(model, stage_optim),
                                           config=ds_config)
    if world_size == 1 and cfg.train.zero_stage == 0:
        engine.enable_backward_allreduce = False
    return engine
