"""The training job of one rank: both stages, DeepSpeed engines, evaluation, best and last checkpoints, resume.

``run_job(cfg, ctx, tracking_uri=..., tags=...)`` is the whole job on one rank; where it runs is the context:

- :class:`sofnet.train.context.RayContext` inside Ray Train (``train_loop_per_worker`` below, what
  ``sofnet.train.ray_job`` hands to ``TorchTrainer``): rank and world from Ray, checkpoints through
  ``ray.train.report``, restore from ``ray.train.get_checkpoint()``;
- :class:`sofnet.train.context.LocalContext` in this process (one rank, no Ray): what the fast tests run.

Per stage (a :class:`Stage` value: stage 1 = the backbone as TSN/TSM, stage 2 = SoF-Net from stage 1's best epoch or
``train.stage2.init_from``; for AR-Net the authors' three phases: backbone warm-up, joint, fine-tuning = stage 3):
build the model and a DeepSpeed engine, train, evaluate with the skipping path, log (rank 0, MLflow), keep the
stage's best epoch in ``<run>/best/<stage>`` (:mod:`sofnet.best`) and checkpoint every epoch (see
:mod:`sofnet.checkpoint` for the format). The final stage's best epoch is the registered model. A resumed job first
makes the bests whole again (:func:`_recover_bests`): the attempt it replaces may have been cut while writing one.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch
from omegaconf import OmegaConf

from sofnet import best as best_copy
from sofnet import checkpoint, storage
from sofnet.config import from_container
from sofnet.data import make_eval_loader, make_train_loader
from sofnet.early_exit import EarlyExit
from sofnet.evaluation import class_names, evaluate, primary_metric
from sofnet.machine import fingerprint, rank_tags
from sofnet.losses import classification_loss, sofnet_loss
from sofnet.models import build_model, load_backbone_state
from sofnet.models.arnet import arnet_loss, arnet_warmup_loss
from sofnet.schema import arch_stages
from sofnet.train.deepspeed_config import (batch_params, build_engine, lr_at, per_worker_batch, resolve_precision,
                                           set_lr)
from sofnet.train.loop import average_bn_statistics, seed_everything, train_one_epoch

logger = logging.getLogger("sofnet.train")

STAGES = checkpoint.STAGE_ORDER


@dataclass(frozen=True)
class Stage:
    """One stage of a job: what to train (``model``), from where (``init_from``: a checkpoint, a model URI, or ""
    for the previous stage's best epoch / the backbone's own init), for how long and with which optimizer."""

    name: str
    model: Dict[str, Any]
    epochs: int
    optim: Any
    init_from: str = ""


ARNET_PHASE = {"stage1": "warmup", "stage2": "joint", "stage3": "finetune"}


def stage_model_config(cfg: Any, stage: str) -> Dict[str, Any]:
    """The model of a stage: stage 1 trains SoF-Net's backbone as TSN (sofnet) or causal TSM (sofnet_tsm); AR-Net's
    stages are its phases (``model.arnet_phase``: warmup, joint, finetune)."""
    m = OmegaConf.to_container(cfg.model, resolve=True)
    if m["arch"] == "arnet":
        m["arnet_phase"] = ARNET_PHASE[stage]
    elif stage == "stage1" and m["arch"] == "sofnet":
        m["arch"] = "tsn"
    elif stage == "stage1" and m["arch"] == "sofnet_tsm":
        m["arch"], m["shift"] = "tsm", "causal"  # same parameter names as SoF-Net^TSM's trunk
    return m


def enabled_stages(cfg: Any) -> list[str]:
    """Stages that run: stage 2 for SoF-Net and AR-Net models, stage 3 for AR-Net only."""
    return [s for s in arch_stages(cfg.model.arch) if cfg.train[s].enabled]


def plan(cfg: Any) -> List[Stage]:
    """The stages of a job as values."""
    return [Stage(s, stage_model_config(cfg, s), cfg.train[s].epochs, cfg.train[s].optim, cfg.train[s].init_from)
            for s in enabled_stages(cfg)]


def validates(epoch: int, epochs: int, val_every: int) -> bool:
    """Whether 0-based ``epoch`` of a stage of ``epochs`` is validated (and so may become the stage's best): every
    ``val_every``-th and the last; ``val_every`` 0 the last only, so the stage keeps its last epoch."""
    return epoch + 1 == epochs or (val_every > 0 and (epoch + 1) % val_every == 0)


def run_dir(cfg: Any) -> str | Path:
    """``<train.output_dir>/<run name>``: Ray Train's storage of this run, where ``best/`` lives too (a ``Path``, or
    a URI string for an object store: :func:`sofnet.storage.join`)."""
    from sofnet.train.ray_job import run_name

    return storage.join(cfg.train.output_dir, run_name(cfg))


def train_loop_per_worker(config: Dict[str, Any]) -> None:
    """Ray Train entry: ``config`` has ``cfg`` (our config as a dict), ``tracking_uri``, ``tags``, ``pid_dir``,
    ``verbose``."""
    from sofnet.console import setup
    from sofnet.train.context import RayContext

    ctx = RayContext()
    setup(verbose=bool(config.get("verbose")), rank=ctx.rank)
    cfg = from_container(config["cfg"], "train_loop_config")  # typed again on the worker: same schema, same checks
    if config.get("pid_dir"):
        Path(config["pid_dir"]).mkdir(parents=True, exist_ok=True)
        (Path(config["pid_dir"]) / f"rank{ctx.rank}.pid").write_text(str(os.getpid()))
    run_job(cfg, ctx, tracking_uri=config["tracking_uri"], tags={**(config.get("tags") or {}), **_node_ips(ctx)})


def _node_ips(ctx: Any) -> Dict[str, str]:
    """Every rank's node IP and machine fingerprint, gathered (a collective: all ranks call it) and logged by rank 0
    (INFO: rank 0's progress level), so that the job log shows where the ranks run and where they meet
    (``MASTER_ADDR``); returned as MLflow tags of the job's and the stages' runs: ``node_ips`` (rank order) and
    :func:`sofnet.machine.rank_tags`."""
    import ray
    import torch.distributed as dist

    mine = (ray.util.get_node_ip_address(), fingerprint())  # plain strings: all_gather_object pickles them
    gathered = [mine] * ctx.world
    if dist.is_initialized():
        dist.all_gather_object(gathered, mine)
    ips = [ip for ip, _ in gathered]
    machines = rank_tags([fp for _, fp in gathered])
    if ctx.rank == 0:
        logger.info("ranks on nodes %s, rendezvous at %s:%s", ",".join(ips), os.environ.get("MASTER_ADDR"),
                    os.environ.get("MASTER_PORT"))
        if machines["machine.ranks_differ"] != "none":
            logger.warning("the ranks' machines differ in %s: this run repeats bitwise only on the same mix of "
                           "machines (tags machine.rank<r>.*)", machines["machine.ranks_differ"])
    return {"node_ips": ",".join(ips), **machines}


def _device(cfg: Any) -> torch.device:
    if cfg.scaling.use_gpu:
        from ray.train.torch import get_device

        return get_device()
    os.environ["DS_ACCELERATOR"] = "cpu"
    return torch.device("cpu")


def run_job(cfg: Any, ctx: Any, *, tracking_uri: str, tags: Optional[Dict[str, str]] = None,
            device: Optional[torch.device] = None) -> None:
    """Run (or resume) every stage of ``cfg`` on this rank; see the module docstring."""
    device = device or _device(cfg)
    precision = resolve_precision(cfg.train.precision, cfg.scaling.use_gpu)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    with ctx.restore() as restored:
        meta = checkpoint.read_meta(restored) if restored is not None else None
        runs: Dict[str, str] = dict(meta["runs"]) if meta else {}
        if meta and ctx.rank == 0:
            logger.info("resuming from %s: %s epoch %d done", ctx.restored_from or restored, meta["stage"],
                        meta["epoch"] + 1)
        tracker = None
        if ctx.rank == 0:
            from sofnet.train.tracking import RunTracker

            tracker = RunTracker(cfg, tracking_uri, tags)
        stages = plan(cfg)
        if tracker is not None:
            runs["job"] = tracker.start_job(stages, run_id=runs.get("job"))
            if "job" not in (meta or {}).get("runs", {}):  # world size, global batch and effective lr, once
                tracker.log_params(batch_params(cfg, ctx.world))
        try:
            _run_stages(cfg, ctx, stages, meta, restored, runs, tracker, device=device, dtype=dtype,
                        precision=precision)
        except BaseException:
            if tracker is not None:  # never leave a run RUNNING; a retried attempt reopens them by id
                tracker.end_job("FAILED")
            raise
        if tracker is not None:
            tracker.end_job()


def _run_stages(cfg: Any, ctx: Any, stages: List[Stage], meta: Optional[Dict[str, Any]], restored: Optional[Path],
                runs: Dict[str, str], tracker: Any, *, device: torch.device, dtype: torch.dtype,
                precision: str) -> None:
    names = [s.name for s in stages]
    if meta:
        _recover_bests(cfg, ctx, names[: names.index(meta["stage"]) + 1], meta)
    for i, stage in enumerate(stages):
        if meta and names.index(meta["stage"]) > i:
            continue  # finished before the restart; its best epoch is in <run>/best/<stage>
        resume = meta if meta and meta["stage"] == stage.name else None
        seed_everything(cfg.train.seed + 1000 * STAGES.index(stage.name))
        model = build_model(stage.model)
        if resume is None:
            _initialize(model, stage, cfg, previous=names[i - 1] if i else None)
        engine = build_engine(model.to(device), cfg, stage.optim, world_size=ctx.world, precision=precision)
        start = 0
        if resume is not None:
            checkpoint.restore_engine(engine, restored)
            start = resume["epoch"] + 1
        if tracker is not None:
            runs[stage.name] = tracker.start(stage.name, stage.model, run_id=runs.get(stage.name))
        best = (resume or {}).get("best") or {}
        _run_stage(cfg, stage, engine, start, ctx, tracker, runs, best, device=device, dtype=dtype,
                   names=class_names(cfg.data.val_shards, cfg.model.num_classes), final=i == len(stages) - 1)
        if tracker is not None:
            tracker.end()
        del engine


def _recover_bests(cfg: Any, ctx: Any, names: List[str], meta: Dict[str, Any]) -> None:
    """Before a resumed job reads or writes a best: rank 0 restores each stage's ``best/<stage>`` that the lost attempt
    cut part-way (:func:`sofnet.best.recover`), and the other ranks wait for it (stage 2 starts from stage 1's).

    The best of the stage being resumed may be newer than the checkpoint resumed from: the lost attempt wrote it,
    then was lost before its epoch's checkpoint was registered. Its score then becomes the one to beat (``meta``'s
    ``best``, which only rank 0 uses), as that epoch's first metrics stand in MLflow (``RunTracker.first_logged``):
    the record, the copy and the history name one epoch."""
    if ctx.rank == 0:
        for name in names:
            found = best_copy.recover(run_dir(cfg), name)
            if name == meta["stage"] and found and found.get("best") and int(found.get("epoch", -1)) > meta["epoch"]:
                logger.info("%s: best epoch %d was written by the lost attempt; it is the score to beat", name,
                            int(found["epoch"]) + 1)
                meta["best"] = dict(found["best"])
    if ctx.world > 1 and torch.distributed.is_initialized():
        torch.distributed.barrier()


def _initialize(model: torch.nn.Module, stage: Stage, cfg: Any, previous: Optional[str]) -> None:
    """Stage 2 starts from ``init_from`` or the previous stage's best epoch (as the official code starts from
    stage 1's ``ckpt.best``); stage 1 from ``init_from`` or the backbone's own init."""
    source = stage.init_from or (str(storage.join(run_dir(cfg), checkpoint.BEST, previous)) if previous else "")
    if not source:
        return
    state = checkpoint.load_state(source)
    if stage.name == "stage2" and cfg.model.arch != "arnet":  # SoF-Net's gates are new
        load_backbone_state(model, state, source)
    else:
        model.load_state_dict(state)


def _loaders(cfg: Any, ctx: Any, start_epoch: int) -> tuple:
    d, m = cfg.data, cfg.model
    batch = per_worker_batch(d, ctx.world)
    train, steps = make_train_loader(d.train_shards, num_segments=m.num_segments, input_size=m.input_size,
                                     batch_size=batch, num_workers=d.num_workers, num_classes=m.num_classes,
                                     rank=ctx.rank, world_size=ctx.world, epoch=start_epoch, seed=cfg.train.seed,
                                     shuffle_buffer=d.shuffle_buffer, scales=list(d.scales), flip=d.flip,
                                     subset=d.train_subset, pin_memory=cfg.scaling.use_gpu)
    val = make_eval_loader(d.val_shards, num_segments=m.num_segments, input_size=m.input_size, resize=d.resize,
                           batch_size=batch, num_workers=d.num_workers, num_classes=m.num_classes, rank=ctx.rank,
                           world_size=ctx.world, subset=d.val_subset, pin_memory=cfg.scaling.use_gpu)
    return train, steps, val


def _loss_fn(cfg: Any, stage: Stage, model: Any) -> Any:
    if cfg.model.arch == "arnet":
        if stage.name == "stage1":
            return arnet_warmup_loss
        backbones = model.frame_costs()[: len(model.sizes)]
        if cfg.loss.arnet_eff == "relative":  # scale-free: the same alpha means the same trade-off at any model size
            backbones = [c / max(backbones) for c in backbones]
        return partial(arnet_loss, backbone_gflops=backbones, accuracy_weight=cfg.loss.alpha,
                       efficiency_weight=1.0 - cfg.loss.alpha, uniform_weight=cfg.loss.uniform_weight)
    if stage.name != "stage2":
        return classification_loss
    costs = model.cost_table(cfg.model.input_size, cfg.model.input_size)
    return partial(sofnet_loss, costs=costs, alpha=cfg.loss.alpha, beta=cfg.loss.beta,
                   gate_target=cfg.loss.gate_target, gate_label=cfg.loss.gate_label,
                   gate_margin=cfg.loss.gate_margin, eff_weights=cfg.loss.eff_weights)


def _run_stage(cfg: Any, stage: Stage, engine: Any, start_epoch: int, ctx: Any, tracker: Any, runs: Dict[str, str],
               best: Dict[str, Any], *, device: torch.device, dtype: torch.dtype, names: list[str],
               final: bool) -> None:
    model = engine.module
    loader, steps, val = _loaders(cfg, ctx, start_epoch)
    loss_fn = _loss_fn(cfg, stage, model)
    et = EarlyExit.from_config(cfg.early_exit)
    key = cfg.train.best_metric or primary_metric(cfg.data.dataset)
    for epoch in range(start_epoch, stage.epochs):
        t0 = time.perf_counter()
        tau = model.set_epoch(epoch)
        global_batch = per_worker_batch(cfg.data, ctx.world) * ctx.world
        set_lr(engine.optimizer, lr_at(stage.optim, epoch, global_batch=global_batch))
        loader.dataset.set_epoch(epoch)
        metrics = train_one_epoch(engine, loader, loss_fn=loss_fn, steps=steps, epoch=epoch, epochs=stage.epochs,
                                  stage=_label(cfg, stage), device=device, dtype=dtype, log_every=cfg.train.log_every,
                                  is_logger=ctx.rank == 0, world_size=ctx.world)
        metrics["train/tau"] = tau
        average_bn_statistics(model)  # one model from here on: validation, best checkpoint, evaluator agree
        last = epoch + 1 == stage.epochs
        result, improved = None, False
        if validates(epoch, stage.epochs, cfg.train.val_every):
            result = evaluate(model, val, device=device, dtype=dtype, num_classes=cfg.model.num_classes,
                              et=et if et.enabled else None, expected=val.dataset.num_videos,
                              is_logger=ctx.rank == 0)
            metrics.update(result.metrics)
            if key in result.metrics and result.metrics[key] > best.get("value", float("-inf")):
                best.update(value=result.metrics[key], epoch=epoch, metric=key)
                improved = True
        metrics["time/epoch_s"] = time.perf_counter() - t0
        if ctx.rank == 0:
            _log_epoch(cfg, stage, epoch, metrics, key, tracker, result, names)
            if improved:
                best_copy.write(run_dir(cfg), stage.name, model, et.as_dict(),
                                {"stage": stage.name, "epoch": epoch, "best": best, "runs": runs})
            if last:
                best_model, _ = checkpoint.load_network(storage.join(run_dir(cfg), checkpoint.BEST, stage.name))
                tracker.log_model(best_model, register=final, score=best.get("value"),
                                  step=best.get("epoch", epoch) + 1, best=best)
        meta = {"stage": stage.name, "epoch": epoch, "epochs": stage.epochs, "world": ctx.world, "runs": runs,
                "best": best}
        with checkpoint.staging_dir() as tmp:
            engine.save_checkpoint(str(tmp), tag=checkpoint.DS_TAG)
            if ctx.rank == 0:
                checkpoint.write_model(tmp, model, et.as_dict())
                checkpoint.write_meta(tmp, meta)
            checkpoint.seal(tmp, ctx.rank)
            ctx.report({"stage": STAGES.index(stage.name) + 1, "epoch": epoch, **metrics}, tmp,
                       f"checkpoint-{stage.name}-epoch{epoch:03d}")


def _label(cfg: Any, stage: Stage) -> str:
    """What the progress lines call the stage: ``<name>/stage1``, as its MLflow run, so that the lines of jobs trained
    side by side (a study's seeds) tell which job they are."""
    return f"{cfg.name}/{stage.name}" if cfg.name else stage.name


def _log_epoch(cfg: Any, stage: Stage, epoch: int, metrics: Dict[str, float], key: str, tracker: Any, result: Any,
               names: list[str]) -> None:
    shown = ("train/loss", key, "val/gflops_per_video", "val/et/" + key.split("/")[1], "val/et/gflops_per_video")
    logger.info("%s epoch %d/%d done in %.1fs: %s", _label(cfg, stage), epoch + 1, stage.epochs,
                metrics["time/epoch_s"], "  ".join(f"{k}={metrics[k]:.4f}" for k in shown if k in metrics))
    if not tracker.first_logged(epoch + 1):
        return
    # MLflow's x-axis is "step": the step is the 1-based epoch, and the metric "epoch" lets charts use it by name
    tracker.log_metrics({**metrics, "epoch": epoch + 1}, step=epoch + 1)
    if result is not None:
        tracker.log_eval(result, stage=stage.name, epoch=epoch, class_names=names, figures=epoch + 1 == stage.epochs)
