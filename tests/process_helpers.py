"""Processes the tests start: ``prepare`` on a local Ray in a child interpreter, and stopping a process group.

    summary = prepare_on_ray(source, videos, out, params, num_cpus=2, progress=False)
    stop_process_group(head_proc)    # a `ray start --block` or `mlflow server` started with start_new_session=True

Why not in the pytest process: Ray's core worker is not safe to start and stop repeatedly in one process
(ray-project/ray#31145). Its gRPC and GCS-client threads outlive ``ray.shutdown()``; after four local clusters
had come and gone inside pytest, the interpreter crashed at exit (SIGSEGV after "198 passed"), failing CI.
One Ray session per process is how ``python -m data_prep.activitynet`` runs, and the child's exit status is
checked, so a crash at its exit still fails the test instead of hiding.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
from typing import Any


def _child(conn: Any, args: tuple, kwargs: dict) -> None:
    from data_prep.runner import prepare

    try:
        conn.send(("ok", prepare(*args, **kwargs)))
    except BaseException as error:  # sent back and re-raised in the test, where pytest.raises can see it
        conn.send(("error", error))
    finally:
        conn.close()


def prepare_on_ray(*args: Any, timeout: float = 600, **kwargs: Any) -> dict:
    """``prepare(*args, use_ray=True, **kwargs)`` in a spawned child; returns its summary or raises its error."""
    ctx = multiprocessing.get_context("spawn")  # a fresh interpreter: no threads or Ray state from pytest
    receive, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(send, args, {**kwargs, "use_ray": True}))
    proc.start()
    send.close()
    try:
        if not receive.poll(timeout):
            raise TimeoutError(f"prepare on Ray gave no result in {timeout} s")
        status, value = receive.recv()
    except EOFError:
        status, value = "died", None
    finally:
        proc.join(60)
        if proc.is_alive():
            proc.kill()
            proc.join()
    assert status != "died", f"the prepare process died (exit code {proc.exitcode}) before answering"
    assert proc.exitcode == 0, f"the prepare process exited with {proc.exitcode} after answering"
    if status == "error":
        raise value
    return value


# A test's Ray head (or local cluster) at teardown: SIGTERM, then SIGKILL after this many seconds. Ray's graceful stop
# takes 20 s or more here and saves nothing a test still reads; the default grace cost ~45 s of the suite's teardowns.
RAY_GRACE = 3.0


def stop_process_group(proc: subprocess.Popen, grace: float = 10) -> None:
    """SIGTERM the process group of ``proc`` (started with ``start_new_session=True``); SIGKILL what is left of the
    group once ``proc`` has exited or ``grace`` s have passed.

    The group, not the process: killing only `ray start --block` leaves gcs_server, raylet and the dashboard running
    after the suite, and its graceful stop outlives 20 s here (gcs_server and the autoscaler's monitor drain after
    the rest has gone). A test's head has nothing left to save at teardown, so its fixtures pass a short ``grace``.
    """
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        proc.wait()
        return
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        pass
    try:  # what outlived `proc` or the grace: the group's other members
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=30)  # bounded like every wait here: SIGKILL is not ignored, a D-state moment passes
