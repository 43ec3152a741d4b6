"""Command-line flags shared by ``data_prep.activitynet``, ``data_prep.sports1m`` and ``data_prep.synthetic``.

Usage::

    parser = argparse.ArgumentParser()
    add_prep_args(parser)           # --out --fps --min-frames --short --short-side --quality --shard-size ...
    args = parser.parse_args()
    sys.exit(run_prep(source, args.videos, args))
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os

from data_prep.decode import SHORT_POLICIES
from data_prep.labels import LabelSource
from data_prep.runner import iter_summary_lines, prepare
from data_prep.shards import PrepParams


def add_prep_args(parser: argparse.ArgumentParser, out_flag: str = "--out", out_required: bool = True) -> None:
    """Add the output (``args.shards_out``), sampling, sharding and Ray flags."""
    defaults = PrepParams()
    parser.add_argument(
        out_flag, dest="shards_out", metavar="DIR", required=out_required, help="output folder (shared storage too)"
    )
    parser.add_argument("--fps", type=float, default=defaults.fps, help="frames sampled per second of video")
    parser.add_argument("--min-frames", type=int, default=defaults.min_frames, help="fewest frames a sample may have")
    parser.add_argument(
        "--short",
        choices=SHORT_POLICIES,
        default=defaults.short,
        help="videos with fewer than --min-frames samples: 'dense' samples --min-frames even timestamps instead "
        "(frames repeat only if the video has fewer), 'skip' reports them and writes nothing",
    )
    parser.add_argument("--short-side", type=int, default=defaults.short_side, help="short side of the JPEGs (0: keep)")
    parser.add_argument("--quality", type=int, default=defaults.quality, help="JPEG quality, 1-100")
    parser.add_argument("--shard-size", type=int, default=defaults.shard_size, help="videos per shard")
    parser.add_argument(
        "--seek-gap", type=float, default=defaults.seek_gap, help="seek when the next frame is this many seconds ahead"
    )
    parser.add_argument("--ray-address", default=None, help="Ray cluster address (default: start a local Ray)")
    parser.add_argument("--num-cpus", type=int, default=None, help="CPUs of the local Ray (default: all)")
    parser.add_argument("--no-ray", action="store_true", help="write the shards one by one in this process")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--overwrite", action="store_true", help="replace shards made with other parameters")
    parser.add_argument("-v", "--verbose", action="store_true", help="log every skipped video")


def params_from_args(args: argparse.Namespace) -> PrepParams:
    """The :class:`PrepParams` the flags ask for."""
    return PrepParams(**{f.name: getattr(args, f.name) for f in dataclasses.fields(PrepParams)})


def run_prep(source: LabelSource, videos: str, args: argparse.Namespace) -> int:
    """Write the shards, print the summary; returns the exit status (1 if a shard could not be written)."""
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    if not args.ray_address:
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a local Ray needs no token; a cluster brings its own
    summary = prepare(
        source,
        videos,
        args.shards_out,
        params_from_args(args),
        ray_address=args.ray_address,
        num_cpus=args.num_cpus,
        use_ray=not args.no_ray,
        progress=not args.no_progress,
        overwrite=args.overwrite,
    )
    for line in iter_summary_lines(summary):
        print(line)
    return 1 if summary["failed_shards"] else 0
