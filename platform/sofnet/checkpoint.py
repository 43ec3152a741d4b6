"""The one reader and writer of checkpoints and run directories: tensors + JSON, sealed, never unpickled.

A run directory (``<train.output_dir>/<name>``, Ray Train's storage) holds::

    checkpoint-<stage>-epoch<NNN>/      one per epoch, Ray Train's retention keeps ``train.keep_checkpoints``
        weights.pt                      the network's state dict, fp32 tensors only (rank 0)
        model.json                      {"format", "model": hparams, "early_exit": {...}} (rank 0)
        meta.json                       {"format", "stage", "epoch", "epochs", "world", "runs", "best"} (rank 0)
        ds/...                          DeepSpeed's engine state (every rank its part): used only to resume
        SEAL.rank<r>.json               sha256 and size of every file rank r wrote, written last
    best/<stage>/                       the stage's best epoch by the primary metric: weights.pt, model.json,
                                        meta.json, SEAL.rank0.json (written by :mod:`sofnet.best`, which leaves a
                                        whole copy wherever a write is cut and restores it on resume)

The run directory may be an object-store prefix (``s3://bucket/runs/<name>``, :mod:`sofnet.storage`): a load
downloads the one checkpoint it needs to a temporary directory and verifies that copy.

Every load verifies the seals first (a missing, changed, truncated or unlisted file is refused with one line),
and every ``.pt`` is read with ``torch.load(weights_only=True)``: DeepSpeed's own loader unpickles with
``weights_only=False``, so :func:`restore_engine` swaps it for a loader that allows only the three plain types
DeepSpeed really stores besides tensors. A file planted in a run directory (shared storage) therefore never runs
code: it fails the seal, and a re-sealed one still fails the weights-only load. Usage::

    from sofnet import checkpoint
    checkpoint.write_model(tmp, model, early_exit={"enabled": True, "rho": 0.999, "t_min": 4, "mode": "reached"})
    checkpoint.write_meta(tmp, {"stage": "stage2", "epoch": 3, ...}); checkpoint.seal(tmp, rank=0)
    checkpoint.restore_engine(engine, ckpt_dir)               # resume: verified, weights-only
    model, spec = checkpoint.load_network("runs/demo")        # the final stage's best epoch of a run
    state = checkpoint.load_state("runs/demo/best/stage1")    # init_from: a state dict (dir, .pt or models:/ URI)
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import pickle
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Dict, Iterable, Iterator, Mapping, Optional, Tuple

import torch

from sofnet import storage
from sofnet.schema import STAGE_NAMES

logger = logging.getLogger(__name__)

FORMAT = 1
WEIGHTS, MODEL, META, DS_TAG, BEST = "weights.pt", "model.json", "meta.json", "ds", "best"
SEAL_PREFIX = "SEAL.rank"
CUT_BEST = "a best epoch whose write was cut part-way: resuming its job restores it, see sofnet.best"
STAGE_ORDER = STAGE_NAMES  # stage3: AR-Net's fine-tuning


class CheckpointError(ValueError):
    """A checkpoint that cannot be used, phrased as one line naming the path and the problem."""


# --- writing -----------------------------------------------------------------------------------------------------

STAGING = "sofnet-staging-"


@contextlib.contextmanager
def staging_dir() -> Iterator[Path]:
    """A new local directory to assemble a checkpoint in before it is copied to storage (Ray Train's report, an
    upload of ``best/``), removed on exit. A worker SIGKILLed while saving (the OOM killer, a lost node) cannot remove
    its own, and each holds a whole checkpoint with the engine's state (~180 MB for the tests' tiny ResNet, GBs for
    ResNet-50), so each new one first removes those left by processes of this host that no longer run (the pid is
    in the name; a live pid, even a reused one, is left alone). Hosts whose containers share one temporary directory
    but not one PID namespace should give each its own ``TMPDIR``."""
    for old in Path(tempfile.gettempdir()).glob(f"{STAGING}*-*"):
        pid = old.name[len(STAGING):].split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(old, ignore_errors=True)
    with tempfile.TemporaryDirectory(prefix=f"{STAGING}{os.getpid()}-") as tmp:
        yield Path(tmp)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        pass
    return True


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_bytes(data)
    tmp.replace(path)


def write_model(directory: str | Path, model: torch.nn.Module, early_exit: Optional[Mapping[str, Any]] = None) -> None:
    """Write ``weights.pt`` (fp32 state dict) and ``model.json`` (hyper-parameters + early-exit setting)."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().float() if v.is_floating_point() else v.detach().cpu()
             for k, v in model.state_dict().items()}
    tmp = d / f".{WEIGHTS}.tmp{os.getpid()}"
    torch.save(state, tmp)
    tmp.replace(d / WEIGHTS)
    spec = {"format": FORMAT, "model": model.hparams(), "early_exit": dict(early_exit or {})}
    _atomic_write(d / MODEL, json.dumps(spec, indent=1).encode())


def write_meta(directory: str | Path, meta: Mapping[str, Any]) -> None:
    """Write ``meta.json`` (what the checkpoint is: stage, epoch, world size, MLflow runs, best score)."""
    _atomic_write(Path(directory) / META, json.dumps({"format": FORMAT, **meta}, indent=1).encode())


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _files(directory: Path) -> Iterable[Path]:
    return sorted(p for p in directory.rglob("*") if p.is_file() and not p.name.startswith(SEAL_PREFIX))


def seal(directory: str | Path, rank: int = 0, files: Optional[Iterable[Path]] = None) -> Path:
    """Write ``SEAL.rank<rank>.json``: sha256 and size of ``files`` (default: every file in ``directory``)."""
    d = Path(directory)
    listed = {str(p.relative_to(d)): {"sha256": _sha256(p), "bytes": p.stat().st_size}
              for p in (files if files is not None else _files(d))}
    path = d / f"{SEAL_PREFIX}{rank}.json"
    _atomic_write(path, json.dumps({"format": FORMAT, "files": listed}, indent=1).encode())
    return path


# --- reading -----------------------------------------------------------------------------------------------------


def verify(directory: str | Path) -> Dict[str, Any]:
    """Check the seals of a checkpoint directory; returns its ``meta.json`` (``{}`` where there is none).

    Raises:
        CheckpointError: no seal, a listed file missing or changed, a file no seal lists, or bad JSON.
    """
    d = Path(directory)
    seals = sorted(d.glob(f"{SEAL_PREFIX}*.json"))
    if not seals:
        why = CUT_BEST if d.parent.name == BEST else "written by another version or not by training"
        raise CheckpointError(f"{d}: not a sealed checkpoint (no {SEAL_PREFIX}<r>.json; {why})")
    listed: Dict[str, Dict[str, Any]] = {}
    for s in seals:
        listed.update(_read_json(s).get("files", {}))
    for rel, want in listed.items():
        p = d / rel
        if not p.is_file():
            raise CheckpointError(f"{p}: listed in the checkpoint's seal but missing")
        if p.stat().st_size != want["bytes"] or _sha256(p) != want["sha256"]:
            raise CheckpointError(f"{p}: changed since it was written (size or sha256 differs from the seal); refusing "
                                  "to load it")
    extra = [str(p.relative_to(d)) for p in _files(d) if str(p.relative_to(d)) not in listed]
    if extra:
        raise CheckpointError(f"{d / extra[0]}: not written by training (no seal lists it); refusing the checkpoint")
    meta = _read_json(d / META) if (d / META).is_file() else {}
    world = int(meta.get("world", 1) or 1)
    if len(seals) < world:
        raise CheckpointError(f"{d}: {len(seals)} of {world} ranks sealed their part (an interrupted save)")
    return meta


def _read_json(path: Path) -> Dict[str, Any]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise CheckpointError(f"{path}: not readable JSON ({str(e).splitlines()[0][:120]})") from None
    if not isinstance(value, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    return value


def _deepspeed_safe_types() -> list:
    """The non-tensor types DeepSpeed's ZeRO optimizer states hold (found by ``get_unsafe_globals_in_checkpoint``)."""
    try:
        from deepspeed.runtime.fp16.loss_scaler import LossScaler
        from deepspeed.runtime.zero.config import ZeroStageEnum
        from deepspeed.utils.tensor_fragment import fragment_address
    except ImportError:  # evaluation-only installs: plain state dicts need none of them
        return []
    return [fragment_address, LossScaler, ZeroStageEnum]


def safe_load(path: str | Path, map_location: Any = "cpu") -> Any:
    """``torch.load(weights_only=True)`` with DeepSpeed's plain types allowed; anything else is refused.

    Raises:
        CheckpointError: the file is missing, truncated, not a torch file, or holds objects other than tensors and
            plain containers (a pickle payload is never executed).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: missing")
    try:
        with torch.serialization.safe_globals(_deepspeed_safe_types()):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        why = str(e).split("WeightsUnpickler error:")[-1].strip().splitlines()[0][:160]
        raise CheckpointError(f"{path}: refused: holds objects other than tensors ({why})") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not a readable torch file ({str(e).splitlines()[0][:160]})") from None


def restore_engine(engine: Any, directory: str | Path) -> Dict[str, Any]:
    """Resume a DeepSpeed engine (weights and optimizer state) from a verified checkpoint; returns its meta.

    DeepSpeed reads every file through ``engine.checkpoint_engine.load``, which unpickles with
    ``weights_only=False``; that method is replaced on this engine by :func:`safe_load`.
    """
    meta = verify(directory)
    engine.checkpoint_engine.load = lambda path, map_location=None: safe_load(path, map_location or "cpu")
    load_path, _ = engine.load_checkpoint(str(directory), tag=DS_TAG, load_optimizer_states=True,
                                          load_lr_scheduler_states=False)
    if load_path is None:
        raise CheckpointError(f"{directory}: DeepSpeed found no engine state under {DS_TAG}/")
    return meta


def read_meta(directory: str | Path) -> Dict[str, Any]:
    """The verified ``meta.json`` of a checkpoint directory."""
    meta = verify(directory)
    if not meta:
        raise CheckpointError(f"{Path(directory) / META}: missing")
    return meta


def epoch_checkpoints(run_dir: Path) -> list[Path]:
    """The ``checkpoint-*`` directories of a run directory, oldest (stage, epoch) first."""
    found = [p for p in run_dir.glob("checkpoint-*") if (p / META).is_file()]

    return sorted(found, key=lambda p: order_key(_read_json(p / META)))


def order_key(meta: Mapping[str, Any]) -> Tuple[int, int]:
    return (STAGE_ORDER.index(meta["stage"]) if meta.get("stage") in STAGE_ORDER else -1, int(meta.get("epoch", -1)))


def remote_choice(uri: str, which: str = "best") -> str:
    """The URI of the one checkpoint directory an object-store URI names (see :func:`resolve`)."""
    uri = uri.rstrip("/")
    try:
        if storage.kind(uri) == "missing":
            raise CheckpointError(f"{uri}: no such checkpoint or run directory")
        if storage.kind(f"{uri}/{WEIGHTS}") == "file" or storage.kind(f"{uri}/{MODEL}") == "file":
            return uri
        bests = [f"{uri}/{BEST}/{s}" for s in STAGE_ORDER if storage.kind(f"{uri}/{BEST}/{s}/{WEIGHTS}") == "file"]
        if which == "best" and bests:
            return bests[-1]
        epochs = [f"{uri}/{e}" for e in storage.list_names(uri, directories=True)
                  if e.startswith("checkpoint-") and storage.kind(f"{uri}/{e}/{META}") == "file"]
        if not epochs:
            raise CheckpointError(f"{uri}: no checkpoint here (expected a run directory with best/ or checkpoint-*/, "
                                  f"or a checkpoint directory with {WEIGHTS})")
        return max(epochs, key=lambda e: order_key(json.loads(storage.read_text(f"{e}/{META}"))))
    except (OSError, ValueError) as e:
        if isinstance(e, CheckpointError):
            raise
        raise CheckpointError(f"{uri}: cannot read it ({' '.join(str(e).split())[:200]})") from None


def download(chosen: str, local: Path) -> Path:
    """Copy the object-store checkpoint directory ``chosen`` to ``local``; an unreadable one is one
    :class:`CheckpointError` line."""
    try:
        storage.download_dir(chosen, local)
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{chosen}: cannot read it ({' '.join(str(e).split())[:200]})") from None
    logger.info("downloaded %s to %s", chosen, local)
    return local


@contextlib.contextmanager
def local_copy(path: str | Path, which: str = "best") -> Iterator[Tuple[Path, str]]:
    """(local checkpoint directory, its name for messages): ``path`` resolved, and for an object-store URI downloaded
    to a temporary directory removed on exit."""
    if not storage.is_remote(path):
        d = resolve(path, which)
        yield d, str(d)
        return
    chosen = remote_choice(str(path), which)
    with tempfile.TemporaryDirectory(prefix="sofnet-ckpt-") as tmp:
        *_, parent, name = ["", "", *chosen.split("/")]  # the copy ends as the object does: best/<stage> tells verify
        local = download(chosen, Path(tmp) / parent / name)
        try:
            yield local, chosen
        except CheckpointError as e:  # name the object, not the temporary copy that is gone after this line
            raise CheckpointError(str(e).replace(str(local), chosen)) from None


def hidden_copies(final: Path) -> list[Path]:
    """The folders ``.<stage>.*`` beside a local ``best/<stage>``: copies :mod:`sofnet.best` assembles or sets aside
    while it swaps a best in (a write cut between its renames leaves them, and no ``best/<stage>``)."""
    return sorted(p for p in final.parent.glob(f".{final.name}.*") if p.is_dir()) if final.parent.is_dir() else []


def resolve(path: str | Path, which: str = "best") -> Path:
    """The local checkpoint directory ``path`` names (for an object-store URI: :func:`local_copy`, whose download is
    removed after use; this function would have to leave it behind).

    Args:
        path: A checkpoint directory (holds ``weights.pt``), or a run directory.
        which: For a run directory: ``best`` (the final stage's best epoch; the official test script loads
            ``ckpt.best``) or ``last`` (its latest epoch checkpoint).

    Raises:
        CheckpointError: nothing usable there, said in one line.
        ValueError: an object-store URI (a caller's mistake: use :func:`local_copy`).
    """
    if storage.is_remote(path):
        raise ValueError(f"{path}: resolve() names local directories; read an object store's with local_copy()")
    p = Path(path)
    if not p.exists():
        cut = p.parent.name == BEST and bool(hidden_copies(p))
        raise CheckpointError(f"{p}: no such checkpoint or run directory" + (f" ({CUT_BEST})" if cut else ""))
    if p.is_file():
        raise CheckpointError(f"{p}: a file; give its checkpoint directory (the folder with {WEIGHTS} and {MODEL})")
    if (p / WEIGHTS).is_file() or (p / MODEL).is_file():
        return p
    if which == "best":
        bests = [p / BEST / s for s in STAGE_ORDER if (p / BEST / s / WEIGHTS).is_file()]
        if bests:
            return bests[-1]
    found = epoch_checkpoints(p)
    if found:
        return found[-1]
    raise CheckpointError(f"{p}: no checkpoint here (expected a run directory with best/ or checkpoint-*/, or a "
                          f"checkpoint directory with {WEIGHTS})")


def load_state(spec: str) -> Dict[str, torch.Tensor]:
    """A verified state dict from a checkpoint or run directory (best; local or object store), a sealed checkpoint's
    ``weights.pt``, or an MLflow model URI (``models:/name@alias``, ``runs:/id/model``)."""
    if spec.startswith(("models:/", "runs:/")):
        from sofnet.train.pyfunc import load_network as load_logged

        return load_logged(spec).state_dict()
    p = Path(spec)
    if not storage.is_remote(spec) and p.is_file() and p.name == WEIGHTS:
        verify(p.parent)
        return safe_load(p)
    with local_copy(spec) as (directory, _):
        verify(directory)
        return safe_load(directory / WEIGHTS)


def read_spec(directory: str | Path) -> Dict[str, Any]:
    """``model.json`` of a checkpoint directory, checked: ``{"model": hparams, "early_exit": {...}}``."""
    spec = _read_json(Path(directory) / MODEL)
    if not isinstance(spec.get("model"), dict):
        raise CheckpointError(f"{Path(directory) / MODEL}: no 'model' section")
    if int(spec.get("format", FORMAT)) > FORMAT:
        raise CheckpointError(f"{Path(directory) / MODEL}: format {spec['format']} is newer than this code ({FORMAT})")
    return spec


def conflicts(saved: Mapping[str, Any], given: Mapping[str, Any]) -> list[str]:
    """Model keys where ``given`` (a config's model section) differs from a checkpoint's ``saved`` hyper-parameters
    (keys that do not change the network, like ``pretrained``, are not compared)."""
    ignore = {"pretrained"}
    return sorted(k for k in saved if k in given and k not in ignore and saved[k] != given[k])


def build_network(spec: Mapping[str, Any], state: Mapping[str, torch.Tensor], source: str = "") -> torch.nn.Module:
    """Rebuild ``spec["model"]`` and load ``state`` strictly; a mismatch is one :class:`CheckpointError` line."""
    from sofnet.config import ConfigError, model_config
    from sofnet.models import build_model

    try:
        model = build_model(model_config(**{**spec["model"], "pretrained": "none"}))
    except (ConfigError, TypeError, ValueError) as e:
        raise CheckpointError(f"{source or 'model.json'}: cannot build its model ({str(e).splitlines()[0]})") from None
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise CheckpointError(f"{source or 'weights'}: weights do not fit the model in {MODEL} "
                              f"({' '.join(str(e).split())[:200]})") from None
    return model.eval()


def load_network(path: str | Path, which: str = "best",
                 expect: Optional[Mapping[str, Any]] = None) -> Tuple[torch.nn.Module, Dict[str, Any]]:
    """The network of a checkpoint or run directory (verified, weights-only) and its spec (``model.json`` plus
    ``path``: the checkpoint directory, ``meta``: its ``meta.json`` or ``{}``).

    Args:
        path: See :func:`resolve`; which: ``best`` or ``last`` for a run directory.
        expect: Model settings the caller was given (e.g. command-line overrides); any that conflict with the
            checkpoint's are refused, listed in one line.
    """
    with local_copy(path, which) as (directory, name):
        meta = verify(directory)
        spec = read_spec(directory)
        if expect:
            bad = conflicts(spec["model"], expect)
            if bad:
                listed = ", ".join(f"model.{k}={expect[k]!r} (checkpoint: {spec['model'][k]!r})" for k in bad)
                raise CheckpointError(f"{name}: the checkpoint's model conflicts with the given {listed}")
        model = build_network(spec, safe_load(directory / WEIGHTS), f"{name}/{WEIGHTS}")
    logger.info("loaded %s", name)
    spec["path"], spec["meta"] = name, meta
    return model, spec
