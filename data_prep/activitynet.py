"""ActivityNet videos into WebDataset shards.

Usage::

    python -m data_prep.activitynet --annotations activity_net.v1-3.min.json --videos DIR --out DIR \\
        [--subsets training validation] [--fps 1|native] [--min-frames 16] [--short-side 256] [--quality 90] \\
        [--shard-size 64] [--ray-address ADDR] [--num-cpus N]
    # the SoF/AR-Net split lists, with their classInd.txt (one file per subset; the subset comes from the name):
    python -m data_prep.activitynet --annotations actnet_train_split.txt actnet_val_split.txt \\
        --classes classInd.txt --videos DIR --out DIR
    # mmaction lists: anet_*_video.txt index label_map.txt, frameexit_anet_*_video.txt index classInd.txt
    python -m data_prep.activitynet --annotations anet_train_video.txt --classes label_map.txt --videos DIR --out DIR

Video files are found by id under ``--videos`` at any depth, as ``<id>.<ext>`` or ``v_<id>.<ext>`` with any common
container extension (mp4, mkv, webm, mov, avi, ...). Labels and temporal segments come from the JSON; split lists
have no segments, so the whole video counts as the action. Rerun the same command after an interruption: finished
shards are kept. For a cluster, see :mod:`data_prep.runner` (``--out`` on shared storage, ``--ray-address auto``).
"""

from __future__ import annotations

import sys

from data_prep.checks import InputError
from data_prep.cli import add_prep_args, prep_parser, run_command
from data_prep.labels import (
    LabelSource,
    detect_format,
    load_activitynet_json,
    merge_sources,
    normalize_subset,
    read_classes,
)
from data_prep.lists import load_split_list, load_whitespace_list

DEFAULT_SUBSETS = ("training", "validation")


def _check_subsets(annotations: list[str], available: set[str], subsets: list[str] | None) -> list[str]:
    """The subsets to write: each one asked for must be in the annotations; by default training and validation."""
    have = ", ".join(sorted(available)) or "none"
    if subsets is None:
        chosen = [name for name in DEFAULT_SUBSETS if name in available]
        if not chosen:
            raise InputError(f"--subsets: {' '.join(annotations)} has no training or validation video (it has: "
                             f"{have}): name the subsets to write")
        return chosen
    for name in subsets:
        if name not in available:
            raise InputError(f"--subsets: no video of {' '.join(annotations)} is in subset {name!r} (it has: {have})")
    return subsets


def load_sources(
    annotations: list[str], classes_file: str | None, subsets: list[str] | None, subset: str | None = None
) -> LabelSource:
    """Read one or more ActivityNet label files into one source.

    Args:
        annotations: Official JSON files and/or split lists (SoF comma lists, mmaction lists).
        classes_file: ``classInd.txt`` or ``label_map.txt``; required for lists, optional for JSON.
        subsets: Keep only these subsets, each of which must be in the files (``train``, ``val``, ``test`` are
            read as ``training``...); None: training and validation, those of them that the files have.
        subset: Subset of the videos of a list (default: from the list's file name).

    Returns:
        The merged source; an id that appears again is reported as a duplicate.

    Raises:
        InputError: A list without ``classes_file``, a subset the files do not have, a bad file (names it).
    """
    classes = read_classes(classes_file) if classes_file else None
    sources = []
    for path in annotations:
        kind = detect_format(path)
        if kind == "json":
            source = load_activitynet_json(path, classes)
        elif classes is None:
            raise InputError(f"{path}: a video list needs its class list: give --classes (classInd.txt)")
        elif kind == "whitespace":
            source = load_whitespace_list(path, classes, subset, dataset="activitynet")
        else:  # comma-separated: ActivityNet has no other comma format than the SoF/AR-Net split lists
            source = load_split_list(path, classes, subset)
        sources.append((path, source))
    available = {e.subset for _, s in sources for e in s.entries}
    available |= {p["subset"] for _, s in sources for p in s.problems}
    wanted = set(_check_subsets(annotations, available, [normalize_subset(n) for n in subsets] if subsets else None))
    for _, source in sources:
        source.entries = [e for e in source.entries if e.subset in wanted]
        source.problems = [p for p in source.problems if p["subset"] in wanted]
    return merge_sources(sources)


def main(argv: list[str] | None = None) -> int:
    """Parse the flags and write the shards; returns the exit status (2: bad input, one line on stderr)."""
    parser = prep_parser("python -m data_prep.activitynet", __doc__.split("\n")[0])
    parser.add_argument("--annotations", nargs="+", required=True, help="official JSON and/or split lists")
    parser.add_argument("--classes", default=None, help="classInd.txt / label_map.txt (required for lists)")
    parser.add_argument("--videos", required=True, help="folder (any depth) or s3:// / gs:// prefix of the video files")
    parser.add_argument("--subsets", nargs="+", default=None,
                        help="subsets to write, each must be in the annotations (default: training validation)")
    parser.add_argument("--subset", default=None, help="subset of the videos of a list (default: from its name)")
    add_prep_args(parser)
    return run_command(parser, argv, lambda a: load_sources(a.annotations, a.classes, a.subsets, a.subset))


if __name__ == "__main__":
    sys.exit(main())
