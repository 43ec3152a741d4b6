"""ActivityNet videos into WebDataset shards.

Usage::

    python -m data_prep.activitynet --annotations activity_net.v1-3.min.json --videos DIR --out DIR \\
        [--subsets training validation] [--fps 1] [--min-frames 16] [--short-side 256] [--quality 90] \\
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

import argparse
import sys

from data_prep.cli import add_prep_args, run_prep
from data_prep.labels import (
    LabelSource,
    detect_format,
    load_activitynet_json,
    load_split_list,
    load_whitespace_list,
    merge_sources,
    read_classes,
)


def load_sources(
    annotations: list[str], classes_file: str | None, subsets: list[str] | None, subset: str | None = None
) -> LabelSource:
    """Read one or more ActivityNet label files into one source.

    Args:
        annotations: Official JSON files and/or split lists (SoF comma lists, mmaction lists).
        classes_file: ``classInd.txt`` or ``label_map.txt``; required for lists, optional for JSON.
        subsets: Keep only these subsets (None: all).
        subset: Subset of the videos of a list (default: from the list's file name).

    Returns:
        The merged source; an id that appears again is reported as a duplicate.

    Raises:
        ValueError: A list without ``classes_file``.
    """
    classes = read_classes(classes_file) if classes_file else None
    sources = []
    for path in annotations:
        kind = detect_format(path)
        if kind == "json":
            source = load_activitynet_json(path, classes, subsets)
        elif classes is None:
            raise ValueError(f"{path} is a split list: give its class list with --classes (classInd.txt)")
        elif kind == "split":
            source = load_split_list(path, classes, subset)
        else:
            source = load_whitespace_list(path, classes, subset, dataset="activitynet")
        if subsets:
            source.entries = [e for e in source.entries if e.subset in subsets]
            source.problems = [p for p in source.problems if p["subset"] in subsets]
        sources.append((path, source))
    return merge_sources(sources)


def main(argv: list[str] | None = None) -> int:
    """Parse the flags and write the shards; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m data_prep.activitynet", description=__doc__.split("\n")[0])
    parser.add_argument("--annotations", nargs="+", required=True, help="official JSON and/or split lists")
    parser.add_argument("--classes", default=None, help="classInd.txt / label_map.txt (required for lists)")
    parser.add_argument("--videos", required=True, help="folder with the video files (any depth)")
    parser.add_argument("--subsets", nargs="+", default=["training", "validation"], help="subsets to write")
    parser.add_argument("--subset", default=None, help="subset of the videos of a list (default: from its name)")
    add_prep_args(parser)
    args = parser.parse_args(argv)
    source = load_sources(args.annotations, args.classes, args.subsets, args.subset)
    return run_prep(source, args.videos, args)


if __name__ == "__main__":
    sys.exit(main())
