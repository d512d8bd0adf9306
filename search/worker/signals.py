"""SIGTERM/SIGINT (and a closed output) stop the worker at once, except inside the few
steps that must finish.

The handler raises ``WorkerStopped`` in the main thread, which interrupts training
wherever it is; the worker then re-queues its trial. Inside ``deferred()`` (claiming a
trial, re-queueing one, recording a result) the signal is only noted, and ``check()``
raises it at the next safe point.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class WorkerStopped(Exception):
    """SIGTERM or SIGINT arrived, or the output was closed (SIGPIPE): ``signum``."""

    def __init__(self, signum: int) -> None:
        name = signal.Signals(signum).name
        super().__init__(f"{name} (its output was closed)" if signum == signal.SIGPIPE else name)
        self.signum = signum


def silence_stdout() -> None:
    """After a broken pipe: nothing more goes to it, Python's exit-time flush included
    (which would print an "Exception ignored" traceback)."""
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


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

    def stop(self, signum: int) -> None:
        """A stop from within (the worker's output was closed), treated like that signal:
        raised at once in the main thread outside ``deferred()``, else at the next check."""
        if threading.current_thread() is threading.main_thread():
            self.handler(signum, None)
        else:
            self.pending = signum

    def check(self) -> None:
        if self.pending is not None and not self.depth:
            signum, self.pending = self.pending, None
            raise WorkerStopped(signum)


class Voice:
    """A worker's lines, tagged with its index once it has one. A closed output (`search
    worker | head`) stops the worker as SIGPIPE stops a Unix program, but the way SIGTERM
    stops a worker: the running trial is re-queued."""

    def __init__(self, say: Callable[[str], None], signals: StopSignals) -> None:
        self.say = say
        self.signals = signals
        self.tag = "[worker]"

    def __call__(self, line: str) -> None:
        try:
            self.say(f"{self.tag} {line}")
        except BrokenPipeError:
            silence_stdout()
            self.signals.stop(signal.SIGPIPE)
