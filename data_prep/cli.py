"""Command-line plumbing shared by ``data_prep.activitynet``, ``data_prep.sports1m`` and ``data_prep.synthetic``.

Usage::

    parser = prep_parser("python -m data_prep.x", "what it does")   # bad flags: one line, exit status 2
    add_prep_args(parser)           # --out --fps --min-frames --short --short-side --quality --shard-size ...
    sys.exit(run_command(parser, argv, lambda args: load_annotations(args)))   # flags checked first

House rule: bad input (a flag, a file, a folder) is one line ``error: <flag or file>: <problem>`` on stderr and
exit status 2, before Ray starts or anything is written; a run that wrote no sample at all exits 1.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
from collections.abc import Callable
from typing import NoReturn

from data_prep.checks import InputError, check_number, check_out_dir, check_videos_dir
from data_prep.decode import SHORT_POLICIES
from data_prep.labels import LabelSource
from data_prep.runner import iter_summary_lines, prepare
from data_prep.shards import MAX_FPS, NATIVE_FPS, PrepParams


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a bad command line is one line ``error: <flag>: <problem>`` (no usage block), status 2."""

    def error(self, message: str) -> NoReturn:
        """Print ``error: argument --fps: ...`` as ``error: --fps: ...`` and exit 2."""
        sys.stderr.write(f"error: {message.removeprefix('argument ')} (see --help)\n")
        sys.exit(2)


def prep_parser(prog: str, description: str) -> OneLineParser:
    """The parser of a data_prep command."""
    return OneLineParser(prog=prog, description=description)


def fps_value(text: str) -> float | str:
    """``--fps``: frames per second of video time, or ``native`` (the video's own rate)."""
    if text.strip().lower() == NATIVE_FPS:
        return NATIVE_FPS
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected frames per second or 'native', got {text!r}") from None


def add_prep_args(parser: argparse.ArgumentParser, out_flag: str = "--out", out_required: bool = True) -> None:
    """Add the output (``args.shards_out``), sampling, sharding and Ray flags."""
    defaults = PrepParams()
    parser.add_argument(
        out_flag, dest="shards_out", metavar="DIR", required=out_required, help="output folder (shared storage too)"
    )
    parser.add_argument("--fps", type=fps_value, default=defaults.fps,
                        help=f"frames sampled per second of video (0 < fps <= {MAX_FPS:g}), or 'native': every "
                        "frame at the video's own rate, as the official SoF-Net frames")
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
    parser.add_argument("--decode-timeout", type=float, default=defaults.decode_timeout,
                        help="seconds one video may take; a video over it (a stalled read) is skipped and reported")
    parser.add_argument("--ray-address", default=None, help="Ray cluster address (default: start a local Ray)")
    parser.add_argument("--num-cpus", type=int, default=None, help="CPUs of the local Ray (default: all)")
    parser.add_argument("--no-ray", action="store_true", help="write the shards one by one in this process")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the shards of another run in the output folder (else that is refused)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log every skipped video")


def params_from_args(args: argparse.Namespace) -> PrepParams:
    """The :class:`PrepParams` the flags ask for (raises :class:`InputError` naming a bad flag)."""
    return PrepParams(**{f.name: getattr(args, f.name) for f in dataclasses.fields(PrepParams)})


def check_prep_args(
    args: argparse.Namespace, videos_flag: str | None = "--videos", out_flag: str = "--out"
) -> PrepParams:
    """Check every flag of :func:`add_prep_args` (and the videos folder) before anything is read or written.

    Args:
        args: The parsed flags.
        videos_flag: The flag of the videos folder (None: the command has none).
        out_flag: The flag of the shard folder (``args.shards_out``).

    Returns:
        The parameters.

    Raises:
        InputError: The first bad flag, folder or number.
    """
    params = params_from_args(args)
    if args.num_cpus is not None:
        check_number("--num-cpus", args.num_cpus, low=1)
    if videos_flag is not None:
        check_videos_dir(args.videos, videos_flag)
    if args.shards_out is not None:
        check_out_dir(args.shards_out, out_flag)
    return params


def main_guard(run: Callable[[], int]) -> int:
    """Run a command body; :class:`InputError` becomes one line on stderr and exit status 2 (no traceback)."""
    try:
        return run()
    except InputError as error:
        sys.stderr.write(f"error: {error}\n")
        return 2


def run_command(
    parser: argparse.ArgumentParser, argv: list[str] | None, load: Callable[[argparse.Namespace], LabelSource]
) -> int:
    """The body of a shard command: parse and check every flag, ``load(args)`` the annotations, write the shards.

    Returns:
        The exit status: 2 on bad input (one line on stderr), else :func:`run_prep`'s.
    """

    def run() -> int:
        args = parser.parse_args(argv)
        params = check_prep_args(args)
        return run_prep(load(args), args.videos, args, params)

    return main_guard(run)


def run_prep(source: LabelSource, videos: str, args: argparse.Namespace, params: PrepParams) -> int:
    """Write the shards, print the summary; returns the exit status.

    1 if a shard could not be written or if the run ends with no sample at all in the output folder (one line on
    stderr says so; ``report.json`` has every reason), else 0.
    """
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    if not args.ray_address:
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a local Ray needs no token; a cluster brings its own
    summary = prepare(
        source,
        videos,
        args.shards_out,
        params,
        ray_address=args.ray_address,
        num_cpus=args.num_cpus,
        use_ray=not args.no_ray,
        progress=not args.no_progress,
        overwrite=args.overwrite,
    )
    for line in iter_summary_lines(summary):
        print(line)
    if summary["written"] == 0:
        why = ", ".join(f"{reason} x{n}" for reason, n in summary["skipped_by_reason"].items())
        sys.stderr.write(f"error: nothing written to {summary['out']}: all {summary['skipped']} videos were "
                         f"skipped ({why}); see report.json\n")
        return 1
    return 1 if summary["failed_shards"] else 0
