"""The output folder of a data prep run: a local folder or an object-store prefix, behind one interface, so that
the runner, the shard writer, the reuse checks and the manifest never branch on where the shards go.

    out = OutDir("s3://bucket/shards/anet")        # or "data/shards/anet"
    out.write_text(".state/run.json", text)        # local: temp file, fsync, rename; object store: one PUT
    out.read_json(".state/run.json")               # None when missing or unreadable
    out.names(".state", suffix=".tar.json")        # base names of the files directly there
    with out.staging("training-000000.tar") as tmp:   # build the shard in tmp (a local file) ...
        ...
    out.publish(tmp, "training-000000.tar")        # ... then move it into place (rename; or upload, then delete)

With an object store (``--out s3://bucket/prefix``, ``gs://``) every shard task builds its shard in a temporary
folder on its own node and uploads it; the state, the manifest and the report are objects beside the shards, and the
driver reads them from the bucket: the nodes share no disk. An object appears whole or not at all, so a reader never
sees half a shard, as the rename gives on a disk. Credentials and endpoint come from the standard variables
(``AWS_ACCESS_KEY_ID``, ``AWS_ENDPOINT_URL``, ...: :mod:`sofnet.storage`, which owns the object-store access).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from sofnet import storage

STATE = ".state"  # the resume bookkeeping folder inside an output folder (data_prep.shards documents its files)


def sha256_of(handle: BinaryIO) -> str:
    """Hex SHA-256 of what a binary stream holds (read in 1 MiB blocks)."""
    digest = hashlib.sha256()
    while block := handle.read(1 << 20):
        digest.update(block)
    return digest.hexdigest()


def atomic_write(path: Path, text: str) -> None:
    """Write a text file under a temporary name, flush it to disk, rename it into place."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


class OutDir:
    """A data prep output folder (see the module docstring); paths inside it are ``/``-separated relative names."""

    def __init__(self, root: str | os.PathLike | OutDir) -> None:
        text = str(root) if isinstance(root, OutDir) else os.fspath(root)
        self.remote = storage.is_remote(text)
        self.root = text.rstrip("/") if self.remote else text

    def __str__(self) -> str:
        return self.root

    def where(self, rel: str) -> str:
        """The full path or URI of ``rel`` (for messages and logs)."""
        return f"{self.root}/{rel}" if self.remote else str(Path(self.root) / rel)

    def local(self, rel: str) -> Path:
        """The local path of ``rel`` (a local folder only)."""
        assert not self.remote, "an object-store folder has no local paths"
        return Path(self.root) / rel

    def prepare(self) -> None:
        """Create the folder and its ``.state`` (an object store needs nothing made)."""
        if not self.remote:
            (Path(self.root) / STATE).mkdir(parents=True, exist_ok=True)

    def exists(self, rel: str) -> bool:
        return storage.kind(self.where(rel)) == "file" if self.remote else self.local(rel).is_file()

    def read_text(self, rel: str) -> str | None:
        """The text of ``rel``; None when it is missing or unreadable."""
        try:
            return storage.read_text(self.where(rel)) if self.remote else self.local(rel).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            return None

    def read_json(self, rel: str) -> dict | None:
        text = self.read_text(rel)
        try:
            return json.loads(text) if text is not None else None
        except ValueError:
            return None

    def write_text(self, rel: str, text: str, durable: bool = True) -> None:
        """Replace ``rel`` with ``text`` whole (``durable=False``: a plain write on a disk, for a marker rewritten
        often)."""
        if self.remote:
            storage.write_bytes(self.where(rel), text.encode("utf-8"))
        elif durable:
            atomic_write(self.local(rel), text)
        else:
            self.local(rel).write_text(text, encoding="utf-8")

    def delete(self, rel: str) -> None:
        if self.remote:
            storage.delete(self.where(rel))
        else:
            self.local(rel).unlink(missing_ok=True)

    def names(self, folder: str = "", suffix: str = "", prefix: str = "") -> list[str]:
        """Base names of the files directly in ``folder`` that start with ``prefix`` and end with ``suffix``."""
        if self.remote:
            found = storage.list_names(self.where(folder) if folder else self.root)
        else:
            base = Path(self.root) / folder
            found = sorted(p.name for p in base.iterdir() if p.is_file()) if base.is_dir() else []
        return [n for n in found if n.startswith(prefix) and n.endswith(suffix)]

    @contextlib.contextmanager
    def staging(self, name: str) -> Iterator[Path]:
        """A local file to build ``name`` in: beside it on a disk (the rename is then atomic), else in a temporary
        folder of this node, removed on exit."""
        if not self.remote:
            yield Path(self.root) / f".{name}.tmp"
            return
        with tempfile.TemporaryDirectory(prefix="data_prep-") as tmp:
            yield Path(tmp) / name

    def publish(self, built: Path, name: str) -> None:
        """Move the finished local file ``built`` into place as ``name`` (rename, or upload and delete it)."""
        if self.remote:
            storage.upload_file(built, self.where(name))
            built.unlink()
        else:
            os.replace(built, self.local(name))

    def sha256(self, rel: str) -> str:
        """Hex SHA-256 of a file's bytes."""
        with (storage.open_input(self.where(rel)) if self.remote else open(self.local(rel), "rb")) as handle:
            return sha256_of(handle)
