"""The heartbeat a running trial sends so other workers can tell its worker is alive.

The claim writes the first beat in its own transaction; this thread writes the rest.
A beat that fails (the database is away) is tried again every ``RETRY_S`` rather than
after a whole interval, so the trial's heartbeat is fresh again as soon as the database
is back: the stale check (``Slots.requeue_stale``) waits a whole grace period of
connected time before it judges anyone, which this is quicker than. What a failure
means, and whether it is said, is the storage's to decide (``RetryPolicy.attempt``).
"""

from __future__ import annotations

import threading
from types import TracebackType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from search.storage.resilient import ResilientStorage

RETRY_S = 1.0


class Heartbeat:
    def __init__(self, storage: ResilientStorage, trial_id: int, interval: float) -> None:
        self.storage = storage
        self.trial_id = trial_id
        self.interval = interval
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._beat, name=f"heartbeat-{trial_id}", daemon=True)

    def __enter__(self) -> Heartbeat:
        self.thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.stop.set()
        self.thread.join()

    def _beat(self) -> None:
        wait = self.interval
        while not self.stop.wait(wait):
            beaten = self.storage.record_heartbeat(self.trial_id)
            wait = self.interval if beaten else min(self.interval, RETRY_S)
        self.storage.remove_session()
