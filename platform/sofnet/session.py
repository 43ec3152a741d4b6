"""What every command line sets up the same way: the smoke-test settings, the MLflow store, the Ray session.

Usage::

    from sofnet.session import SMOKE, ensure_synthetic_shards, init_ray, tracking_store
    cfg = load_config(path, SMOKE + overrides)            # --smoke-test: a tiny run of the same job
    uri = tracking_store(cfg)                             # resolved and reachable, or TrackingError (one line)
    init_ray(cfg)                                         # scaling.ray_address / $RAY_ADDRESS / a new local Ray

Used by ``jobs/train_*.py`` (``sofnet.train.cli``), the sweeps (``sofnet.tune``), ``jobs/evaluate.py``,
``jobs/results_table.py``, ``jobs/gate_labels.py`` and ``python -m sofnet.figure_a``; their start-up and one-line
errors (``run_command`` adds ``--debug`` and the ``key=value`` overrides to a parser that has ``--config``)::

    return run_command(parser, argv, run, errors=(DataError,))      # run(args, cfg) -> exit status
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

logger = logging.getLogger(__name__)

SMOKE = ["model.backbone=resnet18", "model.num_segments=4", "model.input_size=64", "model.pretrained=none",
         "model.gate_hidden=64", "data.batch_size=2", "data.global_batch_size=0", "data.num_workers=0",
         "data.resize=73", "data.shuffle_buffer=8", "train.stage1.epochs=1", "train.stage2.epochs=1",
         "train.log_every=1", "train.decision_maps_correct=1",
         "train.decision_maps_failed=1"]


def ensure_synthetic_shards(root: str | Path, videos: int = 16, classes: int = 3, seed: int = 0) -> Path:
    """Generate and shard a tiny synthetic dataset under ``root`` (kept: a second call reuses it)."""
    from data_prep.shards import PrepParams
    from data_prep.synthetic import generate, make_shards

    root = Path(root)
    shards = root / "shards"
    if not (shards / "manifest.json").is_file():
        annotation = generate(root / "raw", videos=videos, classes=classes, seed=seed, duration=(4.0, 6.0),
                              size=(96, 72), fps=8)
        make_shards(annotation, shards, params=PrepParams(short_side=72, shard_size=4, fps=2.0, min_frames=4),
                    use_ray=False)
    return shards


def tracking_store(cfg: Any) -> str:
    """The config's MLflow store, resolved (``sofnet.train.tracking.resolve_tracking_uri``) and checked reachable
    (bounded: no retries, 10 s per request to a server); raises ``TrackingError`` in one line."""
    from sofnet.train.tracking import check_tracking, resolve_tracking_uri

    uri = resolve_tracking_uri(cfg.mlflow.tracking_uri)
    check_tracking(uri, cfg.mlflow.experiment)
    return uri


def init_ray(cfg: Any) -> None:
    """Connect to ``scaling.ray_address`` or ``$RAY_ADDRESS`` (``ray job submit``), else start a new local Ray,
    never a stray local cluster of someone else (what ``address=None`` would attach to); once per process.

    A known ``host:port`` is also handed to every worker (``RAY_ADDRESS`` in the job's runtime env): Ray Train's
    detached placement-group cleaner finds its cluster through the state API, which without it reads
    ``/tmp/ray/ray_current_cluster`` or pgreps for a GCS, and on a machine with several Ray clusters (or one
    started with ``--temp-dir``) it fails, so a trial that Tune stopped (ASHA) kept its workers' CPUs reserved.
    A new local Ray gets its dashboard (the state API) on a free port handed to the workers the same way
    (``RAY_API_SERVER_ADDRESS``): otherwise a stale ``ray_current_cluster`` left by an earlier ``ray start`` made the
    cleaner print a traceback into the job's console ("Timed out while waiting for GCS").
    On a new local Ray, Ray Train's preemption watcher is off: it polls cloud spot-preemption notices (nothing to
    watch on a laptop) and its actor logs an error line at start; clusters keep it.
    """
    import ray

    if ray.is_initialized():
        return
    address = cfg.scaling.get("ray_address") or os.environ.get("RAY_ADDRESS") or "local"
    if address == "local":
        os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")  # reaches this new local Ray only
    plain_address = address not in ("local", "auto") and "://" not in address
    runtime_env = {"env_vars": {"RAY_ADDRESS": address}} if plain_address else None
    extra = {}
    if address == "local":  # its state API on a port chosen here, so that the cleaner is told where (not a stale file)
        port = free_port()
        extra = {"dashboard_port": port}
        runtime_env = {"env_vars": {"RAY_API_SERVER_ADDRESS": f"http://127.0.0.1:{port}"}}
    ray.init(address=address, log_to_driver=True, runtime_env=runtime_env, **extra)


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """``n`` distinct TCP ports free on ``host`` now (all bound at once, so none repeats; another process may still
    take one before its user binds it)."""
    import socket

    socks = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(n)]
    try:
        for s in socks:
            s.bind((host, 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def free_port(host: str = "127.0.0.1") -> int:
    """One TCP port free on ``host`` now (see :func:`free_ports`)."""
    return free_ports(1, host)[0]


def cli_config(path: str, overrides: Sequence[str], verbose: bool = False) -> Any:
    """A command line's start: the quiet console (``sofnet.console``), then the typed config or one line + exit 2."""
    from sofnet.config import load_config_or_exit
    from sofnet.console import setup

    setup(verbose=verbose)
    return load_config_or_exit(path, overrides)


def input_errors() -> tuple:
    """The errors that mean bad input at a command line (checkpoint, early-exit value, shards and paths)."""
    from sofnet.checkpoint import CheckpointError
    from sofnet.early_exit import EarlyExitError
    from sofnet.preflight import PreflightError

    return (CheckpointError, EarlyExitError, PreflightError)


def one_line_errors(body: Callable[[], int], *, debug: bool = False, errors: tuple = ()) -> int:
    """Run a command's ``body``; bad input (:func:`input_errors` and ``errors``) becomes one ``error:`` line on
    stderr and exit status 2, a traceback only with ``debug``. Other exceptions propagate (a bug, not an input)."""
    try:
        return body()
    except Exception as e:
        # ``errors`` first: input_errors() imports torch (~3 s), which a bad config file need not wait for
        if debug or not (isinstance(e, tuple(errors)) or isinstance(e, input_errors())):
            raise
        sys.stderr.write(f"error: {e}\n")
        return 2


def run_command(parser: Any, argv: Optional[Sequence[str]], body: Callable[[Any, Any], int], *,
                errors: tuple = ()) -> int:
    """A config command's shared tail: ``--debug`` and the overrides added to ``parser`` (which has ``--config``),
    the quiet console and typed config (:func:`cli_config`), then ``body(args, cfg)`` with one-line errors."""
    parser.add_argument("--debug", action="store_true", help="show tracebacks and every library's log lines")
    parser.add_argument("overrides", nargs="*", help="key=value config overrides")
    args = parser.parse_args(argv)
    cfg = cli_config(args.config, args.overrides, verbose=args.debug)
    return one_line_errors(lambda: body(args, cfg), debug=args.debug, errors=errors)
