"""A stage's best epoch (``<run>/best/<stage>``, :mod:`sofnet.best`) survives a writer killed at any point.

Each test writes a best, then a better one with the process "killed" at every step of the write in turn (an
exception raised from the filesystem call: a rename on a disk, an upload or a delete in a bucket), then runs what a
resumed job runs first (``best.recover``). After every cut point the best must load, hold exactly the weights of the
old or the new epoch, agree with its own ``meta.json``, and leave no copy behind. The bucket tests run on a real S3
API (moto) and a real GCS JSON API (the ``bucket`` fixture of ``conftest.py``)::

    DS_ACCELERATOR=cpu .venv/bin/pytest tests/test_best.py -q -p no:cacheprovider
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Callable, List

import pytest
import torch

from sofnet import best, checkpoint, storage

EE = {"enabled": True, "rho": 0.99, "t_min": 2, "mode": "reached"}


class Killed(BaseException):
    """The writer's process gone at this call (BaseException: nothing in the writer may catch it)."""


class Weights(torch.nn.Linear):
    """A few weights standing in for a network: what is tested is where they are written, not what they compute
    (a tiny ResNet's 45 MB made each upload to moto ~0.3 s)."""

    def hparams(self) -> dict:
        return {"arch": "weights-only"}


def _models() -> tuple[torch.nn.Module, torch.nn.Module]:
    torch.manual_seed(0)
    return Weights(16, 8), Weights(16, 8)


def _same(a: torch.nn.Module, b: dict) -> bool:
    sa = a.state_dict()
    return sa.keys() == b.keys() and all(torch.equal(sa[k], b[k]) for k in sa)


def _meta(epoch: int) -> dict:
    return {"stage": "stage2", "epoch": epoch, "best": {"value": 0.1 * epoch, "epoch": epoch, "metric": "val/mAP"}}


def _cut_at(n: int, calls: List[str], patch: Callable[[Callable[..., Any]], None]) -> Callable[..., Any]:
    """A wrapper for a filesystem call that counts the calls into ``calls`` and raises :class:`Killed` at the n-th."""
    def wrap(real: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            calls.append(str(args[-1] if args else ""))
            if len(calls) == n:
                raise Killed(f"killed at call {n}")
            return real(*args, **kwargs)
        return call
    return patch(wrap)


def _check(run: str | Path, old: torch.nn.Module, new: torch.nn.Module) -> int:
    """After recover: best/stage2 loads and is exactly the old (epoch 0) or the new (epoch 3) one; its epoch."""
    meta = best.recover(run, "stage2")
    where = storage.join(run, "best", "stage2")
    with checkpoint.local_copy(where) as (copy, _):
        assert checkpoint.verify(copy) == meta and meta["epoch"] in (0, 3), meta
    assert _same(new if meta["epoch"] == 3 else old, checkpoint.load_state(str(where)))
    return meta["epoch"]


def test_a_best_on_disk_survives_its_writer_killed_at_any_rename(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    old, new = _models()
    counted: List[str] = []
    best.write(tmp_path / "count", "stage2", old, EE, _meta(0))
    with monkeypatch.context() as m:  # how many renames one write over an existing best makes
        _cut_at(0, counted, lambda wrap: m.setattr(Path, "replace", wrap(Path.replace)))
        best.write(tmp_path / "count", "stage2", new, EE, _meta(3))
    assert len(counted) == 6  # weights, model.json, meta.json and the seal into the copy, then the two of the swap
    seen, refused = set(), 0
    for n in range(1, len(counted) + 1):
        run = tmp_path / f"run{n}"
        best.write(run, "stage2", old, EE, _meta(0))
        with monkeypatch.context() as m, pytest.raises(Killed):
            _cut_at(n, [], lambda wrap: m.setattr(Path, "replace", wrap(Path.replace)))
            best.write(run, "stage2", new, EE, _meta(3))
        try:
            checkpoint.load_state(str(run / "best" / "stage2"))
        except checkpoint.CheckpointError as e:
            assert str(e) == f"{run}/best/stage2: no such checkpoint or run directory ({checkpoint.CUT_BEST})"
            refused += 1  # cut between the two renames: no best/stage2 until recover
        seen.add(_check(run, old, new))
        assert sorted(p.name for p in (run / "best").iterdir()) == ["stage2"]  # no hidden copy left
    assert refused == 1 and seen == {0, 3}  # both outcomes occur; the one cut that needs the repair is among them


def test_a_best_in_a_bucket_survives_its_writer_killed_at_any_upload_or_delete(
        bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    old, new = _models()

    def patch(m: pytest.MonkeyPatch, calls: List[str], n: int) -> None:
        for name in ("upload_file", "delete"):  # every object written or deleted goes through these two
            _cut_at(n, calls, lambda wrap, name=name: m.setattr(storage, name, wrap(getattr(storage, name))))

    counted: List[str] = []
    best.write(f"{bucket}/count", "stage2", old, EE, _meta(0))
    with monkeypatch.context() as m:  # how many objects one write over an existing best writes and deletes
        patch(m, counted, 0)
        where = best.write(f"{bucket}/count", "stage2", new, EE, _meta(3))
    assert where == f"{bucket}/count/best/stage2" and not Path("s3:").exists() and not Path("gs:").exists()
    assert len(counted) >= 12  # the pending copy (4 objects), best/stage2 (4), the pending copy deleted
    seen, refused = set(), 0
    for n in range(1, len(counted) + 1):
        run = f"{bucket}/cut{n}"
        best.write(run, "stage2", old, EE, _meta(0))
        with monkeypatch.context() as m, pytest.raises(Killed):
            patch(m, [], n)
            best.write(run, "stage2", new, EE, _meta(3))
        try:
            checkpoint.load_state(f"{run}/best/stage2")
        except checkpoint.CheckpointError as e:
            assert str(e).startswith(f"{run}/best/stage2: not a sealed checkpoint") and "resuming its job restores" \
                in str(e), e
            refused += 1  # cut while best/stage2 itself was rewritten
        seen.add(_check(run, old, new))
        assert storage.list_names(f"{run}/best", directories=True) == ["stage2"]  # the pending copy is gone
        assert storage.list_names(f"{run}/best/stage2") == ["SEAL.rank0.json", "meta.json", "model.json",
                                                           "weights.pt"]
    assert refused >= 4 and seen == {0, 3}


def test_a_best_changed_by_hand_is_refused_not_repaired(bucket: str, tmp_path: Path) -> None:
    """Recover restores only what a cut write leaves: a best whose file changed (planted or edited), with no pending
    copy, is one line naming the file, on a disk and in a bucket."""
    old, _ = _models()
    for run in (tmp_path / "run", f"{bucket}/planted"):
        best.write(run, "stage2", old, EE, _meta(0))
        weights = storage.join(run, "best", "stage2", "weights.pt")
        if storage.is_remote(run):
            storage.write_bytes(str(weights), b"not the sealed weights")
        else:
            Path(weights).write_bytes(b"not the sealed weights")
        with pytest.raises(checkpoint.CheckpointError, match=rf"^{re.escape(str(weights))}: changed") as e:
            best.recover(run, "stage2")
        assert "\n" not in str(e.value)
    assert best.recover(tmp_path / "nothing", "stage2") is None
    assert best.recover(f"{bucket}/nothing", "stage2") is None
