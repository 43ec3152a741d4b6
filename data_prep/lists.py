"""Video lists: SoF/AR-Net split lists, mmaction and mini-Sports1M lists, and a generic CSV.

Usage::

    from data_prep.labels import read_classes
    from data_prep.lists import load_csv, load_split_list, load_whitespace_list
    source = load_split_list("actnet_val_split.txt", read_classes("classInd.txt"))          # subset from the name
    source = load_whitespace_list("train.csv", read_classes("sports1m_labels.txt"), dataset="sports1m")
    source = load_csv("clips.csv", classes=None, new_classes=True)   # class list made from the file's labels

Formats (all UTF-8, CRLF or LF, with or without a final newline):

- SoF/AR-Net split list: ``youtube_id,num_frames,label[,label...]`` (one label per segment, ids may start with
  ``-``), label ids into ``classInd.txt``.
- Whitespace list (mmaction, mini-Sports1M): ``name num_frames label[ label...]``; ``name`` is ``v_<id>``
  (mmaction: the ``v_`` is dropped) or ``<subset>/<id>`` (mini-Sports1M: the subset folder stays in the id,
  train and test ids overlap). mmaction's ``anet_*_video.txt`` index ``label_map.txt``; the ``frameexit_*``
  lists and the SoF lists index ``classInd.txt``: pair them correctly, the numbers cannot tell.
- CSV: ``path,label[,start,end]`` with an optional header; label is a class id or a name; several rows with the
  same path are several segments of one video.

A line without its frame count (lists), a frame count that is not a whole number, a CSV row without a path or
label, or with a time that is not a number raises :class:`~data_prep.checks.InputError` naming the file and
line. A line with no label is refused for that video (``report.json``), never written unlabelled. Class lists:
lists need one (``--classes``); a CSV may bring its own only when asked (``new_classes``, the ``--new-classes``
flag): its labels become the class list, sorted, or are appended after the given ``--classes`` (whose ids stay).
Without that, a CSV label outside the class list is refused per video with ``--classes`` and for the whole file
without: a class list grown silently from whatever labels a file holds would shift the ids between runs.
"""

from __future__ import annotations

import csv
from pathlib import Path

from data_prep.checks import InputError
from data_prep.labels import (
    Entry,
    LabelSource,
    normalize_subset,
    numbered_lines,
    problem,
    resolve_labels,
    segment_problem,
    subset_from_filename,
)

CSV_HEADERS = ("path", "video", "file", "filename")


def _add_unique(source: LabelSource, entry: Entry, raw: list[str], seen: set[str]) -> None:
    if entry.id in seen:
        source.problems.append(problem(entry, "duplicate id: twice in the list"))
    elif resolve_labels(entry, raw, source.classes, source.problems):
        seen.add(entry.id)
        source.entries.append(entry)


def _frame_count(path: str | Path, number: int, value: str | None, form: str) -> None:
    if value is None or not value.isdigit():
        got = "no frame count" if value is None else f"frame count {value!r} is not a whole number"
        raise InputError(f"{path}: line {number}: {got} (expected '{form}')")


def load_split_list(path: str | Path, classes: list[str], subset: str | None = None) -> LabelSource:
    """Read a SoF/AR-Net split list (``youtube_id,num_frames,label[,label...]``).

    Args:
        path: The list.
        classes: Class names in id order (``classInd.txt``).
        subset: Subset of every video; default from the file name.

    Returns:
        The label source (no segments: the whole video is the action).

    Raises:
        InputError: A line without an id or a whole-number frame count.
    """
    subset = normalize_subset(subset) if subset else subset_from_filename(path) or "training"
    source, seen = LabelSource("activitynet", classes), set()
    for number, line in numbered_lines(path):
        fields = [f.strip() for f in line.split(",")]
        if not fields[0]:
            raise InputError(f"{path}: line {number}: no video id")
        _frame_count(path, number, fields[1] if len(fields) > 1 else None, "id,num_frames,label[,label...]")
        _add_unique(source, Entry(id=fields[0], subset=subset), [f for f in fields[2:] if f], seen)
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

    Raises:
        InputError: A line without a whole-number frame count after the name.
    """
    default = normalize_subset(subset) if subset else subset_from_filename(path) or "training"
    source, seen = LabelSource(dataset, classes), set()
    for number, line in numbered_lines(path):
        name, *rest = line.split()
        _frame_count(path, number, rest[0] if rest else None, "name num_frames label[ label...]")
        video_id = name[2:] if dataset == "activitynet" and name.startswith("v_") else name
        folder = name.rsplit("/", 1)[0] if "/" in name else None
        entry_subset = default if subset or not folder else normalize_subset(folder.split("/")[-1])
        _add_unique(source, Entry(id=video_id, subset=entry_subset, path=name), rest[1:], seen)
    return source


def read_csv_rows(path: str | Path) -> list[tuple[int, str, str, list[float] | None]]:
    """``(line, path, label, [start, end] or None)`` per data row of a ``path,label[,start,end]`` CSV.

    Raises:
        InputError: A row with another number of fields, an empty path or label, half a time, a time that is not
            a number (names the file and line).
    """
    rows = []
    for number, line in numbered_lines(path):
        try:
            fields = [field.strip() for field in next(csv.reader([line]))]
        except csv.Error as error:
            raise InputError(f"{path}: line {number}: not CSV: {error}") from None
        if not rows and fields[0].lower() in CSV_HEADERS:
            rows.append(None)  # the header: counted so that only the first line can be one
            continue
        where = f"{path}: line {number}"
        if len(fields) not in (2, 4) or not fields[0] or not fields[1]:
            raise InputError(f"{where}: expected 'path,label' or 'path,label,start,end', got {line!r}")
        segment = None
        if len(fields) == 4 and (fields[2] or fields[3]):
            try:
                segment = [float(fields[2]), float(fields[3])]
            except ValueError:
                raise InputError(f"{where}: start/end {fields[2]!r}, {fields[3]!r} are not seconds") from None
        rows.append((number, fields[0], fields[1], segment))
    found = [row for row in rows if row is not None]
    if not found:
        raise InputError(f"{path}: no rows after the header")
    return found


def extend_classes(classes: list[str] | None, labels: set[str]) -> list[str]:
    """``classes`` (ids kept) followed by the sorted labels that are neither a name in it nor a valid id."""
    known = list(classes or [])
    names = set(known)
    new = {label for label in labels if label not in names and not (label.isdigit() and int(label) < len(known))}
    return known + sorted(new)


def load_csv(
    path: str | Path, classes: list[str] | None, subset: str = "training", new_classes: bool = False
) -> LabelSource:
    """Read a generic CSV, ``path,label[,start,end]`` (optional header; several rows per path = segments).

    Args:
        path: The CSV file.
        classes: Class names in id order, or None.
        subset: Subset of every video.
        new_classes: Labels outside ``classes`` become new classes (appended, sorted; all of them without
            ``classes``) instead of being refused.

    Returns:
        The label source; the id of a video is its path without extension.

    Raises:
        InputError: A malformed row (see :func:`read_csv_rows`), or without ``classes`` and ``new_classes``.
    """
    rows = read_csv_rows(path)
    if classes is None and not new_classes:
        number, _, label, _ = rows[0]
        raise InputError(f"{path}: label {label!r} (line {number}) has no class list: give --classes, or "
                         "--new-classes to make the class list from the labels of the file(s)")
    if new_classes:
        classes = extend_classes(classes, {label for _, _, label, _ in rows})
    source = LabelSource("csv", classes or [])
    grouped: dict[str, tuple[Entry, list[str]]] = {}
    for _, file_path, label, segment in rows:
        video_id = str(Path(file_path).with_suffix("")) if Path(file_path).suffix else file_path
        new = Entry(id=video_id, subset=normalize_subset(subset), path=file_path)
        entry, raw = grouped.setdefault(file_path, (new, []))
        raw.append(label)
        if segment is not None:
            entry.segments.append(segment)
            entry.has_segments = True
    for entry, raw in grouped.values():
        bad = next((reason for s, e in entry.segments if (reason := segment_problem(s, e))), None)
        if entry.has_segments and len(entry.segments) != len(raw):
            source.problems.append(problem(entry, "bad segments: rows mix with and without times"))
        elif bad:
            source.problems.append(problem(entry, bad))
        elif resolve_labels(entry, raw, source.classes, source.problems):
            source.entries.append(entry)
    return source
