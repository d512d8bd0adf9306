"""SIGTERM/SIGINT stop the worker at once, except inside the few steps that must finish.

The handler raises ``WorkerStopped`` in the main thread, which interrupts training
wherever it is; the worker then re-queues its trial. Inside ``deferred()`` (claiming a
trial, re-queueing one, recording a result) the signal is only noted, and ``check()``
raises it at the next safe point.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class WorkerStopped(Exception):
    """SIGTERM or SIGINT arrived; ``exit_code`` follows the shell's 128 + signal number."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.exit_code = 128 + signum


class StopSignals:
    def __init__(self) -> None:
        self.pending: int | None = None
        self.depth = 0

    def handler(self, signum: int, frame: FrameType | None) -> None:
        if self.depth:
            self.pending = signum
            return
        raise WorkerStopped(signum)

    @contextmanager
    def installed(self) -> Iterator[StopSignals]:
        previous = {sig: signal.signal(sig, self.handler) for sig in STOP_SIGNALS}
        try:
            yield self
        finally:
            for sig, old in previous.items():
                signal.signal(sig, old)

    @contextmanager
    def deferred(self) -> Iterator[None]:
        self.depth += 1
        try:
            yield
        finally:
            self.depth -= 1

    def check(self) -> None:
        if self.pending is not None and not self.depth:
            signum, self.pending = self.pending, None
            raise WorkerStopped(signum)
