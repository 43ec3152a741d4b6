"""The one writer of ``<run>/best/<stage>`` (a stage's best epoch so far) and its repair after a lost attempt.

A stage's best epoch is rewritten whenever a later epoch beats it, so a process killed part-way (a lost node, a
SIGKILLed head) must never leave a run without a whole copy of it: the next stage starts from it and the final model
is logged from it. Every way of writing here leaves, at any point it is cut, a whole sealed copy of the old or of the
new best epoch, and :func:`recover` (rank 0 of a resumed job, before anything reads or writes a best) puts that copy
back in place:

- on a local disk the new copy is assembled in ``best/.<stage>.XXXX`` and swapped in by two renames (the old one
  to ``best/.<stage>.old<pid>``, the new one in); cut between them, ``best/<stage>`` is missing and both hidden
  copies are whole: :func:`recover` renames the newer one in;
- an object store has no rename, so the copy is uploaded twice: whole to ``best/<stage>.pending`` (seal last), then
  over ``best/<stage>`` (its seal deleted first, written last), then the pending copy is deleted (seal first). Cut
  in the second upload, ``best/<stage>`` has no seal (every load refuses it) and the pending copy is whole:
  :func:`recover` uploads it again. Costs one more upload of the weights per improved epoch (~100 MB for
  ResNet-50) and, at a resume only, one download of each stage's best to check it.

Usage::

    from sofnet import best
    best.write("s3://bucket/runs/demo", "stage1", model, early_exit, {"stage": "stage1", "epoch": 3, "best": {...}})
    meta = best.recover("s3://bucket/runs/demo", "stage1")   # its meta.json; None: no best yet
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Dict, Mapping, Optional

import torch

from sofnet import storage
from sofnet.checkpoint import (BEST, SEAL_PREFIX, CheckpointError, download, hidden_copies, order_key, seal,
                               staging_dir, verify, write_meta, write_model)

logger = logging.getLogger(__name__)

PENDING = ".pending"  # best/<stage>.pending: the whole new copy, uploaded before best/<stage> is overwritten
SEAL = f"{SEAL_PREFIX}0.json"


def write(run_dir: str | Path, stage: str, model: torch.nn.Module, early_exit: Mapping[str, Any],
          meta: Mapping[str, Any]) -> str | Path:
    """Replace ``<run_dir>/best/<stage>`` with ``model`` (its ``meta.json``: ``meta``); returns where it is.

    A crash at any point leaves a whole copy of the old or the new one that :func:`recover` restores."""
    if storage.is_remote(run_dir):
        final = str(storage.join(run_dir, BEST, stage))
        with staging_dir() as tmp:
            _fill(tmp, model, early_exit, meta)
            storage.upload_dir(tmp, final + PENDING, last=SEAL)
            storage.upload_dir(tmp, final, last=SEAL)
        storage.delete_dir(final + PENDING, first=SEAL)
        return final
    final = Path(run_dir) / BEST / stage
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{stage}.", dir=final.parent))
    _fill(tmp, model, early_exit, meta)
    old = final.with_name(f".{stage}.old{os.getpid()}")
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        final.replace(old)
    tmp.replace(final)
    shutil.rmtree(old, ignore_errors=True)
    return final


def _fill(directory: Path, model: torch.nn.Module, early_exit: Mapping[str, Any], meta: Mapping[str, Any]) -> None:
    write_model(directory, model, early_exit)
    write_meta(directory, meta)
    seal(directory, 0)


def recover(run_dir: str | Path, stage: str) -> Optional[Dict[str, Any]]:
    """Make ``<run_dir>/best/<stage>`` whole again after a write was cut; returns its ``meta.json`` (None: the stage
    has no best yet). Leftover copies are removed. Call it where no other process writes this run's bests.

    Raises:
        CheckpointError: ``best/<stage>`` fails its seal and there is no whole copy to restore it from (written by a
            version without the pending copy, or changed by hand), in one line.
    """
    if storage.is_remote(run_dir):
        return _recover_remote(str(storage.join(run_dir, BEST, stage)))
    return _recover_local(Path(run_dir) / BEST / stage)


def _recover_local(final: Path) -> Optional[Dict[str, Any]]:
    spares = hidden_copies(final)
    meta: Optional[Dict[str, Any]] = None
    if final.exists():
        meta = verify(final)  # nothing here cuts it: a failing seal is a change by hand, refused as such
    else:
        whole = []
        for p in spares:
            try:
                whole.append((verify(p), p))
            except CheckpointError:
                pass  # a copy cut while it was assembled: the one before it is whole
        if whole:
            meta, chosen = max(whole, key=lambda mp: order_key(mp[0]))
            chosen.replace(final)
            spares.remove(chosen)
            logger.warning("%s: restored %s epoch %d, which a lost attempt had written but not yet renamed in", final,
                           meta.get("stage"), int(meta.get("epoch", -1)) + 1)
    for p in spares:
        shutil.rmtree(p, ignore_errors=True)
    return meta


def _recover_remote(final: str) -> Optional[Dict[str, Any]]:
    pending = final + PENDING
    with tempfile.TemporaryDirectory(prefix="sofnet-best-") as tmp:
        found, problem = _whole(final, Path(tmp) / "best")
        if found is None:
            copy, _ = _whole(pending, Path(tmp) / "pending")
            if copy is not None:
                storage.upload_dir(Path(tmp) / "pending", final, last=SEAL)
                found = copy
                logger.warning("%s: restored %s epoch %d from %s (a lost attempt was cut while uploading it)", final,
                               copy.get("stage"), int(copy.get("epoch", -1)) + 1, pending)
            elif problem:
                raise CheckpointError(f"{problem} (and no whole copy at {pending} to restore it from)")
    if storage.list_files(pending):
        storage.delete_dir(pending, first=SEAL)
    return found


def _whole(uri: str, local: Path) -> tuple[Optional[Dict[str, Any]], str]:
    """(the verified ``meta.json`` of the copy at ``uri``, downloaded to ``local``; None if absent or not whole), and
    the one line saying why it is not whole ('' if absent)."""
    if not storage.list_files(uri):
        return None, ""
    download(uri, local)
    try:
        return verify(local), ""
    except CheckpointError as e:
        return None, str(e).replace(str(local), uri)
