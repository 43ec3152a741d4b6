"""Label sources: what every annotation format becomes, class lists, and the ActivityNet JSON.

Usage::

    from data_prep.labels import load_activitynet_json, read_classes
    source = load_activitynet_json("activity_net.v1-3.min.json", subsets=["training", "validation"])
    classes = read_classes("classInd.txt")             # "idx,Name" lines, or one name a line (index = line)
    # split lists, mmaction / mini-Sports1M lists and CSV: data_prep.lists

Every loader returns a :class:`LabelSource`: the class names in id order, one :class:`Entry` per video and the
``problems``: videos of the file that are refused one by one, with a reason, into ``report.json`` (a label not in
the class list, a duplicate id, no label, a segment that is inverted, negative or not a number). A file that
is broken as a whole, or a line or video that is malformed (not JSON, not UTF-8, empty, a missing
``"database"`` or ``"subset"``, a segment ``"x"``, a list line without its frame count) raises
:class:`~data_prep.checks.InputError` naming the file and the line or video id: nothing is guessed.

Labels: ``labels`` are class ids, unique and sorted, so the primary label (the first, the one the accuracy loss
uses) is the smallest class id, as the official SoF-Net code takes it (``sorted(set(...))``), whatever the
annotation order; ``segment_labels`` keep one class id per segment, in annotation order.

ActivityNet JSON: ``{"database": {id: {"subset", "duration", "annotations": [{"segment": [s, e], "label"}]}}}``.
Classes: ``--classes`` if given (then a label outside it is a per-video problem); else the taxonomy's leaf nodes,
and a label that is not one of them is refused for the whole file (the ids would shift); else (an empty
taxonomy, as in the BSN dump) the sorted labels of the whole database, all subsets, so training and validation
runs agree. ``testing`` videos may have no annotations (written unlabelled); in any other subset a video without
a label is a per-video problem.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from data_prep.checks import InputError, read_text

SUBSET_ALIASES = {"train": "training", "val": "validation", "valid": "validation", "test": "testing"}
UNLABELLED_SUBSETS = ("testing",)  # ActivityNet's testing videos come without annotations


@dataclass
class Entry:
    """One annotated video.

    Attributes:
        id: The video id as the source writes it (the ``v_`` of mmaction lists removed).
        subset: ``training``, ``validation``, ``testing`` or the source's own name.
        labels: Class ids, unique, sorted: the first (primary) is the smallest.
        segments: ``[start_s, end_s]`` per annotated segment; empty when the source has none.
        segment_labels: Class id per segment, in annotation order.
        has_segments: The source gives temporal segments (JSON, CSV with times); otherwise the whole video is
            the action (``[[0, duration]]``, every frame inside).
        path: A file path (relative to the videos folder, extension optional) the source names, if any.
        duration: Duration the annotations claim, in seconds, if any.
        warnings: Labels dropped from a video that was kept.
    """

    id: str
    subset: str
    labels: list[int] = field(default_factory=list)
    segments: list[list[float]] = field(default_factory=list)
    segment_labels: list[int] = field(default_factory=list)
    has_segments: bool = False
    path: str | None = None
    duration: float | None = None
    warnings: list[str] = field(default_factory=list)


@dataclass
class LabelSource:
    """What a label file says: classes in id order, videos, and problems (``{"id", "path", "subset", "reason"}``)."""

    dataset: str
    classes: list[str]
    entries: list[Entry] = field(default_factory=list)
    problems: list[dict[str, str]] = field(default_factory=list)


def problem(entry: Entry, reason: str, path: str | None = None) -> dict[str, str]:
    """A ``report.json`` entry for a video that is not written."""
    return {"id": entry.id, "path": path or entry.path or "", "subset": entry.subset, "reason": reason}


def normalize_subset(name: str) -> str:
    """``train`` -> ``training``, ``val`` -> ``validation``, ``test`` -> ``testing``; other names unchanged."""
    return SUBSET_ALIASES.get(name.lower(), name)


def subset_from_filename(path: str | Path) -> str | None:
    """Guess the subset from a list's file name (``actnet_val_split.txt`` -> ``validation``), or None."""
    words = re.split(r"[^a-z]+", Path(path).stem.lower())
    for word in ("train", "training", "val", "valid", "validation", "test", "testing"):
        if word in words:
            return normalize_subset(word)
    return None


def numbered_lines(path: str | Path) -> list[tuple[int, str]]:
    """``(line number, stripped text)`` of the non-blank lines of a UTF-8 file (CRLF or LF).

    Raises:
        InputError: Missing, unreadable, not UTF-8 or empty (see :func:`data_prep.checks.read_text`).
    """
    lines = read_text(path).split("\n")
    return [(number, line.strip()) for number, line in enumerate(lines, 1) if line.strip()]


def read_classes(path: str | Path) -> list[str]:
    """Read a class list: ``idx,Name`` lines (ids 0..n-1, any order) or one name a line (id = line number).

    Args:
        path: ``classInd.txt``, ``label_map.txt``, ``sports1m_labels.txt`` or alike.

    Returns:
        Class names in id order.

    Raises:
        InputError: An unreadable or empty file; ``idx,Name`` lines mixed with others; ids that are not exactly
            0..n-1; a duplicate name.
    """
    lines = numbered_lines(path)
    indexed = [(number, re.fullmatch(r"(\d+)\s*,\s*(.+)", line)) for number, line in lines]
    if indexed[0][1]:
        for number, match in indexed:
            if not match:
                raise InputError(f"{path}: line {number}: not 'idx,name' like line {indexed[0][0]}")
        by_id = {int(m.group(1)): m.group(2).strip() for _, m in indexed if m}
        if sorted(by_id) != list(range(len(lines))):
            raise InputError(f"{path}: class ids must be 0..{len(lines) - 1}, each once")
        names = [by_id[i] for i in range(len(lines))]
    else:
        names = [line for _, line in lines]
    first: dict[str, int] = {}
    for (number, _), name in zip(lines, names, strict=True):
        if name in first:
            raise InputError(f"{path}: line {number}: duplicate class name {name!r} (also line {first[name]})")
        first[name] = number
    return names


def segment_problem(start: float, end: float) -> str | None:
    """Why ``[start, end]`` (seconds) cannot be a segment, as a ``report.json`` reason; None if it can."""
    if not (math.isfinite(start) and math.isfinite(end)):
        return f"bad segment: [{start}, {end}] is not a finite number of seconds"
    if start < 0:
        return f"bad segment: [{start}, {end}] starts before 0"
    if end < start:
        return f"bad segment: [{start}, {end}] ends before it starts"
    return None


def resolve_labels(entry: Entry, raw: list[str], classes: list[str], problems: list[dict[str, str]]) -> bool:
    """Turn raw labels (ids or names, one per segment) into class ids; False if the entry must be dropped."""
    if not raw:
        problems.append(problem(entry, "no label: the annotation gives none"))
        return False
    index = {name: i for i, name in enumerate(classes)}
    resolved: list[int | None] = []
    unknown: list[str] = []
    for label in raw:
        if label in index:
            resolved.append(index[label])
        elif label.isdigit() and int(label) < len(classes):
            resolved.append(int(label))
        else:
            resolved.append(None)
            unknown.append(label)
    if unknown and all(r is None for r in resolved):
        problems.append(problem(entry, f"label not in class list: {unknown}"))
        return False
    if unknown:
        entry.warnings.append(f"labels not in class list dropped: {unknown}")
    if entry.segments:
        kept = [(seg, r) for seg, r in zip(entry.segments, resolved, strict=True) if r is not None]
        entry.segments = [seg for seg, _ in kept]
        entry.segment_labels = [r for _, r in kept if r is not None]
    entry.labels = sorted({r for r in resolved if r is not None})  # primary = smallest id, as the official code
    return True


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _read_json(path: str | Path) -> dict:
    def unique_keys(pairs: list[tuple[str, object]]) -> dict:
        found: dict[str, object] = {}
        for key, value in pairs:
            if key in found:  # json.loads would keep the last one without a word
                raise InputError(f"{path}: key {key!r} appears twice in one object")
            found[key] = value
        return found

    text = read_text(path)
    try:
        data = json.loads(text, object_pairs_hook=unique_keys)
    except json.JSONDecodeError as error:
        raise InputError(f"{path}: not JSON: {error.msg} (line {error.lineno} column {error.colno})") from None
    if not isinstance(data, dict):
        raise InputError(f"{path}: the top level is a JSON {type(data).__name__}, not an object")
    return data


def _video_annotations(path: str | Path, video_id: str, video: object) -> tuple[str, list[tuple[list, str]]]:
    """``(subset, [(segment, label), ...])`` of one database entry, its types checked."""
    where = f"{path}: video {video_id!r}"
    if not isinstance(video, dict):
        raise InputError(f"{where}: not an object")
    subset = video.get("subset")
    if not isinstance(subset, str) or not subset:
        raise InputError(f"{where}: " + ('no "subset"' if subset is None else f'"subset" is {subset!r}'))
    duration = video.get("duration")
    if duration not in (None, "") and not _number(duration):
        raise InputError(f'{where}: "duration" is {duration!r}, not a number')
    annotations = video.get("annotations", [])
    if not isinstance(annotations, list):
        raise InputError(f'{where}: "annotations" is not a list')
    found = []
    for i, annotation in enumerate(annotations):
        if not isinstance(annotation, dict):
            raise InputError(f"{where}: annotation {i} is not an object")
        segment, label = annotation.get("segment"), annotation.get("label")
        if not isinstance(segment, list) or len(segment) != 2 or not all(_number(x) for x in segment):
            raise InputError(f"{where}: annotation {i}: segment {segment!r} is not [start, end] in seconds")
        if not isinstance(label, str) or not label:
            raise InputError(f"{where}: annotation {i}: label {label!r} is not a class name")
        found.append(([float(segment[0]), float(segment[1])], label))
    return normalize_subset(subset), found


def _json_classes(path: str | Path, data: dict, videos: dict[str, tuple[str, list]]) -> list[str]:
    taxonomy = data.get("taxonomy") or []
    if not isinstance(taxonomy, list) or not all(isinstance(n, dict) and n.get("nodeName") for n in taxonomy):
        raise InputError(f'{path}: "taxonomy" is not a list of nodes with a "nodeName"')
    parents = {node.get("parentName") for node in taxonomy}
    leaves = sorted(node["nodeName"] for node in taxonomy if node["nodeName"] not in parents)
    if not leaves:
        return sorted({label for _, found in videos.values() for _, label in found})
    for video_id, (_, found) in videos.items():
        for _, label in found:
            if label not in leaves:
                raise InputError(f"{path}: video {video_id!r}: label {label!r} is not a class of the file's "
                                 "taxonomy (the ids would shift): give the class list with --classes")
    return leaves


def load_activitynet_json(
    path: str | Path, classes: list[str] | None = None, subsets: list[str] | None = None
) -> LabelSource:
    """Read an ActivityNet annotation file (the official ``activity_net.v1-3.min.json`` schema).

    Args:
        path: The JSON file.
        classes: Class names in id order; default: taxonomy leaves, else sorted labels of the whole database.
        subsets: Keep only these subsets (None: all).

    Returns:
        The label source; ``testing`` videos without annotations have no labels and no segments.

    Raises:
        InputError: Not JSON / UTF-8, no ``database``, a video without ``subset``, wrong types, a label outside
            a non-empty taxonomy (without ``classes``). The message names the file and the video.
    """
    data = _read_json(path)
    database = data.get("database")
    if not isinstance(database, dict):
        what = 'no "database"' if database is None else '"database" is not an object'
        raise InputError(f"{path}: {what} (not an ActivityNet annotation file)")
    videos = {str(vid): _video_annotations(path, vid, video) for vid, video in database.items()}
    if classes is None:
        classes = _json_classes(path, data, videos)
    source = LabelSource("activitynet", classes)
    wanted = set(subsets) if subsets else None
    for video_id, (subset, found) in videos.items():
        if wanted is not None and subset not in wanted:
            continue
        duration = database[video_id].get("duration")
        entry = Entry(id=video_id, subset=subset, segments=[segment for segment, _ in found], has_segments=True,
                      duration=float(duration) if _number(duration) else None)
        bad = next((reason for s, e in entry.segments if (reason := segment_problem(s, e))), None)
        if bad:
            source.problems.append(problem(entry, bad))
        elif not found and subset in UNLABELLED_SUBSETS:
            source.entries.append(entry)
        elif resolve_labels(entry, [label for _, label in found], classes, source.problems):
            source.entries.append(entry)
    return source


def merge_sources(sources: list[tuple[str, LabelSource]]) -> LabelSource:
    """Join the sources read from several files (``(file name, source)`` pairs, at least one).

    Raises:
        InputError: Two files with different class lists.
    """
    first_file, merged = sources[0]
    seen = {entry.id for entry in merged.entries}
    for path, source in sources[1:]:
        if source.classes != merged.classes:
            raise InputError(f"{path}: another class list than {first_file}: give --classes")
        for entry in source.entries:
            if entry.id in seen:
                merged.problems.append(problem(entry, f"duplicate id: again in {path}"))
            else:
                seen.add(entry.id)
                merged.entries.append(entry)
        merged.problems += source.problems
    return merged


def detect_format(path: str | Path) -> str:
    """``json``, ``split`` (SoF comma list), ``whitespace`` (mmaction / mini-Sports1M) or ``csv`` (path,label...).

    Raises:
        InputError: The file cannot be read, is not UTF-8 or is empty.
    """
    if Path(path).suffix.lower() == ".json":
        return "json"
    first = numbered_lines(path)[0][1]
    fields = first.split(",")
    if len(fields) >= 3 and fields[1].strip().isdigit() and not Path(fields[0]).suffix:
        return "split"
    if "," in first:
        return "csv"
    return "whitespace"
