"""Mini-Sports1M (or any video list / CSV) into WebDataset shards.

Usage::

    # the mini-Sports1M list: "train/23701 716 237" lines (CRLF fine), labels index sports1m_labels.txt
    python -m data_prep.sports1m --list train.csv test.csv --classes sports1m_labels.txt --videos DIR --out DIR \\
        [--fps 1] [--min-frames 16] [--short-side 256] [--quality 90] [--shard-size 64] [--ray-address ADDR]
    # a generic CSV: path,label[,start,end] (optional header; label = class id or name; rows of one path = segments)
    python -m data_prep.sports1m --list clips.csv --subset validation --classes names.txt --videos DIR --out DIR
    # a CSV whose labels make the class list (sorted; appended after --classes if given): say so
    python -m data_prep.sports1m --list train.csv val.csv --new-classes --videos DIR --out DIR

A list entry ``train/23701`` is looked up as ``DIR/train/23701.<ext>`` (any common container extension), else as
``DIR/23701.<ext>`` (never in another folder); its id keeps the folder (train and test ids overlap), so its
sample key is ``train_23701``. Its subset is the folder (``train`` -> ``training``, ``test`` -> ``testing``)
unless ``--subset`` is given. Without start/end times a video is all action: segments ``[[0, duration]]``.
"""

from __future__ import annotations

import sys

from data_prep.checks import InputError
from data_prep.cli import add_prep_args, prep_parser, run_command
from data_prep.labels import LabelSource, detect_format, merge_sources, read_classes
from data_prep.lists import extend_classes, load_csv, load_whitespace_list, read_csv_rows


def load_lists(
    lists: list[str], classes_file: str | None, subset: str | None = None, new_classes: bool = False
) -> LabelSource:
    """Read mini-Sports1M lists and/or CSV files into one source.

    Args:
        lists: List files (``<subset>/<id> <num_frames> <label>``) or CSV files (``path,label[,start,end]``).
        classes_file: Class names, one a line (``sports1m_labels.txt``) or ``idx,name``; required for lists.
        subset: Subset of every video (default: list folder prefix, else file name; CSV: ``training``).
        new_classes: CSV labels outside the class list become classes: without ``classes_file`` the sorted
            labels of all the CSV files, with it appended after its names (see :mod:`data_prep.lists`).

    Returns:
        The merged source.

    Raises:
        InputError: A list without ``classes_file``; a CSV without ``classes_file`` or ``new_classes``; a bad file.
    """
    classes = read_classes(classes_file) if classes_file else None
    kinds = {path: detect_format(path) for path in lists}
    if new_classes:
        labels = {label for path in lists if kinds[path] == "csv" for _, _, label, _ in read_csv_rows(path)}
        classes = extend_classes(classes, labels)
    sources = []
    for path in lists:
        if kinds[path] == "csv":
            source = load_csv(path, classes, subset or "training")
            source.dataset = "sports1m" if classes_file else "csv"
        elif not classes_file:
            raise InputError(f"{path}: a video list needs its class list: give --classes (sports1m_labels.txt)")
        else:
            source = load_whitespace_list(path, classes or [], subset, dataset="sports1m")
        sources.append((path, source))
    return merge_sources(sources)


def main(argv: list[str] | None = None) -> int:
    """Parse the flags and write the shards; returns the exit status (2: bad input, one line on stderr)."""
    parser = prep_parser("python -m data_prep.sports1m", __doc__.split("\n")[0])
    parser.add_argument("--list", nargs="+", required=True, help="mini-Sports1M lists and/or CSV files")
    parser.add_argument("--classes", default=None, help="class names (sports1m_labels.txt); required for lists")
    parser.add_argument("--new-classes", action="store_true",
                        help="CSV labels outside --classes (or all of them, without --classes) become new classes")
    parser.add_argument("--videos", required=True, help="folder (any depth) or s3:// / gs:// prefix of the video files")
    parser.add_argument("--subset", default=None, help="subset of every video (default: from the list)")
    add_prep_args(parser)
    return run_command(parser, argv, lambda args: load_lists(args.list, args.classes, args.subset, args.new_classes))


if __name__ == "__main__":
    sys.exit(main())
