"""Shard lists, ``manifest.json`` / ``sizes.json``, and one shard's samples streamed and counted.

The loader side of the data_prep contract (``data_prep/README.md``): a shard directory holds
``{subset}-{index:06d}.tar`` beside ``sizes.json`` (``{"training-000000.tar": samples}``) and ``manifest.json``.
``sofnet.data`` re-exports the public names here::

    from sofnet.shards import read_manifest, read_sizes, resolve_shards, shard_samples

    urls = resolve_shards("/data/anet", "validation")      # manifest order; or a brace pattern, or a list
    sizes = read_sizes(urls)                                # samples per shard, from the sizes.json beside each
    classes = read_manifest("/data/anet")["classes"]
    for sample in shard_samples(urls[0], sizes[0], strict=True):   # {"__key__", "__url__", "json", "0000.jpg", ...}
        ...                                                 # DataError if the shard holds more or fewer than sizes[0]

:func:`shard_samples` streams a tar once (it never reads a shard up front: ActivityNet's are large) and checks
the number of samples against ``sizes.json`` while it streams, because the training loader plans its exact
batch split from those counts: a count too high makes it cycle videos, too low drops them, both silently.

A shard directory may be an object-store prefix (``s3://bucket/shards/anet``, ``gs://...``): the manifest, the
``sizes.json`` and each shard are streamed from it with pyarrow (what Ray Train's storage uses too; credentials and
endpoint from the standard variables, ``AWS_ACCESS_KEY_ID``, ``AWS_ENDPOINT_URL``...), so nodes share no disk and each
rank reads only the shards its slot needs.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any, Callable, Iterator, Mapping, Optional, Sequence, Union

import braceexpand
import webdataset as wds
from webdataset.gopen import gopen

from sofnet import storage
from sofnet.clips import DataError

logger = logging.getLogger(__name__)

Shards = Union[str, os.PathLike, Sequence[str]]


def _is_local(url: str) -> bool:
    return "://" not in url and not url.startswith("pipe:")


def open_url(url: str) -> Any:
    """Open a shard or JSON file for reading: a local path, ``pipe:``/``http(s)://`` (webdataset's ``gopen``), or an
    object-store URI (:mod:`sofnet.storage`). A missing file or object raises FileNotFoundError."""
    return storage.open_input(url) if storage.is_remote(url) else gopen(url, "rb")


def shard_directory(shards: Union[str, os.PathLike]) -> str:
    """The directory whose ``manifest.json`` describes ``shards`` (itself, or the folder of a shard or pattern)."""
    text = os.fspath(shards).rstrip("/")
    if os.path.isdir(text) or (storage.is_remote(text) and not text.endswith(".tar") and "{" not in text):
        return text
    return os.path.dirname(text)


def is_store_directory(shards: Union[str, os.PathLike]) -> bool:
    """An object-store prefix naming a shard directory (not a shard or a brace pattern in one)."""
    text = os.fspath(shards)
    return storage.is_remote(text) and shard_directory(text) == text.rstrip("/")


def listed_tars(directory: str, subset: str) -> list[str]:
    """The ``{subset}-*.tar`` names in a directory or object-store prefix, sorted."""
    if storage.is_remote(directory):
        names = storage.list_names(directory)
    else:
        names = os.listdir(directory)
    return sorted(n for n in names if n.startswith(f"{subset}-") and n.endswith(".tar"))


def _read_json(path: str) -> Any:
    try:
        with open_url(path) as f:
            return json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} does not exist") from None
    except ValueError as e:
        raise DataError(f"{path}: not valid JSON: {e}") from None
    except OSError as e:  # an object store that cannot be reached or refuses the credentials
        raise FileNotFoundError(f"{path}: cannot read it ({' '.join(str(e).split())[:200]})") from None


def read_manifest(directory: Union[str, os.PathLike]) -> dict[str, Any]:
    """The ``manifest.json`` of a shard directory: ``{"dataset", "classes", "subsets", "params"}``."""
    return _read_json(os.path.join(os.fspath(directory), "manifest.json"))


def subset_digest(directory: Union[str, os.PathLike], subset: str) -> str:
    """The manifest's digest of one subset of a shard directory (equal digests: byte-identical shards, see
    ``data_prep.manifest``); "" where there is no readable manifest (a brace pattern, a list, no such subset)."""
    try:
        return str(read_manifest(directory).get("subsets", {}).get(subset, {}).get("digest") or "")
    except (OSError, ValueError):
        return ""


def resolve_shards(shards: Shards, subset: Optional[str] = None) -> list[str]:
    """Expand a shard specification into a list of shard paths or URLs.

    Args:
        shards: A shard directory (then ``subset`` picks its shards: the manifest's list, else
            ``{subset}-*.tar``), a brace pattern (``"/d/training-{000000..000009}.tar"``) or a list of paths/URLs.
        subset: Subset name, required for a directory.

    Returns:
        The shard paths, in the given (or manifest / sorted) order.

    Raises:
        FileNotFoundError: The directory or a local shard file does not exist, or the subset has no shards.
        DataError: The manifest has no such subset.
    """
    if isinstance(shards, (str, os.PathLike)):
        text = os.fspath(shards)
        if not text:
            raise FileNotFoundError("no shards given: the shard path is empty")
        if os.path.isdir(text) or is_store_directory(text):
            return _directory_shards(text.rstrip("/"), subset)
        if _is_local(text) and "{" not in text and not text.endswith(".tar"):
            raise FileNotFoundError(f"shard directory {text} does not exist")
        urls = list(braceexpand.braceexpand(text))
    else:
        urls = [os.fspath(u) for u in shards]
    if not urls:
        raise FileNotFoundError("no shards given")
    missing = [u for u in urls if _is_local(u) and not os.path.isfile(u)]
    if missing:
        more = f" (and {len(missing) - 1} more of {len(urls)})" if len(missing) > 1 else ""
        raise FileNotFoundError(f"shard file {missing[0]} does not exist{more}")
    return urls


def _directory_shards(directory: str, subset: Optional[str]) -> list[str]:
    if not subset:
        raise ValueError(f"{directory} is a directory: name the subset to read (e.g. 'training')")
    manifest_path = os.path.join(directory, "manifest.json")
    if storage.is_remote(directory) or os.path.isfile(manifest_path):  # an object store: the manifest is required
        subsets = read_manifest(directory).get("subsets", {})
        if subset not in subsets:
            raise DataError(f"{manifest_path}: no subset {subset!r} (it has: {', '.join(sorted(subsets)) or 'none'})")
        names = list(subsets[subset].get("shards", []))
    else:
        names = listed_tars(directory, subset)
    if not names:
        raise FileNotFoundError(f"no {subset}-*.tar shards in {directory}")
    return resolve_shards([os.path.join(directory, n) for n in names])


def read_sizes(urls: Sequence[str]) -> list[int]:
    """Samples per shard, from the ``sizes.json`` beside each shard.

    Raises:
        FileNotFoundError: A ``sizes.json`` is missing.
        DataError: It has no (or a negative) entry for one of the shards.
    """
    tables: dict[str, Mapping[str, Any]] = {}
    out = []
    for url in urls:
        folder, name = url.rsplit("/", 1) if "/" in url else (".", url)
        path = f"{folder}/sizes.json"
        if folder not in tables:
            tables[folder] = _read_json(path)
        n = tables[folder].get(name)
        if not isinstance(n, int) or n < 0:
            raise DataError(f"{path}: no sample count for {name}")
        out.append(n)
    return out


def _count_mismatch(url: str, expected: int, found: int, at_least: bool = False) -> DataError:
    more = "at least " if at_least else ""
    return DataError(f"{url}: sizes.json says {expected} samples, the shard has {more}{found} (a wrong sizes.json "
                     f"entry or a cut shard; read on, the loader would repeat or drop videos)")


def shard_samples(url: str, expected: Optional[int], *, skip: int = 0, strict: bool) -> Iterator[dict[str, Any]]:
    """The samples of one shard in order, after its first ``skip``, checked against ``sizes.json`` as they stream.

    The count is checked whenever the shard is read to its end (and a reader that stops at sample ``expected``
    still learns of an extra one): each sample is yielded only after the next one was read, so the sample
    numbered ``expected`` comes out only once the tar has shown its end. Costs one sample held back (its JPEG
    bytes, a few MB at most); on a count too high the rest of the shard is read (not decoded) once to report
    its size, on that error path only.

    Args:
        url: Shard path or URL (a local path, ``s3://``/``gs://`` or what ``webdataset.gopen`` opens: ``pipe:``...).
        expected: Its ``sizes.json`` count; None: not checked (an eval set without ``sizes.json``).
        skip: Samples to read past without yielding them (still counted).
        strict: True (evaluation): an unreadable shard or tar member raises. False (training): it is logged
            (WARNING, naming the shard and the counts) and the shard ends there without the count check: the
            shortfall is explained by the read error, and the training loader fills the place from the next shard.

    Yields:
        WebDataset samples: ``{"__key__", "__url__", "json", "0000.jpg", ...}``.

    Raises:
        DataError: The shard holds more or fewer samples than ``expected`` (naming the shard and both counts),
            or, with ``strict``, it cannot be read.
    """
    errors: list[Exception] = []

    def handler(exn: Exception) -> bool:
        if strict:
            raise DataError(f"{url}: cannot read shard data: {exn}") from exn
        errors.append(exn)
        return True

    try:
        stream = open_url(url)
    except OSError as e:
        handler(e)
        logger.warning("%s: cannot open the shard, skipping it: %s", url, e)
        return
    count, pending = 0, None
    try:  # closed here, also when the reader stops inside the shard (the end of a training slot's range)
        samples = _grouped(url, stream, handler)
        for sample in samples:
            count += 1
            if expected is not None and count > expected:
                raise _count_mismatch(url, expected, count + _rest(samples, errors), at_least=bool(errors))
            if pending is not None:
                yield pending
            pending = sample if count > skip else None
    finally:
        stream.close()
    if errors:
        logger.warning("%s: unreadable after %d of %s samples, skipping the rest of the shard: %s", url, count,
                       expected if expected is not None else "?", errors[0])
    elif expected is not None and count != expected:
        raise _count_mismatch(url, expected, count)
    if pending is not None:
        yield pending


def _grouped(url: str, stream: Any, handler: Callable[[Exception], bool]) -> Iterator[dict[str, Any]]:
    files = wds.tariterators.tar_file_expander([{"url": url, "stream": stream}], handler=handler)
    return wds.tariterators.group_by_keys(files, handler=handler)


def _rest(samples: Iterator[dict[str, Any]], errors: list[Exception]) -> int:
    """Count what is left of a shard (error path of a count too high); a read error ends the count."""
    try:
        return sum(1 for _ in samples)
    except Exception as e:  # strict handler: the shard is unreadable further on; the count is a lower bound
        errors.append(e)
        return 0
