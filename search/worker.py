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
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Protocol

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import TrialState

from search import keys, optuna_adapter
from search.artifacts import ArtifactStoreError, check_artifact_directory
from search.database import RECONNECT_PATIENCE_S
from search.errors import SearchError
from search.heartbeat import Heartbeat
from search.history import History
from search.pruners import MEDIAN_PRUNER, make_pruner
from search.sampling import BoundedSampler, HistoryMedianPruner
from search.signals import StopSignals, WorkerStopped, silence_stdout
from search.storage import open_storage
from search.study import (
    StudySpec, check_compatible, find_study, inherit, join_study, make_sampler, study_pruner, study_space,
    study_to_join, worker_seed,
)
from search.wording import counted


# Fault-injection hook for the tests: sleep this long between claiming a trial and
# starting its heartbeat thread, the window a killed worker once left orphans in.
FAULT_PAUSE_AFTER_CLAIM = "HPSEARCH_FAULT_PAUSE_AFTER_CLAIM"


@dataclass(frozen=True)
class WorkerConfig:
    storage: str
    study: str | None  # None: see ``search.study.study_to_join``; set by ``Worker.join``
    objective: str | None  # None: the study's (fashion_mnist for a new one); set by ``Worker.join``
    epochs: int | None  # None: the study's (10 for a new one); set by ``Worker.join``
    n_trials: int | None
    data_dir: str | None
    artifacts: str
    device: str = "auto"
    seed: int = 0
    timeout: float | None = None
    heartbeat_interval: float = 10
    grace_period: float = 90
    keep_best: int = 5
    checkpoint_every: int = 1
    db_patience: float = RECONNECT_PATIENCE_S
    space: str | None = None  # a search space file; None: the study's (the default for a new one)
    pruner: str | None = None  # search.pruners.PRUNERS; None: the study's (median for a new one)


class Workload(Protocol):
    """What a worker trains: ``search.training.Training`` (the real objectives), or a
    synthetic stand-in in the scale benchmarks."""

    def check(self) -> None:
        """Everything about the data, checked before anything is written anywhere."""

    def objective(self, worker: Worker) -> Callable[[optuna.Trial], float]:
        """The objective, once the worker has joined (it knows its index and directory)."""


class Worker:
    def __init__(self, config: WorkerConfig, say: Callable[[str], None], workload: Workload | None = None) -> None:
        self.workload = workload  # None: the real training, once the objective is known
        self.config = config
        self.tag = "[worker]"
        self.say_raw = say
        self.signals = StopSignals()
        self.identity = f"{socket.gethostname()}/{os.getpid()}"
        self.device = "cpu"  # the workload sets where it trains

    def say(self, line: str) -> None:
        try:
            self.say_raw(f"{self.tag} {line}")
        except BrokenPipeError:
            # The reader has gone (`search worker | head`): stop as SIGPIPE stops a Unix
            # program, but the way SIGTERM stops a worker, so the running trial is re-queued.
            silence_stdout()
            self.signals.stop(signal.SIGPIPE)

    def join(self) -> None:
        """Check everything, then join the study. Everything is checked before the first
        write: the study (read-only), the data, the artifact directory; only then are
        tables created and the study joined."""
        config = self.config
        existing = open_storage(config.storage, writable=False, missing_ok=True)
        name = config.study or study_to_join(existing, config.objective)
        study = find_study(existing, name) if existing is not None else None
        objective, epochs = inherit(study.user_attrs if study is not None else {}, config.objective, config.epochs)
        config = self.config = replace(config, study=name, objective=objective, epochs=epochs)
        space = None
        if config.space is not None:
            from objectives.space import load_space

            space = load_space(config.space, objective)
        spec = StudySpec(config.study, objective, epochs, space, config.pruner)
        if study is not None:
            check_compatible(study, spec)  # before any slow set-up
        if existing is not None:
            existing.close()
        if self.workload is None:
            from search.training import Training  # torch is imported here, not for the loop

            self.workload = Training(config)
        self.workload.check()
        self.directory = check_artifact_directory(config.artifacts)
        self.storage = open_storage(config.storage, patience=config.db_patience, notify=self.say)
        self.study, self.index, self.token = join_study(self.storage, spec, config.n_trials, config.seed)
        self.directory.create()
        self.tag = f"[worker {self.index}]"
        self.slots = self.storage.slots(self.study)
        # Sampling and pruning read this worker's incremental view of the study.
        self.space = study_space(self.study)  # what every worker of the study samples
        self.history = History(self.storage, self.study, seed=self.index)
        sampler = make_sampler(worker_seed(config.seed, self.index), gamma=self.history.gamma)
        self.study.sampler = BoundedSampler(sampler, self.history)
        self.pruner = study_pruner(self.study)  # what every worker of the study prunes with
        self.study.pruner = (HistoryMedianPruner(self.history, **MEDIAN_PRUNER) if self.pruner == "median"
                             else make_pruner(self.pruner, config.epochs))
        optuna_adapter.faster_tpe()

    def run(self) -> optuna.Study:
        self.join()
        config = self.config
        objective = self.workload.objective(self)
        progress = self.slots.progress()
        self.say(f"joined study {config.study!r} ({config.objective}, {counted(config.epochs, 'epoch')}/trial, "
                 f"{self.pruner} pruner, "
                 f"budget {progress.budget}, {progress.finished} finished) as {self.identity} on {self.device}")
        self.directory.sweep(self.slots, self.token)
        with self.signals.installed():
            self.loop(objective, self.labels)
        directory, token = self.directory, self.token
        progress = self.slots.progress()
        if progress.done:
            directory.sweep(self.slots, token)
            self.say(f"study {config.study!r} finished: {counted(progress.finished, 'trial')} "
                     f"({progress.complete} complete, {progress.pruned} pruned, {progress.failed} failed)")
        return self.study

    @property
    def labels(self) -> dict[str, str]:
        return {keys.WORKER: self.identity, keys.DEVICE: self.device}

    def loop(self, objective: Callable[[optuna.Trial], float], labels: dict[str, str]) -> None:
        config = self.config
        deadline = time.monotonic() + config.timeout if config.timeout else None
        announced_wait = False
        while deadline is None or time.monotonic() < deadline:
            if self.step(objective, labels):
                announced_wait = False
                continue
            if self.slots.progress().done:
                return
            if not announced_wait:
                self.say("no trial to claim; waiting for the running ones (to retry any whose worker dies)")
                announced_wait = True
            time.sleep(min(config.heartbeat_interval, 5))

    def step(self, objective: Callable[[optuna.Trial], float], labels: dict[str, str]) -> bool:
        """Claim one trial and run it to its end; False when there was none to claim."""
        self.signals.check()
        self.requeue_stale()
        with self.signals.deferred():
            claimed = self.slots.claim(self.identity, labels)
        if claimed is None:
            return False
        if FAULT_PAUSE_AFTER_CLAIM in os.environ:
            time.sleep(float(os.environ[FAULT_PAUSE_AFTER_CLAIM]))  # tests kill -9 the worker here
        self.history.refresh(fresh=[claimed])  # its copy must be current: it is resumed from
        self.run_trial(claimed, objective)
        return True

    def requeue_stale(self) -> None:
        """Fail and re-queue trials whose workers went silent, but only after this process
        has itself reached the database for a whole grace period (after an outage, the
        live workers get their heartbeats in first)."""
        grace = self.config.grace_period
        if self.storage.database.health.connected_for() < grace:
            return
        with self.signals.deferred():
            requeued = self.slots.requeue_stale(grace)
        for number in requeued:
            self.say(f"trial {number}: its worker sent no heartbeat for {grace:.0f} s; queued its retry")
        if requeued:
            self.directory.sweep(self.slots, self.token)

    def run_trial(self, claimed: int, objective: Callable[[optuna.Trial], float]) -> None:
        started = time.monotonic()
        name = f"trial id {claimed}"
        with Heartbeat(self.storage, claimed, self.config.heartbeat_interval):
            try:
                self.signals.check()
                trial = optuna_adapter.open_trial(self.study, claimed, self.history.trial(claimed))
                name = f"trial {trial.number}"
                outcome = self.train_and_tell(trial, objective)
            except UpdateFinishedTrialError:
                # Our heartbeats stopped reaching the database long enough for another worker
                # to fail this trial and queue its retry: that retry owns it now.
                self.say(f"{name} was taken over by a retry after missed heartbeats; dropping it")
                return
            except (WorkerStopped, ArtifactStoreError) as stop:
                with self.signals.deferred():
                    successor = self.slots.requeue(claimed, "stopped")
                if successor is not None:
                    self.say(f"{name} re-queued as trial {successor}: {stop}")
                raise
        if outcome is not None:
            self.history.refresh()  # other workers' completions decide what is still among the best
            self.directory.keep_best(self.history, self.slots, self.config.keep_best)
            best = self.history.best(1)[0]
            self.say(f"trial {trial.number} complete: val_acc {outcome:.2%} in {time.monotonic() - started:.0f} s "
                     f"(best so far {best.value:.2%}, trial {best.number})")

    def train_and_tell(self, trial: optuna.Trial, objective: Callable[[optuna.Trial], float]) -> float | None:
        """Run the objective and record its outcome; returns the value of a completed trial.

        Every ending clears the trial's checkpoint first: nothing is left to resume."""
        try:
            value = objective(trial)
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
            self.directory.discard_checkpoint(trial)
            recorded = self.study.tell(trial, value, state=state, skip_if_finished=True)
        if recorded.state != state:
            raise UpdateFinishedTrialError(f"trial {trial.number} was already {recorded.state.name}")
        self.history.absorb(recorded)


def run_worker(config: WorkerConfig, say: Callable[[str], None] = print) -> Worker:
    worker = Worker(config, say)
    worker.run()
    return worker
