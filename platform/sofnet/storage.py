"""Where runs and shards live: a local path or an object-store prefix (``s3://``, ``gs://``); the one owner of the
difference, so that no other module spells out pyarrow or splits a URI.

A run on several nodes that share no disk keeps its run directory (Ray Train's storage, ``train.output_dir``) and
its shards in a bucket. Ray Train reads and writes its storage with pyarrow; so does this module, with the same
credentials and endpoint: the standard variables (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``,
``AWS_DEFAULT_REGION``, ``AWS_ENDPOINT_URL`` for an S3-compatible server; ``GOOGLE_APPLICATION_CREDENTIALS``)::

    from sofnet import storage
    run = storage.join("s3://bucket/runs", "demo")           # 's3://bucket/runs/demo'; a Path for a local base
    storage.upload_dir("/tmp/best", storage.join(run, "best", "stage1"), last="SEAL.rank0.json")
    storage.download_dir(storage.join(run, "best", "stage1"), "/tmp/copy")
    storage.check_writable("s3://bucket/runs", key="train.output_dir")   # StorageError: one line, bounded in time
    storage.check_readable("s3://bucket/videos", key="--videos")          # a prefix with objects, bounded in time
    storage.list_files("s3://bucket/videos")                              # ['a.mp4', 'train/b.mkv'], any depth
    storage.download_file("s3://bucket/videos/a.mp4", "/tmp/a.mp4", timeout_s=600)

Object stores have no directory rename: :func:`upload_dir` replaces a prefix object by object and writes ``last``
(a checkpoint's seal) after every other file, after deleting the old one first, so a reader never sees a seal that
vouches for a half-written directory (:mod:`sofnet.checkpoint` refuses a directory without a matching seal).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any, List, Tuple, Union

# Each object store's scheme, and the variable that points its client at another server (pyarrow reads both; unset,
# the cloud's own): the one list of the stores this module knows.
_ENDPOINT_VARIABLES = {"s3://": "AWS_ENDPOINT_URL", "gs://": "CLOUD_STORAGE_EMULATOR_ENDPOINT"}
OBJECT_STORES = tuple(_ENDPOINT_VARIABLES)
PathLike = Union[str, os.PathLike]


class StorageError(OSError):
    """An object-store location that cannot be used, as one line naming it and the problem."""


def is_remote(path: PathLike) -> bool:
    """``path`` is an object-store URI (``s3://``, ``gs://``)."""
    return os.fspath(path).startswith(OBJECT_STORES)


def join(base: PathLike, *parts: str) -> Union[str, Path]:
    """``base/parts...``: a URI string for an object-store base (``Path`` would fold ``s3://`` into ``s3:/``), else a
    ``Path``."""
    if is_remote(base):
        return "/".join([os.fspath(base).rstrip("/"), *(p.strip("/") for p in parts)])
    return Path(base).joinpath(*parts)


def filesystem(uri: str) -> Tuple[Any, str]:
    """(pyarrow filesystem, path inside it) of an object-store URI."""
    import pyarrow.fs as pafs

    return pafs.FileSystem.from_uri(uri.rstrip("/"))


def kind(uri: str) -> str:
    """``file``, ``directory`` or ``missing`` (an object store's "directory" is a prefix that has objects)."""
    import pyarrow.fs as pafs

    fs, path = filesystem(uri)
    t = fs.get_file_info(path).type
    return {pafs.FileType.File: "file", pafs.FileType.Directory: "directory"}.get(t, "missing")


def is_dir(path: PathLike) -> bool:
    """A local directory, or an object-store prefix that has objects."""
    return kind(os.fspath(path)) == "directory" if is_remote(path) else Path(path).is_dir()


def open_input(uri: str) -> Any:
    """A readable stream of one object; FileNotFoundError where there is none."""
    fs, path = filesystem(uri)
    if kind(uri) != "file":
        raise FileNotFoundError(f"{uri} does not exist")
    return fs.open_input_stream(path)


def read_text(uri: str) -> str:
    with open_input(uri) as f:
        return f.read().decode("utf-8")


def fetch_bytes(uri: str, timeout_s: float = 30) -> bytes:
    """One small object (an annotation file), read within ``timeout_s``.

    Raises:
        StorageError: ``<uri>: no such object`` / ``cannot read there (...)`` / ``no answer within ...``.
    """
    found, data = _bounded("read", "", uri, "cannot read there", timeout_s)
    if found != "file":
        raise StorageError(f"{uri}: no such object")
    return data


def list_names(uri: str, directories: bool = False) -> List[str]:
    """Base names of the objects (or, with ``directories``, the sub-prefixes) directly under ``uri``; [] if none."""
    import pyarrow.fs as pafs

    fs, root = filesystem(uri)
    if not directories:
        return sorted(i.base_name for i in fs.get_file_info(pafs.FileSelector(root, allow_not_found=True))
                      if i.type == pafs.FileType.File)
    # Sub-prefixes from the objects' names, at any depth: pyarrow's GCS client lists a "directory" only where a
    # marker object names it (its own create_dir writes one; an object written by path, as upload_dir does, makes
    # none), so a direct listing misses them there. Costs one listing of everything under ``uri``.
    root = root.rstrip("/")
    infos = fs.get_file_info(pafs.FileSelector(root, recursive=True, allow_not_found=True))
    rels = [i.path[len(root):].strip("/") for i in infos]
    return sorted({r.split("/", 1)[0] for r, i in zip(rels, infos)
                   if "/" in r or (r and i.type == pafs.FileType.Directory)})


def list_files(uri: str) -> List[str]:
    """Paths, relative to ``uri`` and with ``/``, of every object under it at any depth, sorted; [] if none."""
    import pyarrow.fs as pafs

    fs, root = filesystem(uri)
    root = root.rstrip("/")
    infos = fs.get_file_info(pafs.FileSelector(root, recursive=True, allow_not_found=True))
    return sorted(i.path[len(root):].lstrip("/") for i in infos if i.type == pafs.FileType.File)


def download_file(uri: str, local: PathLike, timeout_s: float | None = None) -> None:
    """Copy one object to the local file ``local``, streamed in 4 MiB blocks.

    Raises:
        FileNotFoundError: No such object.
        TimeoutError: The copy took over ``timeout_s`` (checked between blocks; one stalled block is bounded by the
            client's own request timeout).
    """
    end = None if timeout_s is None else time.monotonic() + timeout_s
    with open_input(uri) as src, open(local, "wb") as out:
        while chunk := src.read(1 << 22):
            out.write(chunk)
            if end is not None and time.monotonic() > end:
                raise TimeoutError(f"{uri}: not downloaded within {timeout_s:g} s")


def write_bytes(uri: str, data: bytes) -> None:
    """One object with ``data`` (a single PUT: readers see the old object or the new one, never a part)."""
    fs, path = filesystem(uri)
    with fs.open_output_stream(path) as out:
        out.write(data)


# Upload block: pyarrow's GCS stream sends each write as one request of a resumable upload, so 4 MiB blocks made a
# 75 MB checkpoint 18 requests (20 s against the GCS emulator; 3.7 s in 32 MiB blocks). Costs 32 MiB of memory.
_UPLOAD_BLOCK = 1 << 25


def upload_file(local: PathLike, uri: str) -> None:
    """Copy one local file to the object ``uri`` (streamed in 32 MiB blocks)."""
    fs, path = filesystem(uri)
    with fs.open_output_stream(path) as out, open(local, "rb") as f:
        while chunk := f.read(_UPLOAD_BLOCK):
            out.write(chunk)


def delete(uri: str) -> None:
    """Delete one object; nothing if there is none."""
    fs, path = filesystem(uri)
    try:
        fs.delete_file(path)
    except FileNotFoundError:
        pass


def delete_dir(uri: str, first: str = "") -> None:
    """Delete every object under the prefix ``uri``, the one named ``first`` (a checkpoint's seal) before the others,
    so that a deletion cut part-way leaves a copy every load refuses, not one that passes with files missing."""
    import pyarrow.fs as pafs

    if first:
        delete(f"{uri.rstrip('/')}/{first}")
    for rel in list_files(uri):
        delete(f"{uri.rstrip('/')}/{rel}")
    fs, root = filesystem(uri)  # pyarrow's S3 client leaves a marker object for the emptied "directory": removed
    if fs.get_file_info(root.rstrip("/")).type == pafs.FileType.Directory:
        fs.delete_dir(root.rstrip("/"))


def download_dir(uri: str, local: PathLike) -> Path:
    """Copy every object under ``uri`` into the local directory ``local`` (created); returns it.

    Object by object from the listing, local folders made from the names (``pyarrow.fs.copy_files`` makes only the
    folders the store lists as directories, which GCS does not without marker objects: see :func:`list_names`)."""
    dest = Path(local)
    dest.mkdir(parents=True, exist_ok=True)
    for rel in list_files(uri):
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        download_file(f"{uri.rstrip('/')}/{rel}", dest / rel)
    return dest


def upload_dir(local: PathLike, uri: str, last: str = "") -> None:
    """Replace the prefix ``uri`` with the files of the local directory ``local``.

    Args:
        last: A file name written after every other file; its old copy is deleted before anything is written
            (a checkpoint's seal: a crash part-way leaves no seal, never an old seal over new files).
    """
    import pyarrow.fs as pafs

    fs, root = filesystem(uri)
    src = Path(local)
    files = sorted(p for p in src.rglob("*") if p.is_file())
    if last:
        delete(f"{uri.rstrip('/')}/{last}")
    stale = {i.path for i in fs.get_file_info(pafs.FileSelector(root, recursive=True, allow_not_found=True))
             if i.type == pafs.FileType.File}
    for p in sorted(files, key=lambda p: p.name == last):
        rel = p.relative_to(src).as_posix()
        upload_file(p, f"{uri.rstrip('/')}/{rel}")
        stale.discard(f"{root}/{rel}")
    for path in stale - {f"{root}/{last}"}:  # files of the old copy the new one does not have
        fs.delete_file(path)


def _endpoint(uri: str) -> str:
    """``AWS_ENDPOINT_URL=<value or unset>`` for an ``s3://`` URI, ``CLOUD_STORAGE_EMULATOR_ENDPOINT=...`` for
    ``gs://``."""
    name = next(v for scheme, v in _ENDPOINT_VARIABLES.items() if uri.startswith(scheme))
    return f"{name}={os.environ.get(name, 'unset')}"


def _hint(uri: str) -> str:
    """What a timeout may mean beside an endpoint that does not answer: an emulator addressed without ``anonymous@``
    (pyarrow's GCS client then first looks for Google credentials, which off the cloud it waits on for minutes)."""
    if not uri.startswith("gs://") or not os.environ.get(_ENDPOINT_VARIABLES["gs://"]):
        return ""
    bucket = uri[len("gs://"):].split("/", 1)[0]
    return "" if "@" in bucket else f"; an emulator's URIs take no login: gs://anonymous@{uri[len('gs://'):]}"


# The bounded calls run in a child process that is killed at the deadline. A thread cannot be stopped: one left
# waiting on an endpoint that never answers kept the command alive after its one-line error, ~10 min with gs://
# (the GCS client retries; concurrent.futures joins its threads at exit) and without end with s3:// (pyarrow's exit
# hook waits for requests in flight). Costs one interpreter start (~0.3 s) per check, on object stores only.
_CHILD = """
import sys
import pyarrow.fs as pafs
op, uri = sys.argv[1], sys.argv[2]
out = sys.stdout.buffer
try:
    fs, path = pafs.FileSystem.from_uri(uri.rstrip("/"))
    if op == "write":
        with fs.open_output_stream(path) as stream:
            stream.write(b"ok")
        fs.delete_file(path)
        out.write(b"ok\\n")
    else:
        kind = {pafs.FileType.File: "file", pafs.FileType.Directory: "directory"}.get(fs.get_file_info(path).type,
                                                                                       "missing")
        out.write(f"{kind}\\n".encode())
        if op == "read" and kind == "file":
            with fs.open_input_stream(path) as stream:
                out.write(stream.read())
except (OSError, ValueError) as e:
    out.write(("error " + " ".join(str(e).split())[:200] + "\\n").encode())
"""


def _bounded(op: str, key: str, uri: str, what: str, timeout_s: float, target: str = "") -> Tuple[str, bytes]:
    """``op`` on ``target`` (default ``uri``) within ``timeout_s``: ``write`` (an object written and deleted),
    ``kind``, ``read`` (the kind and, for a file, its bytes); returns (kind or "ok", bytes). Its failure as
    :class:`StorageError` ``<key>=<uri>: <what> (<why>)`` (``<uri>: ...`` without a key)."""
    where = f"{key}={uri}" if key else uri
    try:
        done = subprocess.run([sys.executable, "-c", _CHILD, op, target or uri], capture_output=True,
                              stdin=subprocess.DEVNULL, timeout=timeout_s)
    except subprocess.TimeoutExpired:  # the child is killed and reaped
        raise StorageError(f"{where}: no answer within {timeout_s:.0f} s (endpoint {_endpoint(uri)}){_hint(uri)}") \
            from None
    status, _, data = done.stdout.partition(b"\n")
    status = status.decode("utf-8", "replace")
    if done.returncode != 0 or not status:
        why = (done.stderr.decode("utf-8", "replace").strip().splitlines() or [f"exit {done.returncode}"])[-1]
        raise StorageError(f"{where}: {what} ({why[:200]})")
    if status.startswith("error "):
        raise StorageError(f"{where}: {what} ({status[6:]})")
    return status, data


def check_writable(uri: str, key: str, timeout_s: float = 30) -> None:
    """Write and delete one small object under ``uri``, within ``timeout_s``.

    Raises:
        StorageError: ``<key>=<uri>: cannot write there (...)``: no such bucket, no credentials, unreachable.
    """
    probe = f"{uri.rstrip('/')}/.sofnet-write-check-{uuid.uuid4().hex[:12]}"
    _bounded("write", key, uri, "cannot write there", timeout_s, target=probe)


def check_readable(uri: str, key: str, timeout_s: float = 30) -> None:
    """``uri`` is a prefix with objects under it, and can be listed within ``timeout_s``.

    Raises:
        StorageError: ``<key>=<uri>: cannot read there (...)`` / ``no objects there`` / ``is one object, not a
            prefix``.
    """
    found, _ = _bounded("kind", key, uri, "cannot read there", timeout_s)
    if found == "missing":
        raise StorageError(f"{key}={uri}: no objects there (no such bucket or prefix)")
    if found == "file":
        raise StorageError(f"{key}={uri}: is one object, not a prefix")
