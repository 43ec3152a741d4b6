"""Checks a job makes before it spends anything (Ray, DeepSpeed, training): shards, class counts, paths.

Each check raises :class:`PreflightError`, one line naming the key or file and the problem. Usage::

    from sofnet.preflight import PreflightError, check_data
    check_data(cfg)              # train and val shards exist, hold samples, agree with their manifest and the model
    n = check_shards(cfg.data.val_shards, cfg.data.val_subset, key="data.val_shards", num_classes=4)
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional

from sofnet import storage
from sofnet.data import DataError, read_manifest, read_sizes, resolve_shards
from sofnet.shards import is_store_directory, listed_tars


class PreflightError(ValueError):
    """An input that would fail (or silently mislead) a job, in one line."""


def in_submitted_job() -> bool:
    """Whether this driver runs under ``ray job submit`` (its working directory is an uploaded copy)."""
    return bool(os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR"))


def _where(path: str, key: str) -> str:
    if in_submitted_job() and path and not os.path.isabs(path) and "://" not in path:
        return (f"{key}={path}: not found in the job's uploaded working directory ({os.getcwd()}); relative paths "
                "resolve there and `ray job submit` does not upload data/ (it is git-ignored): give an absolute path "
                "on storage every node sees")
    return f"{key}={path}"


def check_shards(shards: str, subset: str, *, key: str, num_classes: Optional[int] = None) -> int:
    """Check that ``shards`` (a directory + subset, a brace pattern or a file) hold samples; returns the video count.

    A directory's manifest must list exactly the ``{subset}-*.tar`` files present and count the videos their
    ``sizes.json`` counts (a partial copy would otherwise be scored as if it were the whole set), and its class list
    must have ``num_classes`` entries.
    """
    try:
        urls = resolve_shards(shards, subset)
        total = sum(read_sizes(urls))
    except (FileNotFoundError, DataError, ValueError) as e:
        raise PreflightError(f"{_where(shards, key)}: {str(e).splitlines()[0]}") from None
    if total == 0:
        raise PreflightError(f"{key}={shards}: the {subset} shards hold no samples (sizes.json counts 0)")
    if (os.path.isdir(shards) and Path(shards, "manifest.json").is_file()) or is_store_directory(shards):
        shards = shards.rstrip("/")
        manifest = read_manifest(shards)
        entry = manifest.get("subsets", {}).get(subset, {})
        on_disk = listed_tars(shards, subset)
        listed = sorted(os.path.basename(u) for u in urls)
        if on_disk != listed:
            extra = sorted(set(on_disk) - set(listed))
            raise PreflightError(f"{shards}/manifest.json lists {len(listed)} {subset} shards but {len(on_disk)} are "
                                 f"there ({', '.join(extra[:3])} not listed): shards from another run?")
        if isinstance(entry.get("videos"), int) and entry["videos"] != total:
            raise PreflightError(f"{shards}/manifest.json counts {entry['videos']} {subset} videos but sizes.json "
                                 f"counts {total}: an incomplete or mixed copy of the shards")
        classes = manifest.get("classes")
        if num_classes is not None and isinstance(classes, list) and classes and len(classes) != num_classes:
            raise PreflightError(f"{shards}/manifest.json has {len(classes)} classes but the model has "
                                 f"{num_classes} (model.num_classes): scores would be against the wrong labels")
    return total


def check_data(cfg: Any, train: bool = True) -> None:
    """The shards a training job reads: training (if ``train``) and validation, against ``model.num_classes``."""
    d, k = cfg.data, cfg.model.num_classes
    if train:
        check_shards(d.train_shards, d.train_subset, key="data.train_shards", num_classes=k)
    check_shards(d.val_shards, d.val_subset, key="data.val_shards", num_classes=k)


def check_storage_for_nodes(path: str, nodes: int, shared: bool, key: str = "train.output_dir") -> None:
    """A run on several nodes needs storage every node sees: since Ray 2.7, Ray Train no longer syncs a worker's
    checkpoints to the head, so with a local path each node would keep its own part of every checkpoint and a
    restarted worker on another node would not find them (or a resume would load half a checkpoint).

    Args:
        path: ``train.output_dir``.
        nodes: Alive Ray nodes with CPUs in the cluster the job runs on.
        shared: ``train.shared_storage``: the user says the local path is a mount every node has (NFS, Lustre).
    """
    if nodes > 1 and "://" not in path and not shared:
        raise PreflightError(f"{key}={path}: a local path, but the Ray cluster has {nodes} nodes and Ray Train no "
                             "longer copies checkpoints to the head; use storage every node reaches (s3://bucket/"
                             "runs, gs://...) or, for a mount every node has, set train.shared_storage=true")


def check_output_dir(path: str, key: str = "train.output_dir") -> None:
    """The run's storage can be written (created if missing)."""
    if storage.is_remote(path):  # one small object written and deleted, bounded in time
        try:
            storage.check_writable(path, key=key)
        except storage.StorageError as e:
            raise PreflightError(str(e)) from None
        return
    if "://" in path:
        return  # another pyarrow filesystem (hdfs://...): checked by Ray Train when it starts
    p = Path(path)
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise PreflightError(f"{key}={path}: cannot create it ({e.strerror})") from None
    if not os.access(p, os.W_OK):
        raise PreflightError(f"{key}={path}: not writable")
