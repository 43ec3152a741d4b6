"""What the console shows: our INFO lines, other libraries' warnings and errors, nothing repeated per step.

Every entry point (driver) and every Ray Train worker calls :func:`setup` once; ``verbose=True`` (the CLIs'
``--verbose``) brings every library's INFO lines and warnings back. Usage::

    from sofnet.console import setup
    setup(verbose=args.verbose)                  # a driver
    setup(verbose=cfg_verbose, rank=rank)        # a training worker: rank 0 logs progress, others only warnings

Each silenced message below is named with the reason it is safe to drop; a new library warning still shows.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import warnings

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# Libraries whose INFO lines repeat per epoch or per checkpoint and say nothing our own lines do not:
# Ray Train's "Reporting training result N: TrainingReport(...)" (the whole metrics dict, every epoch) and
# "Checkpoint successfully created" (every epoch, every rank); MLflow's "Successfully registered model"/"Created
# version" (our tracker logs one line for both) and its database set-up; DeepSpeed's op-build and engine lines.
_QUIET_INFO = ("ray.train", "ray.tune", "mlflow", "DeepSpeed", "deepspeed", "torch.distributed", "alembic")


_quiet = False


def setup(verbose: bool = False, rank: int = 0) -> None:
    """Configure logging and warning filters for this process (idempotent)."""
    global _quiet
    import mlflow  # noqa: F401  (MLflow sets its loggers' levels when imported: import it first, then override)

    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format=FORMAT, force=True)
    logging.getLogger("sofnet").setLevel(logging.INFO if rank == 0 or verbose else logging.WARNING)
    logging.getLogger("data_prep").setLevel(logging.INFO)
    _quiet = not verbose
    # Ray's driver collapses lines that differ only in their numbers when several processes print them within 5 s,
    # and drops a line repeated once without a trace: two jobs side by side lost one job's progress lines and its
    # worker placement. Our lines come from rank 0 of each job, one per interval, so nothing is collapsed; the cost,
    # a library warning printed by every rank shows once per rank (the quiet levels below silence the known ones).
    # Read when Ray is imported: entry points call setup() first.
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    # Ray's driver wraps every worker line in colour codes even when the console is a file (CI's log, `> run.log`),
    # where they show as `[36m(RayTrainWorker pid=...)[0m`; its own switch, read at each print, turns them off.
    if not sys.stderr.isatty():
        os.environ.setdefault("RAY_COLOR_PREFIX", "0")
        _plain_ray_records()
    if verbose:
        return
    quiet_libraries()
    # torch's extension builder says "No CUDA runtime is found" on every CPU rank while DeepSpeed builds its CPU op.
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    # DeepSpeed's collectives call torch's all_gather_into_tensor, deprecated in torch 2.14: a FutureWarning per
    # gather (every evaluation, every rank) that only DeepSpeed can fix.
    warnings.filterwarnings("ignore", message=r".*all_gather_into_tensor.* is deprecated", category=FutureWarning)
    # MLflow's progress bars for artifact downloads (it downloads every logged model back to validate it).
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _plain_ray_records() -> None:
    """Drop the colour codes Ray puts into its own log messages (the dashboard address of "Started a local Ray
    instance" is bold green), whichever handler Ray installed: a record factory sees every record before them."""
    base = logging.getLogRecordFactory()
    if getattr(base, "sofnet_plain", False):
        return

    def factory(*args, **kwargs) -> logging.LogRecord:
        record = base(*args, **kwargs)
        if record.name.startswith("ray") and ("\x1b[" in str(record.msg) or record.args):
            try:
                message = record.getMessage()
            except (TypeError, ValueError):  # a malformed message: the handler reports it as it would
                return record
            if "\x1b[" in message:
                record.msg, record.args = _ANSI.sub("", message), None
        return record

    factory.sofnet_plain = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(factory)


def quiet_libraries() -> None:
    """(Re)apply the quiet levels of the libraries above; call again after importing one that resets its own
    logger's level when imported (DeepSpeed does: ``sofnet.train.deepspeed_config.build_engine`` calls this)."""
    if not _quiet:
        return
    for name in _QUIET_INFO:
        logging.getLogger(name).setLevel(logging.WARNING)
    # DeepSpeed warns on every engine that ZeRO runs "an untested optimizer": we pass torch's SGD on purpose
    # (zero_allow_untested_optimizer in sofnet.train.deepspeed_config), once per stage and rank.
    logging.getLogger("DeepSpeed").setLevel(logging.ERROR)
