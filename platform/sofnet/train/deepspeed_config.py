"""The DeepSpeed config and the optimizer's parameter groups, generated from our config (no second file).

Usage::

    from sofnet.train.deepspeed_config import build_optimizer, deepspeed_config, resolve_precision
    precision = resolve_precision(cfg.train.precision, use_gpu=cfg.scaling.use_gpu)
    ds_config = deepspeed_config(cfg, stage_optim=cfg.train.stage1.optim, world_size=2, precision=precision)
    optimizer = build_optimizer(model, cfg.train.stage1.optim)
    engine, optimizer, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=ds_config)
    engine = build_engine(model, cfg, cfg.train.stage1.optim, world_size=2, precision=precision)  # all in one
    per_worker_batch(cfg.data, world_size=8)          # 3 when data.global_batch_size=24 (the official total)
    batch_params(cfg, world_size=8)                   # world size, batches and effective lrs, to log as params

Learning-rate groups follow the official code (``get_optim_policies`` in ``ops/models_sof.py``): linear weights
``linear_lr_mult`` (5x) the base lr, linear biases twice that (10x) without weight decay, convolution biases and
the LSTM cells' biases 2x without weight decay, BatchNorm parameters without weight decay, everything else
(convolutions, the LSTM cells' weights) the base lr with weight decay. Each group carries ``lr_mult`` so that
:func:`set_lr` can apply the step schedule per epoch.

Batch: the official batch of 24 is the total over GPUs (DataParallel). ``data.global_batch_size`` says so
(split evenly over the workers by :func:`per_worker_batch`); 0 keeps ``data.batch_size`` per worker. The
opt-in linear scaling rule ``optim.base_batch_size`` (0 = off, the official) multiplies the lr by
global batch / base_batch_size (:func:`effective_lr`).
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional

import torch
from torch import nn

from sofnet.config import ConfigError
from sofnet.schema import arch_stages

PRECISIONS = ("auto", "fp32", "bf16")
SHM_OP = "deepspeed_shm_comm"  # DeepSpeed's CPU shared-memory all-reduce: see import_deepspeed


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
                 gate_lr_mult: float = 1.0, lstm_bias_official: bool = True) -> List[Dict[str, Any]]:
    """Split the trainable parameters into the official learning-rate groups (empty groups are left out).

    Args:
        model: The network (frozen parameters, e.g. partial BatchNorm, are skipped).
        lr: Base learning rate.
        weight_decay: Weight decay of the groups that have it.
        linear_lr_mult: Multiplier of linear weights; linear biases get twice this.
        gate_lr_mult: Extra multiplier of every parameter under ``gates.`` (its groups are named ``gate_*``).
        lstm_bias_official: LSTM biases in their own group at 2x lr without weight decay (official); False puts
            them with the base group (1x, decayed), the recipe ``jobs/configs/demo.yaml`` was studied with.

    Returns:
        Torch optimizer parameter groups with ``lr``, ``weight_decay``, ``lr_mult`` and ``name``.
    """
    kinds = ("base", "conv_bias", "lstm_bias", "bn", "linear_weight", "linear_bias")
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
            elif lstm_bias_official and isinstance(module, nn.LSTMCell) and pname.startswith("bias"):
                kind = "lstm_bias"  # official: bias_ih and bias_hh in normal_bias (2x lr, no weight decay)
            else:
                kind = "base"
            buckets[pre + kind].append(p)
    rules = {  # kind: (lr multiplier, weight decay)
        "base": (1.0, weight_decay), "conv_bias": (2.0, 0.0), "lstm_bias": (2.0, 0.0), "bn": (1.0, 0.0),
        "linear_weight": (linear_lr_mult, weight_decay), "linear_bias": (2.0 * linear_lr_mult, 0.0),
    }
    groups = []
    for name, params in buckets.items():
        if params:
            mult, wd = rules[name.removeprefix("gate_")]
            mult *= gate_lr_mult if name.startswith("gate_") else 1.0
            groups.append({"params": params, "lr": lr * mult, "lr_mult": mult, "weight_decay": wd, "name": name})
    return groups


def build_optimizer(model: nn.Module, optim: Any, lr: Optional[float] = None) -> torch.optim.Optimizer:
    """SGD with momentum over :func:`param_groups` (``optim`` is an ``OptimConfig``; ``lr`` overrides
    ``optim.lr``, e.g. with :func:`effective_lr`)."""
    base = float(optim.lr if lr is None else lr)
    groups = param_groups(model, base, optim.weight_decay, optim.linear_lr_mult, optim.gate_lr_mult,
                          optim.get("lstm_bias_official", True))
    return torch.optim.SGD(groups, lr=base, momentum=optim.momentum, weight_decay=optim.weight_decay)


def per_worker_batch(data_cfg: Any, world_size: int) -> int:
    """Clips per worker and step: ``global_batch_size / world_size``, or ``batch_size`` when the global is 0.

    Raises:
        ConfigError: a global batch that the workers cannot share evenly, or a batch below 1.
    """
    world = int(world_size)
    glob = int(getattr(data_cfg, "global_batch_size", 0) or 0)
    if world < 1:
        raise ConfigError(f"scaling.num_workers={world}: must be >= 1")
    if glob == 0:
        if int(data_cfg.batch_size) < 1:
            raise ConfigError(f"data.batch_size={data_cfg.batch_size}: must be >= 1")
        return int(data_cfg.batch_size)
    if glob < 0 or glob % world:
        raise ConfigError(f"data.global_batch_size={glob} is not a positive multiple of the {world} workers "
                          f"(scaling.num_workers)")
    return glob // world


def effective_lr(optim: Any, global_batch: int) -> float:
    """The stage's base lr after the opt-in linear scaling rule: ``lr * global_batch / base_batch_size``.

    ``optim.base_batch_size`` 0 (the default, and the official recipe) leaves ``optim.lr`` unchanged.
    """
    base_batch = int(getattr(optim, "base_batch_size", 0) or 0)
    return float(optim.lr) if base_batch <= 0 else float(optim.lr) * int(global_batch) / base_batch


def lr_at(optim: Any, epoch: int, global_batch: Optional[int] = None) -> float:
    """The base learning rate of ``epoch`` (0-based): ``lr * lr_gamma ** (number of lr_steps <= epoch)``.

    With ``global_batch`` given, ``lr`` is first scaled by :func:`effective_lr` (a no-op unless
    ``optim.base_batch_size`` is set).
    """
    lr = optim.lr if global_batch is None else effective_lr(optim, global_batch)
    return float(lr * optim.lr_gamma ** sum(1 for s in optim.lr_steps if epoch >= s))


def batch_params(cfg: Any, world_size: int) -> Dict[str, Any]:
    """What a run should log as params about its batch: world size, per-worker and global batch, effective lrs."""
    per = per_worker_batch(cfg.data, world_size)
    out: Dict[str, Any] = {"world_size": int(world_size), "per_worker_batch_size": per,
                           "global_batch_size": per * int(world_size)}
    for stage in arch_stages(cfg.model.arch):
        out[f"{stage}.effective_lr"] = effective_lr(cfg.train[stage].optim, per * int(world_size))
    return out


def set_lr(optimizer: Any, base_lr: float) -> None:
    """Set every group's lr to ``base_lr * lr_mult`` (works on a DeepSpeed/ZeRO-wrapped optimizer too)."""
    for group in optimizer.param_groups:
        group["lr"] = base_lr * group.get("lr_mult", 1.0)


def deepspeed_config(cfg: Any, *, stage_optim: Any, world_size: int, precision: str) -> Dict[str, Any]:
    """The DeepSpeed config dict of one stage.

    Args:
        cfg: Our full config (``data.global_batch_size`` or ``data.batch_size``, ``train.zero_stage``).
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
    per = per_worker_batch(cfg.data, world_size)
    return {
        "train_micro_batch_size_per_gpu": per,
        "gradient_accumulation_steps": 1,
        "train_batch_size": per * int(world_size),
        "gradient_clipping": float(stage_optim.clip_grad),
        "zero_optimization": {"stage": int(cfg.train.zero_stage)},
        "bf16": {"enabled": precision == "bf16"},
        "fp16": {"enabled": False},
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }


def import_deepspeed() -> Any:
    """``import deepspeed``, quieted, without its shared-memory all-reduce op; the module.

    DeepSpeed's torch backend JIT-compiles ``deepspeed_shm_comm`` (C++, g++ and ninja, into
    ~/.cache/torch_extensions) when it starts on a CPU: 25-45 s of a 2-core machine at a job's start wherever the
    cached build is missing or stale (it is rebuilt whenever the compile command differs, e.g. between a Ray worker and
    a plain process), and a failed start on a node without a C++ compiler. Only its *inference* all-reduce uses the
    op; training's collectives are gloo's, so the op is marked incompatible and never built. Called before the
    first ``deepspeed.init_distributed`` / ``deepspeed.initialize`` of a process (DS_ACCELERATOR must be set before
    the first import).
    """
    import deepspeed
    import deepspeed.ops

    from sofnet.console import quiet_libraries

    quiet_libraries()  # DeepSpeed set its logger back to INFO when imported
    # deepspeed.ops probes every op's compatibility on first access (a module __getattr__); the probe's result with
    # this one op off takes its place.
    deepspeed.ops.__compatible_ops__ = {**deepspeed.ops.__compatible_ops__, SHM_OP: False}
    return deepspeed


def build_engine(model: nn.Module, cfg: Any, stage_optim: Any, world_size: int, precision: str) -> Any:
    """``deepspeed.initialize`` with our optimizer and generated config; returns the engine.

    With one worker and no ZeRO there is nothing to all-reduce, so the engine's backward all-reduce (a flatten,
    a one-rank collective and a copy back of every gradient: ~20% of a CPU step) is switched off.
    """
    deepspeed = import_deepspeed()
    ds_config = deepspeed_config(cfg, stage_optim=stage_optim, world_size=world_size, precision=precision)
    optimizer = build_optimizer(model, stage_optim, lr=effective_lr(stage_optim, ds_config["train_batch_size"]))
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=ds_config)
    if world_size == 1 and cfg.train.zero_stage == 0:
        engine.enable_backward_allreduce = False
    return engine
