"""A wall-clock limit for decoding one video, so that a hung read cannot stall a shard task forever.

Usage::

    from data_prep.deadline import Deadline
    with Deadline(600) as deadline:           # seconds for the whole video
        container = av.open(path, timeout=deadline.io_timeout)
        ...                                   # raises DeadlineExceeded once the time is up

How: ``SIGALRM`` (an interval timer) fires when the time is up and then every quarter second. A blocking system
call (``open`` of a FIFO without a writer, a ``read`` from a stalled pipe or network mount) returns ``EINTR``;
FFmpeg then asks its interrupt callback whether to give up, which PyAV answers "yes" once ``io_timeout`` has
passed since that read began, so the call returns and the handler's :class:`DeadlineExceeded` reaches Python.
The limit is therefore about ``seconds`` for a stalled open and at most about twice ``seconds`` for a read
that stalls late in the video. Any exception that leaves the block after the time is up becomes
:class:`DeadlineExceeded` (FFmpeg may report the interruption first, as ``InterruptedError`` or ``ExitError``).

Costs and limits: one ``setitimer`` pair per video. Signals work only in a process's main thread (Ray runs a task
there; ``--no-ray`` runs in the command's main thread); elsewhere the block runs with PyAV's per-read timeout
only, and a log line says so. A decoder stuck inside one C call that never reads (an FFmpeg bug) is not
interrupted: only killing the worker stops that (Ray reports the shard's worker as crashed).
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from types import FrameType, TracebackType

log = logging.getLogger(__name__)

REPEAT = 0.25  # seconds between further alarms once the time is up (FFmpeg retries reads interrupted before)


class DeadlineExceeded(Exception):
    """The time of a :class:`Deadline` ran out."""


class Deadline:
    """Raise :class:`DeadlineExceeded` in the block once ``seconds`` of wall-clock time have passed."""

    def __init__(self, seconds: float | None) -> None:
        """``seconds`` None or 0: no limit (the block runs as it would without)."""
        self.seconds = seconds or None
        self.start = 0.0
        self._armed = False
        self._previous: object = None

    @property
    def io_timeout(self) -> float | None:
        """PyAV's ``timeout`` for ``av.open``: the longest single open or read before FFmpeg gives up."""
        return self.seconds

    @property
    def expired(self) -> bool:
        """The time is up."""
        return self.seconds is not None and time.monotonic() - self.start >= self.seconds

    def _alarm(self, signum: int, frame: FrameType | None) -> None:
        if self._armed:
            raise DeadlineExceeded(f"no result after {self.seconds:g} s")

    def __enter__(self) -> Deadline:
        self.start = time.monotonic()
        if self.seconds is None:
            return self
        if threading.current_thread() is not threading.main_thread():
            log.info("decode timeout: not in the main thread, only PyAV's per-read timeout applies")
            return self
        self._previous = signal.signal(signal.SIGALRM, self._alarm)
        self._armed = True
        signal.setitimer(signal.ITIMER_REAL, self.seconds, REPEAT)
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        if self._armed:
            self._armed = False  # first: an alarm already on its way must not raise in the code after the block
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, self._previous)  # type: ignore[arg-type]
        if isinstance(error, Exception) and not isinstance(error, DeadlineExceeded) and self.expired:
            raise DeadlineExceeded(f"no result after {self.seconds:g} s ({type(error).__name__}: {error})") from error
