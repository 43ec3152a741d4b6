"""Checks of data_prep's inputs before any work: one exception, one line, the flag or file it is about.

Usage::

    from data_prep.checks import InputError, check_number, check_out_dir, check_videos_dir, read_text
    check_number("--fps", 0.0, low=0.0, low_open=True)   # InputError: --fps: must be > 0, got 0
    check_videos_dir("videos/")                          # exists, is a folder, can be listed (or s3://: has objects)
    check_out_dir("shards/")                             # a folder can be written there (nothing is left behind)
    text = read_text("classInd.txt")                     # UTF-8, not empty, or InputError naming the file

The commands catch :class:`InputError` and print ``error: <message>`` as one line on stderr, exit status 2
(see :func:`data_prep.cli.main_guard`); from Python it is a ``ValueError`` whose message starts with the flag or
the file. Everything here only reads, except :func:`check_out_dir`, which creates and removes a probe folder.
"""

from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path
from typing import Callable

from sofnet import storage


class InputError(ValueError):
    """Bad input found before work starts; ``str(error)`` is ``<flag or file>: <problem>``."""


def check_number(
    flag: str,
    value: float,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
) -> None:
    """Refuse a value that is not a finite number in ``[low, high]`` (``(low, high]`` with ``low_open``).

    Raises:
        InputError: ``<flag>: must be ...``.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InputError(f"{flag}: must be a finite number, got {value!r}")
    if low is not None and (value <= low if low_open else value < low):
        raise InputError(f"{flag}: must be {'>' if low_open else '>='} {low:g}, got {value:g}")
    if high is not None and value > high:
        raise InputError(f"{flag}: must be <= {high:g}, got {value:g}")


def _check_remote(check: Callable[..., None], path: str | Path, flag: str) -> None:
    """``check`` (a :mod:`sofnet.storage` probe, bounded in time) on an object-store ``path``; its ``--flag=s3://...:
    problem`` raised as ``--flag s3://...: problem``, the wording of every other flag here."""
    try:
        check(os.fspath(path), key=flag)
    except storage.StorageError as error:
        raise InputError(str(error).replace(f"{flag}=", f"{flag} ", 1)) from None


def check_videos_dir(path: str | Path, flag: str = "--videos") -> None:
    """The videos folder exists, is a folder, and can be listed; an object-store prefix has objects (bounded in time).

    Raises:
        InputError: ``--videos DIR: ...``.
    """
    if storage.is_remote(path):
        _check_remote(storage.check_readable, path, flag)
        return
    folder = Path(path)
    if not folder.exists():
        raise InputError(f"{flag} {folder}: no such folder")
    if not folder.is_dir():
        raise InputError(f"{flag} {folder}: not a folder")
    try:
        next(os.scandir(folder), None)
    except OSError as error:
        raise InputError(f"{flag} {folder}: cannot be read ({error.strerror})") from None


def check_out_dir(path: str | Path, flag: str = "--out") -> None:
    """A folder can be created at ``path`` (or it exists and can be written): probed with a folder, removed again.

    A probe rather than ``os.access``: as root ``access`` says yes to read-only mounts and ``/proc``.

    Raises:
        InputError: ``--out DIR: ...``.
    """
    if storage.is_remote(path):  # one small object written and deleted there, bounded in time
        _check_remote(storage.check_writable, path, flag)
        return
    target = Path(path)
    existing = target
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    if not existing.is_dir():
        what = "is" if existing == target else f"is under {existing}, which is"
        raise InputError(f"{flag} {target}: {what} not a folder")
    try:
        probe = tempfile.mkdtemp(prefix=".data_prep-probe-", dir=existing)
    except OSError as error:
        where = "" if existing == target else f" (in {existing})"
        raise InputError(f"{flag} {target}: cannot write there{where}: {error.strerror}") from None
    os.rmdir(probe)


def read_text(path: str | Path) -> str:
    """The text of an annotation or class file: UTF-8 (a byte-order mark is dropped), not empty.

    Raises:
        InputError: ``<file>: no such file`` / ``not a file`` / ``cannot be read`` / ``not UTF-8 text`` / ``empty``.
    """
    if storage.is_remote(path):  # a cluster without a shared disk keeps its annotations in the bucket too
        try:
            data = storage.fetch_bytes(os.fspath(path))
        except storage.StorageError as error:
            raise InputError(str(error)) from None
        return _text(path, data)
    file = Path(path)
    try:
        data = file.read_bytes()
    except FileNotFoundError:
        raise InputError(f"{file}: no such file") from None
    except IsADirectoryError:
        raise InputError(f"{file}: is a folder, not a file") from None
    except OSError as error:
        raise InputError(f"{file}: cannot be read ({error.strerror})") from None
    return _text(file, data)


def _text(file: str | Path, data: bytes) -> str:
    """UTF-8 (a byte-order mark dropped), not empty."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise InputError(f"{file}: line {line}: not UTF-8 text (byte 0x{data[error.start]:02x})") from None
    if not text.strip():
        raise InputError(f"{file}: empty file")
    return text
