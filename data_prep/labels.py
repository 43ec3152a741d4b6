"""Label sources: class lists, ActivityNet JSON, SoF/AR-Net and mmaction split lists, mini-Sports1M lists, CSV.

Usage::

    from data_prep.labels import load_activitynet_json, load_split_list, read_classes
    source = load_activitynet_json("activity_net.v1-3.min.json", subsets=["training", "validation"])
    classes = read_classes("classInd.txt")             # "idx,Name" lines, or one name a line (index = line)
    source = load_split_list("actnet_val_split.txt", classes, subset="validation")

Every loader returns a :class:`LabelSource`: the class names in id order, one :class:`Entry` per video (labels as
class ids, first = primary, unique; segments in seconds when the source has them) and the ``problems`` found
while reading (a label not in the class list, a duplicate id), which go into ``report.json``.

Formats (all UTF-8, CRLF or LF, with or without a final newline):

- ActivityNet JSON: ``{"database": {id: {"subset", "duration", "annotations": [{"segment": [s, e], "label"}]}}}``;
  classes from ``--classes``, else the taxonomy's leaf nodes, else the sorted labels of the whole database.
- SoF/AR-Net split list: ``youtube_id,num_frames,label[,label...]`` (one label per segment, ids may start with
  ``-``), label ids into ``classInd.txt``.
- Whitespace list (mmaction, mini-Sports1M): ``name num_frames label[ label...]``; ``name`` is ``v_<id>``
  (mmaction: the ``v_`` is dropped) or ``<subset>/<id>`` (mini-Sports1M: the subset folder stays in the id,
  train and test ids overlap). mmaction's ``anet_*_video.txt`` index ``label_map.txt``; the ``frameexit_*``
  lists and the SoF lists index ``classInd.txt``: pair them correctly, the numbers cannot tell.
- CSV: ``path,label[,start,end]`` with an optional header; label is a class id or a name; several rows with the
  same path are several segments of one video.
"""

from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

SUBSET_ALIASES = {"train": "training", "val": "validation", "valid": "validation", "test": "testing"}


@dataclass
class Entry:
    """One annotated video.

    Attributes:
        id: The video id as the source writes it (the ``v_`` of mmaction lists removed).
        subset: ``training``, ``validation``, ``testing`` or the source's own name.
        labels: Class ids, unique, first = primary.
        segments: ``[start_s, end_s]`` per annotated segment; empty when the source has none.
        segment_labels: Class id per segment.
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


def _lines(path: str | Path) -> list[str]:
    text = Path(path).read_text(encoding="utf-8-sig")
    return [line.strip() for line in text.splitlines() if line.strip()]


def read_classes(path: str | Path) -> list[str]:
    """Read a class list: ``idx,Name`` lines (ids 0..n-1, any order) or one name a line (id = line number).

    Args:
        path: ``classInd.txt``, ``label_map.txt``, ``sports1m_labels.txt`` or alike.

    Returns:
        Class names in id order.

    Raises:
        ValueError: Indexed lines whose ids are not exactly 0..n-1, or duplicate names.
    """
    lines = _lines(path)
    indexed = [re.fullmatch(r"(\d+)\s*,\s*(.+)", line) for line in lines]
    if lines and all(indexed):
        by_id = {int(m.group(1)): m.group(2).strip() for m in indexed if m}
        if sorted(by_id) != list(range(len(lines))):
            raise ValueError(f"{path}: class ids must be 0..{len(lines) - 1}, each once")
        names = [by_id[i] for i in range(len(lines))]
    else:
        names = lines
    if len(set(names)) != len(names):
        raise ValueError(f"{path}: duplicate class names")
    return names


def _resolve(entry: Entry, raw: list[str], classes: list[str], problems: list[dict[str, str]]) -> bool:
    """Turn raw labels (ids or names, one per segment) into class ids; False if the entry must be dropped."""
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
    entry.labels = list(dict.fromkeys(r for r in resolved if r is not None))
    return True


def _taxonomy_leaves(taxonomy: list[dict]) -> list[str]:
    parents = {node.get("parentName") for node in taxonomy}
    return sorted(node["nodeName"] for node in taxonomy if node.get("nodeName") not in parents)


def load_activitynet_json(
    path: str | Path, classes: list[str] | None = None, subsets: list[str] | None = None
) -> LabelSource:
    """Read an ActivityNet annotation file (the official ``activity_net.v1-3.min.json`` schema).

    Args:
        path: The JSON file.
        classes: Class names in id order; default: taxonomy leaves, else sorted labels of the whole database
            (all subsets, so training and validation runs agree).
        subsets: Keep only these subsets (None: all).

    Returns:
        The label source; videos without annotations (the testing subset) have no labels and no segments.
    """
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    database: dict[str, dict] = data["database"]
    if classes is None:
        leaves = _taxonomy_leaves(data.get("taxonomy") or [])
        used = {a["label"] for video in database.values() for a in video.get("annotations", [])}
        classes = leaves if leaves and used <= set(leaves) else sorted(used)
    source = LabelSource("activitynet", classes)
    wanted = set(subsets) if subsets else None
    for video_id, video in database.items():
        subset = normalize_subset(video.get("subset", "training"))
        if wanted is not None and subset not in wanted:
            continue
        annotations = video.get("annotations", [])
        entry = Entry(
            id=video_id,
            subset=subset,
            segments=[[float(a["segment"][0]), float(a["segment"][1])] for a in annotations],
            has_segments=True,
            duration=float(video["duration"]) if video.get("duration") else None,
        )
        if not annotations or _resolve(entry, [a["label"] for a in annotations], classes, source.problems):
            source.entries.append(entry)
    return source


def _add_unique(source: LabelSource, entry: Entry, raw: list[str], seen: set[str]) -> None:
    if entry.id in seen:
        source.problems.append(problem(entry, "duplicate id: twice in the list"))
    elif _resolve(entry, raw, source.classes, source.problems):
        seen.add(entry.id)
        source.entries.append(entry)


def load_split_list(path: str | Path, classes: list[str], subset: str | None = None) -> LabelSource:
    """Read a SoF/AR-Net split list (``youtube_id,num_frames,label[,label...]``).

    Args:
        path: The list.
        classes: Class names in id order (``classInd.txt``).
        subset: Subset of every video; default from the file name.

    Returns:
        The label source (no segments: the whole video is the action).
    """
    subset = normalize_subset(subset) if subset else subset_from_filename(path) or "training"
    source, seen = LabelSource("activitynet", classes), set()
    for line in _lines(path):
        fields = [f.strip() for f in line.split(",")]
        _add_unique(source, Entry(id=fields[0], subset=subset), fields[2:], seen)
    return source


def load_whitespace_list(
    path: str | Path, classes: list[str], subset: str | None = None, dataset: str = "activitynet"
) -> LabelSource:
    """Read an mmaction-style list (``v_<id> num_frames label[ label...]``) or a mini-Sports1M list.

    Args:
        path: The list (``train/23701 716 237`` lines for mini-Sports1M; CRLF is fine).
        classes: Class names in id order.
        subset: Subset of every video; default from a ``<subset>/`` prefix of the name, else the file name.
        dataset: Name written into the manifest; ``activitynet`` drops mmaction's ``v_`` prefix from ids.

    Returns:
        The label source (no segments).
    """
    default = normalize_subset(subset) if subset else subset_from_filename(path) or "training"
    source, seen = LabelSource(dataset, classes), set()
    for line in _lines(path):
        name, *rest = line.split()
        video_id = name[2:] if dataset == "activitynet" and name.startswith("v_") else name
        folder = name.rsplit("/", 1)[0] if "/" in name else None
        entry_subset = default if subset or not folder else normalize_subset(folder.split("/")[-1])
        _add_unique(source, Entry(id=video_id, subset=entry_subset, path=name), rest[1:], seen)
    return source


def load_csv(path: str | Path, classes: list[str] | None, subset: str = "training") -> LabelSource:
    """Read a generic CSV, ``path,label[,start,end]`` (optional header; several rows per path = segments).

    Args:
        path: The CSV file.
        classes: Class names in id order; default: sorted label names found in the file.
        subset: Subset of every video.

    Returns:
        The label source; the id of a video is its path without extension.
    """
    rows = [row for row in csv.reader(_lines(path)) if row]
    if rows and rows[0][0].strip().lower() in ("path", "video", "file", "filename"):
        rows = rows[1:]
    if classes is None:
        classes = sorted({row[1].strip() for row in rows})
    source = LabelSource("csv", classes)
    grouped: dict[str, tuple[Entry, list[str]]] = {}
    for row in rows:
        file_path, label = row[0].strip(), row[1].strip()
        video_id = str(Path(file_path).with_suffix("")) if Path(file_path).suffix else file_path
        new = Entry(id=video_id, subset=normalize_subset(subset), path=file_path)
        entry, raw = grouped.setdefault(file_path, (new, []))
        raw.append(label)
        if len(row) >= 4 and row[2].strip() and row[3].strip():
            entry.segments.append([float(row[2]), float(row[3])])
            entry.has_segments = True
    for entry, raw in grouped.values():
        if entry.has_segments and len(entry.segments) != len(raw):
            source.problems.append(problem(entry, "bad segments: rows mix with and without times"))
        elif _resolve(entry, raw, classes, source.problems):
            source.entries.append(entry)
    return source


def merge_sources(sources: list[tuple[str, LabelSource]]) -> LabelSource:
    """Join the sources read from several files (``(file name, source)`` pairs, at least one).

    Raises:
        ValueError: Two files with different class lists.
    """
    first_file, merged = sources[0]
    seen = {entry.id for entry in merged.entries}
    for path, source in sources[1:]:
        if source.classes != merged.classes:
            raise ValueError(f"{path} has another class list than {first_file}: give --classes")
        for entry in source.entries:
            if entry.id in seen:
                merged.problems.append(problem(entry, f"duplicate id: again in {path}"))
            else:
                seen.add(entry.id)
                merged.entries.append(entry)
        merged.problems += source.problems
    return merged


def detect_format(path: str | Path) -> str:
    """``json``, ``split`` (SoF comma list), ``whitespace`` (mmaction / mini-Sports1M) or ``csv`` (path,label...)."""
    if Path(path).suffix.lower() == ".json":
        return "json"
    first = next(iter(_lines(path)), "")
    fields = first.split(",")
    if len(fields) >= 3 and fields[1].strip().isdigit() and not Path(fields[0]).suffix:
        return "split"
    if "," in first:
        return "csv"
    return "whitespace"
