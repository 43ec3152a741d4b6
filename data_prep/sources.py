"""Where the videos are read from: a folder (local, or a mount every node sees) or an object-store prefix.

Usage::

    from data_prep.sources import VideoIndex, local_video
    index = VideoIndex("s3://bucket/anet/videos")     # or "videos/": every video file under it, any depth, listed once
    path = index.find(entry)                          # 's3://bucket/anet/videos/v_abc.mp4', or None
    with local_video(path, timeout_s=600) as file:    # a bucket's video is copied to a temp file on this node
        video = sample_video(file, ...)               # the copy is removed when the block ends

Why copy rather than stream: FFmpeg seeks (the index at a file's end, the seeks of sparse sampling) and a whole
video is tens of MB, so one sequential download per video costs less than many ranged reads, and the decoder's
timeout (:mod:`data_prep.deadline`) then covers decoding only. A shard task holds one video at a time on its disk.

A copy that fails because the object is gone (deleted since it was listed) or took over ``timeout_s`` makes the
video a :class:`~data_prep.decode.VideoError` (reported, not written, like an unreadable file); any other storage
error (credentials, an unreachable endpoint) raises :class:`~sofnet.storage.StorageError`, which fails the shard
task so that a rerun writes the shard, rather than reporting a good video as bad.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from data_prep.decode import VideoError
from data_prep.labels import Entry
from sofnet import storage

VIDEO_EXTENSIONS = (  # in order of preference when one id has several files; audio-only last (reported, not lost)
    ".mp4", ".mkv", ".webm", ".mov", ".avi", ".m4v", ".flv", ".mpg", ".mpeg", ".ts", ".mts", ".m2ts", ".vob", ".3gp",
    ".wmv", ".ogv", ".m4a", ".mka",
)


def _relative_files(root: str | Path) -> list[str]:
    """Every file under ``root``, relative to it with ``/``, any depth."""
    if storage.is_remote(root):
        return storage.list_files(os.fspath(root))
    return [os.path.relpath(os.path.join(folder, name), root).replace(os.sep, "/")
            for folder, _, files in os.walk(root) for name in files]


class VideoIndex:
    """Every video file under a folder or prefix, found by relative path or by name, with or without ``v_``."""

    def __init__(self, root: str | Path) -> None:
        """List ``root`` once (any depth; files with a common container extension, any case)."""
        self.remote = storage.is_remote(root)
        self.root: str | Path = os.fspath(root).rstrip("/") if self.remote else Path(root)
        self.by_rel: dict[str, str] = {}
        self.by_stem: dict[str, list[str]] = {}
        rank = {ext: i for i, ext in enumerate(VIDEO_EXTENSIONS)}
        found = sorted((rank[ext], rel) for rel in _relative_files(self.root)
                       if (ext := os.path.splitext(rel)[1].lower()) in rank)
        for _, rel in found:  # preferred extension first: mp4 wins over mkv for the same name
            path = f"{self.root}/{rel}" if self.remote else os.path.join(self.root, rel)
            self.by_rel.setdefault(os.path.splitext(rel)[0], path)
            self.by_stem.setdefault(os.path.splitext(rel.rsplit("/", 1)[-1])[0], []).append(path)
        self.files = {path for paths in self.by_stem.values() for path in paths}

    def _direct(self, name: str) -> str | None:
        """The file an annotation's path names (relative to the root; absolute only for a local root)."""
        if self.remote:
            path = f"{self.root}/{name.lstrip('/')}"
            return path if path in self.files else None
        direct = Path(name) if Path(name).is_absolute() else self.root / name
        return str(direct) if direct.is_file() else None

    def find(self, entry: Entry) -> str | None:
        """The file of a video: the path its annotation names, else its id (``v_`` added or removed).

        A name with a folder (``train/23701``) matches ``<videos>/train/23701.<ext>`` or a top-level
        ``<videos>/23701.<ext>``, never a file in another folder; a plain id matches a file at any depth.
        """
        if entry.path and (direct := self._direct(entry.path)):
            return direct
        names = [entry.path] if entry.path else []
        names += [entry.id, f"v_{entry.id}"] + ([entry.id[2:]] if entry.id.startswith("v_") else [])
        for name in names:
            stem = os.path.splitext(name)[0] if os.path.splitext(name)[1].lower() in VIDEO_EXTENSIONS else name
            if stem in self.by_rel:
                return self.by_rel[stem]
            if "/" in stem:  # a folder is part of the id (train/00313 vs test/00313): at most a flat layout
                flat = self.by_rel.get(stem.rsplit("/", 1)[1])
                if flat is not None:
                    return flat
                continue
            candidates = self.by_stem.get(stem, [])
            if candidates:
                return candidates[0]  # any depth; the preferred extension first
        return None


@contextlib.contextmanager
def local_video(path: str, timeout_s: float | None = None) -> Iterator[str]:
    """``path`` itself for a local file; for an object a temp copy on this node, removed when the block ends.

    Raises:
        VideoError: The object is gone, or the copy took over ``timeout_s``.
        storage.StorageError: Any other storage failure (the shard, not the video, failed).
    """
    if not storage.is_remote(path):
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="data_prep-video-") as tmp:
        local = os.path.join(tmp, "video" + os.path.splitext(path)[1])
        try:
            storage.download_file(path, local, timeout_s=timeout_s)
        except FileNotFoundError:
            raise VideoError(f"no such object: {path} (deleted since it was listed?)") from None
        except TimeoutError as error:
            raise VideoError(f"download timeout: {error} (--decode-timeout)") from None
        except OSError as error:
            raise storage.StorageError(f"{path}: cannot download ({' '.join(str(error).split())[:200]})") from None
        yield local
