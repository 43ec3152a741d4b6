"""Where a rank of the training job runs: inside Ray Train, or in this process (one rank, no Ray).

A context gives the job its ``rank`` and ``world``, the checkpoint to resume from (``restore()``, a context
manager yielding a directory or None) and where each epoch's checkpoint goes (``report(metrics, directory,
name)``). Usage::

    from sofnet.train.context import LocalContext
    from sofnet.train.worker import run_job
    run_job(cfg, LocalContext(run_dir), tracking_uri="sqlite:///mlflow.db")   # a whole two-stage run, no Ray

``LocalContext`` keeps ``<run_dir>/checkpoint-<stage>-epoch<NNN>`` like Ray Train does (the newest
``keep`` of them) and initialises a one-rank gloo process group for DeepSpeed.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path
from typing import Any, Dict, Iterator, Optional

from sofnet import checkpoint
from sofnet.session import free_port


class RayContext:
    """The rank of a Ray Train worker: checkpoints go to Ray (``ray.train.report``), which keeps and restores them."""

    def __init__(self) -> None:
        import ray.train

        ctx = ray.train.get_context()
        self.rank, self.world = ctx.get_world_rank(), ctx.get_world_size()
        self.restored_from = ""  # where the checkpoint restore() yielded lives (its storage path or URI)

    @contextlib.contextmanager
    def restore(self) -> Iterator[Optional[Path]]:
        import ray.train

        ckpt = ray.train.get_checkpoint()
        if ckpt is None:
            yield None
            return
        fs = ckpt.filesystem.type_name
        self.restored_from = ckpt.path if fs == "local" else f"{'gs' if fs == 'gcs' else fs}://{ckpt.path}"
        with ckpt.as_directory() as d:  # an object store's checkpoint is downloaded to a temp dir first
            yield Path(d)

    def report(self, metrics: Dict[str, Any], directory: Path, name: str) -> None:
        import ray.train

        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(str(directory)),
                         checkpoint_dir_name=name)


class LocalContext:
    """One rank in this process: checkpoints in ``run_dir``, the newest ``keep`` kept; resumes from the newest."""

    rank, world = 0, 1
    restored_from = ""  # resumes name their checkpoint directory itself

    def __init__(self, run_dir: str | Path, keep: int = 2) -> None:
        self.run_dir, self.keep = Path(run_dir), keep
        self.reports: list[Dict[str, Any]] = []
        import torch.distributed as dist

        if not dist.is_initialized():  # DeepSpeed needs a process group; one rank of gloo on loopback
            os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), RANK="0", WORLD_SIZE="1",
                              LOCAL_RANK="0")
            from sofnet.train.deepspeed_config import import_deepspeed

            import_deepspeed().init_distributed(dist_backend="gloo")

    @contextlib.contextmanager
    def restore(self) -> Iterator[Optional[Path]]:
        found = checkpoint.epoch_checkpoints(self.run_dir) if self.run_dir.is_dir() else []
        yield found[-1] if found else None

    def report(self, metrics: Dict[str, Any], directory: Path, name: str) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        dest = self.run_dir / name
        tmp = self.run_dir / f".{name}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(directory, tmp)
        shutil.rmtree(dest, ignore_errors=True)
        tmp.replace(dest)
        self.reports.append(metrics)
        for old in checkpoint.epoch_checkpoints(self.run_dir)[: -self.keep]:
            shutil.rmtree(old, ignore_errors=True)
