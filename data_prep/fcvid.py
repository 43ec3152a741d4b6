"""FCVID (Fudan-Columbia Video Dataset: 239 categories, 91,223 videos, multi-label) into WebDataset shards.

FCVID's official download page has been down for years (the AR-Net authors no longer have the files either, their
issues #3 and #8): this is for a user who has a copy. Two annotation formats are read.

Usage::

    # FCVID's own release ("materials"): the video list with its split, and the label matrix (one row per video)
    python -m data_prep.fcvid --split FCVID_VideoName_TrainTestSplit.txt --labels FCVID_Label.txt \\
        --classes classes.txt --videos DIR --out DIR [--subsets training testing] [--fps 1] [...]
    # the AR-Net code's lists (fcvid_{train,val}_split.txt: dir,num_frames,label[,label...]) with classInd.txt
    python -m data_prep.fcvid --annotations fcvid_train_split.txt fcvid_val_split.txt --classes classInd.txt \\
        --videos DIR --out DIR

Formats (UTF-8, LF or CRLF):

- ``FCVID_VideoName_TrainTestSplit.txt``: ``<video path> <train|test>`` a line, the path relative to the video
  folder as FCVID ships it (a category folder and the file name); the id of a video is its path without extension.
- ``FCVID_Label.txt``: a whitespace-separated 0/1 matrix, one row per line of the split file in the same order, one
  column per class (239); a video's labels are its columns with 1 (several where FCVID gives several).
  (The layout of these two files is how published FCVID loaders read them: ``np.genfromtxt`` of both, rows
  aligned, e.g. the ObjectGraphs code; FCVID's own class-name file was not available to check, so ``--classes``
  takes any class list that :func:`data_prep.labels.read_classes` reads: one name a line or ``idx,Name``.)
- AR-Net lists: as for ActivityNet (:func:`data_prep.lists.load_split_list`), ``ops/dataset.py`` of their code.

AR-Net's author recalls frames at 1 fps for FCVID (their issue #7); ``--fps`` is this project's usual flag. Bad
files are one line naming the file and line (exit status 2) before any video is read; videos that are missing or
cannot be decoded, and rows with no label, go to ``report.json``; rerunning the command resumes.
"""

from __future__ import annotations

import argparse
import os
import sys

from data_prep.activitynet import load_sources
from data_prep.checks import InputError
from data_prep.cli import add_prep_args, prep_parser, run_command
from data_prep.labels import Entry, LabelSource, normalize_subset, numbered_lines, problem, read_classes

OFFICIAL_SUBSETS = {"train": "training", "test": "testing"}


def load_official(split: str, labels: str, classes_file: str, subsets: list[str] | None = None) -> LabelSource:
    """Read FCVID's split list and label matrix into a label source (``dataset: fcvid``).

    Raises:
        InputError: A line that is not ``<path> <train|test>``; a label row of another width than the class list or
            with values other than 0/1; a label file with another number of rows than the split file.
    """
    classes = read_classes(classes_file)
    rows = numbered_lines(split)
    matrix = numbered_lines(labels)
    if len(rows) != len(matrix):
        raise InputError(f"{labels}: {len(matrix)} label rows, but {split} lists {len(rows)} videos (one row each)")
    wanted = {normalize_subset(s) for s in subsets} if subsets else None
    source, seen = LabelSource("fcvid", classes), set()
    for (number, line), (label_number, label_line) in zip(rows, matrix):
        fields = line.split()
        if len(fields) != 2 or fields[1].lower() not in OFFICIAL_SUBSETS:
            raise InputError(f"{split}: line {number}: expected '<video path> <train|test>', got {line[:80]!r}")
        values = label_line.split()
        if len(values) != len(classes):
            raise InputError(f"{labels}: line {label_number}: {len(values)} columns, the class list "
                             f"{classes_file} has {len(classes)} classes")
        try:
            flags = [float(v) for v in values]
        except ValueError:
            raise InputError(f"{labels}: line {label_number}: not a row of numbers") from None
        if any(f not in (0.0, 1.0) for f in flags):
            raise InputError(f"{labels}: line {label_number}: values must be 0 or 1")
        path = fields[0].replace("\\", "/")
        entry = Entry(id=os.path.splitext(path)[0], subset=OFFICIAL_SUBSETS[fields[1].lower()], path=path)
        if wanted is not None and entry.subset not in wanted:
            continue
        if entry.id in seen:
            source.problems.append(problem(entry, f"duplicate id: twice in {split}"))
            continue
        entry.labels = [k for k, f in enumerate(flags) if f == 1.0]  # primary = smallest id, as everywhere
        if not entry.labels:
            source.problems.append(problem(entry, f"no label: row {label_number} of {labels} is all zeros"))
            continue
        seen.add(entry.id)
        source.entries.append(entry)
    if wanted is not None:
        have = {e.subset for e in source.entries} | {p["subset"] for p in source.problems}
        for name in sorted(wanted - have):
            raise InputError(f"--subsets: no video of {split} is in subset {name!r}")
    return source


def _load(args: argparse.Namespace) -> LabelSource:
    if bool(args.split) != bool(args.labels):
        raise InputError("--split and --labels go together (FCVID_VideoName_TrainTestSplit.txt, FCVID_Label.txt)")
    if bool(args.split) == bool(args.annotations):
        raise InputError("give either --split/--labels (FCVID's own files) or --annotations (AR-Net lists)")
    if not args.classes:
        raise InputError("--classes: FCVID needs its class list (239 names, one a line, or classInd.txt)")
    if args.split:
        return load_official(args.split, args.labels, args.classes, args.subsets)
    source = load_sources(args.annotations, args.classes, args.subsets)
    source.dataset = "fcvid"
    return source


def main(argv: list[str] | None = None) -> int:
    """Parse the flags and write the shards; returns the exit status (2: bad input, one line on stderr)."""
    parser = prep_parser("python -m data_prep.fcvid", __doc__.split("\n")[0])
    parser.add_argument("--split", default=None, help="FCVID_VideoName_TrainTestSplit.txt (with --labels)")
    parser.add_argument("--labels", default=None, help="FCVID_Label.txt: the 0/1 label matrix, a row per video")
    parser.add_argument("--annotations", nargs="+", default=None, help="AR-Net lists fcvid_{train,val}_split.txt")
    parser.add_argument("--classes", default=None, help="class names (one a line, or idx,Name): required")
    parser.add_argument("--videos", required=True,
                        help="folder or s3:// / gs:// prefix of the video files (FCVID's category folders)")
    parser.add_argument("--subsets", nargs="+", default=None, help="subsets to write (default: all in the files)")
    add_prep_args(parser)
    return run_command(parser, argv, _load)


if __name__ == "__main__":
    sys.exit(main())
