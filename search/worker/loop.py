"""The worker loop: claim a trial, train it under a heartbeat, record the result.

A worker leaves when the study's budget is finished (no trial WAITING or RUNNING: a
trial failed by heartbeat or stop has its retry queued in the same transaction, so
there is no moment in between), or when its time budget is spent. While others run,
it keeps polling, so it can take over the retry of a trial whose worker dies.
SIGTERM/SIGINT re-queue the current trial at once; a kill -9 is caught by the heartbeat
instead, and the retry resumes from the trial's last checkpoint.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import TrialState

from search import keys
from search.artifacts import ArtifactStoreError, StoreLost
from search.errors import SearchError
from search.storage import optuna_adapter
from search.wording import counted
from search.worker.heartbeat import Heartbeat
from search.worker.signals import WorkerStopped

if TYPE_CHECKING:
    from search.artifacts import ArtifactStore
    from search.storage.resilient import ResilientStorage
    from search.study.history import History
    from search.study.spec import StudySpec
    from search.worker.config import WorkerConfig
    from search.worker.signals import StopSignals, Voice


@dataclass
class Worker:
    """A worker that has joined its study (``search.worker.assembly.assemble``)."""

    config: WorkerConfig
    spec: StudySpec
    storage: ResilientStorage
    study: optuna.Study
    slots: optuna_adapter.Slots
    index: int
    store: ArtifactStore
    history: History
    pruner: str  # the study's --pruner
    objective: Callable[[optuna.Trial], float]
    device: str
    precision: str
    say: Voice
    signals: StopSignals

    @property
    def identity(self) -> str:
        return f"{socket.gethostname()}/{os.getpid()}"

    @property
    def labels(self) -> dict[str, str]:
        return {keys.WORKER: self.identity, keys.DEVICE: self.device, keys.PRECISION: self.precision}

    def run(self) -> optuna.Study:
        progress = self.slots.progress()
        self.say(f"joined study {self.spec.name!r} ({self.spec.dataset}, {counted(self.spec.epochs, 'epoch')}/trial, "
                 f"{self.pruner} pruner, budget {progress.budget}, {progress.finished} finished) as {self.identity} "
                 f"on {self.device} ({self.precision})")
        self.sweep()
        with self.signals.installed():
            self.loop()
        progress = self.slots.progress()
        if progress.done:
            self.sweep()
            self.say(f"study {self.spec.name!r} finished: {counted(progress.finished, 'trial')} "
                     f"({progress.complete} complete, {progress.pruned} pruned, {progress.failed} failed)")
        return self.study

    def loop(self) -> None:
        deadline = time.monotonic() + self.config.timeout if self.config.timeout else None
        announced_wait = False
        while deadline is None or time.monotonic() < deadline:
            if self.step():
                announced_wait = False
                continue
            if self.slots.progress().done:
                return
            if not announced_wait:
                self.say("no trial to claim; waiting for the running ones (to retry any whose worker dies)")
                announced_wait = True
            time.sleep(min(self.config.heartbeat_interval, 5))

    def step(self) -> bool:
        """Claim one trial and run it to its end; False when there was none to claim."""
        self.signals.check()
        self.requeue_stale()
        with self.signals.deferred():
            claimed = self.slots.claim(self.identity, self.labels)
        if claimed is None:
            return False
        self.history.refresh(fresh=[claimed])  # its copy must be current: it is resumed from
        self.run_trial(claimed)
        return True

    def sweep(self) -> None:
        self.store.sweep(self.slots.references)

    def requeue_stale(self) -> None:
        """Fail and re-queue trials whose workers went silent, but only after this process
        has itself reached the database for a whole grace period (after an outage, the
        live workers get their heartbeats in first)."""
        grace = self.config.grace_period
        if self.storage.policy.health.connected_for() < grace:
            return
        with self.signals.deferred():
            requeued = self.slots.requeue_stale(grace)
        for number in requeued:
            self.say(f"trial {number}: its worker sent no heartbeat for {grace:.0f} s; queued its retry")
        if requeued:
            self.sweep()

    def run_trial(self, claimed: int) -> None:
        started = time.monotonic()
        name = f"trial id {claimed}"
        with Heartbeat(self.storage, claimed, self.config.heartbeat_interval):
            try:
                self.signals.check()
                trial = optuna_adapter.open_trial(self.study, claimed, self.history.trial(claimed))
                name = f"trial {trial.number}"
                outcome = self.train_and_tell(trial)
            except UpdateFinishedTrialError:
                # Our heartbeats stopped reaching the database long enough for another worker
                # to fail this trial and queue its retry: that retry owns it now.
                self.say(f"{name} was taken over by a retry after missed heartbeats; dropping it")
                return
            except (WorkerStopped, ArtifactStoreError, StoreLost) as stop:
                with self.signals.deferred():
                    successor = self.slots.requeue(claimed, keys.FailCause.STOPPED)
                if successor is not None:
                    self.say(f"{name} re-queued as trial {successor}: {stop}")
                raise
        if outcome is not None:
            self.history.refresh()  # other workers' completions decide what is still among the best
            self.store.remove_weights(self.history.outside_best(self.config.keep_best), self.slots.unregister_artifact)
            best = self.history.best(1)[0]
            self.say(f"trial {trial.number} complete: val_acc {outcome:.2%} in {time.monotonic() - started:.0f} s "
                     f"(best so far {best.value:.2%}, trial {best.number})")

    def train_and_tell(self, trial: optuna.Trial) -> float | None:
        """Run the objective and record its outcome; returns the value of a completed trial.

        Every ending clears the trial's checkpoint first: nothing is left to resume."""
        try:
            value = self.objective(trial)
        except optuna.TrialPruned as pruned:
            trial.set_user_attr(keys.PRUNED_REASON, str(pruned))
            self.finish(trial, TrialState.PRUNED)
            self.say(f"trial {trial.number} pruned: {pruned}")
            return None
        except (WorkerStopped, UpdateFinishedTrialError, SearchError):
            raise  # the worker's own trouble (a signal, the database, the artifact store)
        except Exception as error:  # a bug or resource error fails this trial, not the worker
            trial.set_user_attr(keys.FAIL_REASON, f"{type(error).__name__}: {error}")
            self.finish(trial, TrialState.FAIL)
            self.say(f"trial {trial.number} failed: {type(error).__name__}: {error}")
            return None
        self.finish(trial, TrialState.COMPLETE, value)
        return value

    def finish(self, trial: optuna.Trial, state: TrialState, value: float | None = None) -> None:
        with self.signals.deferred():
            self.store.discard_checkpoint(trial)
            recorded = self.study.tell(trial, value, state=state, skip_if_finished=True)
        if recorded.state != state:
            raise UpdateFinishedTrialError(f"trial {trial.number} was already {recorded.state.name}")
        self.history.absorb(recorded)
