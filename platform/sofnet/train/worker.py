"""The per-worker training function of Ray Train: both stages, DeepSpeed engines, checkpoints, resume.

``train_loop_per_worker(config)`` runs on every rank (``sofnet.train.ray_job`` hands it to ``TorchTrainer``):

1. restore: ``ray.train.get_checkpoint()`` -> ``meta.json`` says which stage and epoch finished last;
2. per enabled stage (stage 1: the backbone as TSN/TSM; stage 2: SoF-Net from stage 1's weights, or from
   ``train.stage2.init_from``): build the model and a DeepSpeed engine (config from ours), train, evaluate with
   the skipping path, log (rank 0, MLflow), and checkpoint every epoch: each rank saves its DeepSpeed shard into
   its own directory and calls ``ray.train.report`` with it (Ray merges them); rank 0 adds ``weights.pt`` +
   ``model.json`` (a plain state dict for ``jobs/evaluate.py`` and stage-2 initialisation) and ``meta.json``.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any, Dict, Optional

import torch
from omegaconf import OmegaConf

from sofnet.data import make_eval_loader, make_train_loader, read_manifest
from sofnet.losses import classification_loss, sofnet_loss
from sofnet.models import build_model, load_backbone_state
from sofnet.train.deepspeed_config import build_engine, lr_at, resolve_precision, set_lr
from sofnet.train.loop import evaluate, primary_metric, seed_everything, train_one_epoch
from sofnet.train.pyfunc import write_artifacts

logger = logging.getLogger("sofnet.train")

STAGES = ("stage1", "stage2")
DS_TAG = "ds"


def stage_model_config(cfg: Any, stage: str) -> Dict[str, Any]:
    """The model of a stage: stage 1 trains SoF-Net's backbone as TSN (sofnet) or causal TSM (sofnet_tsm)."""
    m = OmegaConf.to_container(cfg.model, resolve=True)
    if stage == "stage1" and m["arch"] == "sofnet":
        m["arch"] = "tsn"
    elif stage == "stage1" and m["arch"] == "sofnet_tsm":
        m["arch"], m["shift"] = "tsm", "causal"  # same parameter names as SoF-Net^TSM's trunk
    return m


def enabled_stages(cfg: Any) -> list[str]:
    """Stages that run: stage 2 only for SoF-Net models."""
    return [s for s in STAGES if cfg.train[s].enabled and (s == "stage1" or cfg.model.arch.startswith("sofnet"))]


def load_init_state(spec: str) -> Dict[str, torch.Tensor]:
    """A state dict from a checkpoint directory (``weights.pt``), a ``.pt`` file, or an MLflow model URI."""
    if spec.startswith(("models:/", "runs:/")):
        from sofnet.train.pyfunc import load_network

        return load_network(spec).state_dict()
    path = Path(spec)
    path = path / "weights.pt" if path.is_dir() else path
    if not path.is_file():
        raise FileNotFoundError(f"init_from={spec}: no weights.pt there")
    return torch.load(path, map_location="cpu", weights_only=True)


def class_names(shards: str, num_classes: int) -> list[str]:
    """Class names from the shards' ``manifest.json`` (``class <k>`` when there is none)."""
    directory = shards if os.path.isdir(shards) else os.path.dirname(shards)
    try:
        names = list(read_manifest(directory).get("classes", []))
    except (OSError, ValueError):
        names = []
    return names if len(names) == num_classes else [f"class {k}" for k in range(num_classes)]


def _read_meta(checkpoint: Any) -> Optional[Dict[str, Any]]:
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as d:
        meta = json.loads((Path(d) / "meta.json").read_text())
    meta["path"] = checkpoint.path
    return meta


def _setup_logging(rank: int) -> None:
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING, force=True,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("DeepSpeed", "deepspeed", "torch.distributed"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def train_loop_per_worker(config: Dict[str, Any]) -> None:
    """Ray Train entry: ``config`` has ``cfg`` (our config as a dict), ``tracking_uri``, ``tags``, ``pid_dir``."""
    import ray.train

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    _setup_logging(rank)
    cfg = OmegaConf.create(config["cfg"])
    if config.get("pid_dir"):
        Path(config["pid_dir"]).mkdir(parents=True, exist_ok=True)
        (Path(config["pid_dir"]) / f"rank{rank}.pid").write_text(str(os.getpid()))
    if cfg.scaling.use_gpu:
        from ray.train.torch import get_device

        device = get_device()
    else:
        os.environ["DS_ACCELERATOR"] = "cpu"
        device = torch.device("cpu")
    precision = resolve_precision(cfg.train.precision, cfg.scaling.use_gpu)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    meta = _read_meta(ray.train.get_checkpoint())
    runs: Dict[str, str] = dict(meta["runs"]) if meta else {}
    if meta and rank == 0:
        logger.info("resuming from %s: %s epoch %d done", meta["path"], meta["stage"], meta["epoch"] + 1)
    tracker = None
    if rank == 0:
        from sofnet.train.tracking import RunTracker

        tracker = RunTracker(cfg, config["tracking_uri"], config.get("tags"))
    stages = enabled_stages(cfg)
    names = class_names(cfg.data.val_shards, cfg.model.num_classes)
    prev_state: Optional[Dict[str, torch.Tensor]] = None
    for stage in stages:
        if meta and stages.index(meta["stage"]) > stages.index(stage):
            continue  # finished before the restart; its weights live on in the later stage's checkpoint
        resume = meta if meta and meta["stage"] == stage else None
        seed_everything(cfg.train.seed + 1000 * STAGES.index(stage))
        model_cfg = stage_model_config(cfg, stage)
        model = build_model(model_cfg)
        sc = cfg.train[stage]
        if resume is None:
            if sc.init_from:
                state = load_init_state(sc.init_from)
            else:
                state = prev_state
            if state is not None:
                load_backbone_state(model, state, sc.init_from or "stage 1") if stage == "stage2" \
                    else model.load_state_dict(state)
        engine = build_engine(model.to(device), cfg, sc.optim, world_size=world, precision=precision)
        start_epoch = 0
        if resume is not None:
            with ray.train.get_checkpoint().as_directory() as d:
                engine.load_checkpoint(d, tag=DS_TAG, load_optimizer_states=True, load_lr_scheduler_states=False)
            start_epoch = resume["epoch"] + 1
        if tracker is not None:
            runs[stage] = tracker.start(stage, model_cfg["arch"], run_id=runs.get(stage))
        _run_stage(cfg, stage, engine, start_epoch, runs, device, dtype, rank, world, tracker, names,
                   final=stage == stages[-1], best=(resume or {}).get("best"))
        prev_state = {k: v.detach().cpu().clone() for k, v in engine.module.state_dict().items()}
        if tracker is not None:
            tracker.end()
        del engine


def _run_stage(cfg: Any, stage: str, engine: Any, start_epoch: int, runs: Dict[str, str], device: torch.device,
               dtype: torch.dtype, rank: int, world: int, tracker: Any, names: list[str], final: bool,
               best: Optional[float]) -> None:
    import ray.train

    sc, model, d = cfg.train[stage], engine.module, cfg.data
    loader, steps = make_train_loader(d.train_shards, num_segments=cfg.model.num_segments,
                                      input_size=cfg.model.input_size, batch_size=d.batch_size,
                                      num_workers=d.num_workers, num_classes=cfg.model.num_classes, rank=rank,
                                      world_size=world, epoch=start_epoch, seed=cfg.train.seed,
                                      shuffle_buffer=d.shuffle_buffer, scales=list(d.scales), flip=d.flip,
                                      subset=d.train_subset, pin_memory=cfg.scaling.use_gpu)
    val = make_eval_loader(d.val_shards, num_segments=cfg.model.num_segments, input_size=cfg.model.input_size,
                           resize=d.resize, batch_size=d.batch_size, num_workers=d.num_workers,
                           num_classes=cfg.model.num_classes, rank=rank, world_size=world,
                           subset=d.val_subset, pin_memory=cfg.scaling.use_gpu)
    if stage == "stage2":
        costs = model.cost_table(cfg.model.input_size, cfg.model.input_size)
        loss_fn = partial(sofnet_loss, costs=costs, alpha=cfg.loss.alpha, beta=cfg.loss.beta)
    else:
        loss_fn = classification_loss
    et = (cfg.early_exit.rho, cfg.early_exit.t_min, cfg.early_exit.mode)
    key = primary_metric(d.dataset)
    for epoch in range(start_epoch, sc.epochs):
        t0 = time.perf_counter()
        tau = model.set_epoch(epoch)
        set_lr(engine.optimizer, lr_at(sc.optim, epoch))
        loader.dataset.set_epoch(epoch)
        metrics = train_one_epoch(engine, loader, loss_fn=loss_fn, steps=steps, epoch=epoch, epochs=sc.epochs,
                                  stage=stage, device=device, dtype=dtype, log_every=cfg.train.log_every,
                                  is_logger=rank == 0, world_size=world)
        metrics["train/tau"] = tau
        last = epoch + 1 == sc.epochs
        result = None
        if last or (epoch + 1) % cfg.train.val_every == 0:
            result = evaluate(model, val, device=device, dtype=dtype, num_classes=cfg.model.num_classes, et=et,
                              expected=val.dataset.num_videos, is_logger=rank == 0)
            metrics.update(result.metrics)
            if key in result.metrics:
                best = max(best if best is not None else float("-inf"), result.metrics[key])
        metrics["time/epoch_s"] = time.perf_counter() - t0
        if rank == 0:
            logger.info("%s epoch %d/%d done in %.1fs: %s", stage, epoch + 1, sc.epochs, metrics["time/epoch_s"],
                        "  ".join(f"{k}={metrics[k]:.4f}" for k in ("train/loss", key, "val/gflops_per_video",
                                                                    "val/et/" + key.split("/")[1],
                                                                    "val/et/gflops_per_video") if k in metrics))
            tracker.log_metrics(metrics, step=epoch)
            if result is not None:
                tracker.log_eval(result, stage=stage, epoch=epoch, class_names=names, figures=last)
            if last:
                tracker.log_model(model, register=final, score=metrics.get(key))
        meta = {"stage": stage, "epoch": epoch, "epochs": sc.epochs, "runs": runs, "best": best}
        with tempfile.TemporaryDirectory(prefix="sofnet-ckpt-") as tmp:
            engine.save_checkpoint(tmp, tag=DS_TAG)
            if rank == 0:
                et_cfg = {k: cfg.early_exit[k] for k in ("enabled", "rho", "t_min", "mode")}
                write_artifacts(model, tmp, et_cfg)
                (Path(tmp) / "meta.json").write_text(json.dumps(meta))
            report = {"stage": STAGES.index(stage) + 1, "epoch": epoch, **metrics}
            ray.train.report(report, checkpoint=ray.train.Checkpoint.from_directory(tmp),
                             checkpoint_dir_name=f"checkpoint-{stage}-epoch{epoch:03d}")
