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

import optuna
import torch
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import TrialState

from objectives import Dataset, EpochHooks, ObjectiveSettings, load_dataset, make_objective, space
from objectives.trainer import Trainer
from search import keys, optuna_adapter
from search.artifacts import ArtifactDirectory, ArtifactStoreError, check_artifact_directory
from search.database import RECONNECT_PATIENCE_S
from search.errors import SearchError, UserError
from search.heartbeat import Heartbeat
from search.signals import StopSignals, WorkerStopped
from search.storage import open_storage
from search.study import StudySpec, check_existing, join_study


# Fault-injection hook for the tests: sleep this long between claiming a trial and
# starting its heartbeat thread, the window a killed worker once left orphans in.
FAULT_PAUSE_AFTER_CLAIM = "HPSEARCH_FAULT_PAUSE_AFTER_CLAIM"


@dataclass(frozen=True)
class WorkerConfig:
    storage: str
    study: str
    objective: str
    epochs: int
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


def check_device(requested: str) -> None:
    """Refuse a device this machine cannot use, before anything is opened or written."""
    if requested in ("auto", "cpu"):
        return
    kind, colon, index = requested.partition(":")
    if kind == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            visible = os.environ.get("CUDA_VISIBLE_DEVICES")
            shown = f" (CUDA_VISIBLE_DEVICES={visible!r})" if visible is not None else ""
            raise UserError(f"--device {requested}: no CUDA GPU is visible here{shown}; use --device cpu or auto")
        if colon and not (index.isdigit() and int(index) < count):
            raise UserError(f"--device {requested}: this machine has {count} CUDA GPU(s): cuda:0..cuda:{count - 1}")
        return
    raise UserError(f"unknown --device {requested!r}; use auto, cpu, cuda or cuda:N")


def choose_device(requested: str, worker_index: int) -> torch.device:
    """``auto``/``cuda``: GPU (index mod visible GPUs) when there is one; else as given."""
    if requested in ("auto", "cuda") and torch.cuda.is_available():
        return torch.device("cuda", worker_index % torch.cuda.device_count())
    return torch.device("cpu" if requested == "auto" else requested)


class ServiceHooks(EpochHooks):
    """Seeds, checkpoints, final weights and progress lines around the objective's epochs."""

    def __init__(self, dataset: Dataset, directory: ArtifactDirectory, token: str, epochs: int, every: int,
                 say: Callable[[str], None]) -> None:
        self.dataset = dataset
        self.directory = directory
        self.token = token
        self.epochs = epochs
        self.every = every
        self.say = say
        self.epoch_started = time.monotonic()

    def trial_seed(self, trial: optuna.Trial, base_seed: int) -> int:
        # Kept with the trial, so its retries (which inherit user attrs) train the same way.
        seed = trial.user_attrs.get(keys.SEED)
        if seed is None:
            seed = super().trial_seed(trial, base_seed)
            trial.set_user_attr(keys.SEED, seed)
        return int(seed)

    def resume(self, trial: optuna.Trial, trainer: Trainer) -> None:
        self.epoch_started = time.monotonic()
        latest = self.directory.latest_checkpoint(trial)
        if latest is None:
            return
        state, pointer = latest
        trainer.load_state_dict(state)
        trial.set_user_attr(keys.RESUMED_FROM, pointer["epoch"])
        self.say(f"trial {trial.number}: resumed from the epoch-{pointer['epoch']} checkpoint "
                 f"written by trial {pointer.get('trial', '?')}")

    def epoch_end(self, trial: optuna.Trial, trainer: Trainer, val_accuracy: float,
                  train_loss: float, last: bool) -> None:
        elapsed = time.monotonic() - self.epoch_started
        epoch = trainer.epochs_done
        self.say(f"trial {trial.number} epoch {epoch}/{self.epochs}: val_acc {val_accuracy:.2%} "
                 f"train_loss {train_loss:.4f} ({elapsed:.1f} s)")
        if not last and epoch % self.every == 0:
            self.directory.save_checkpoint(self.token, trial, trainer.state_dict(), epoch)
        self.epoch_started = time.monotonic()

    def finished(self, trial: optuna.Trial, trainer: Trainer, val_accuracy: float) -> None:
        hyperparameters = space.model_hyperparameters(trial.params, self.dataset)
        self.directory.save_weights(self.token, trial, trainer.model, hyperparameters)


class Worker:
    def __init__(self, config: WorkerConfig, say: Callable[[str], None]) -> None:
        self.config = config
        self.tag = "[worker]"
        self.say_raw = say
        self.signals = StopSignals()
        self.identity = f"{socket.gethostname()}/{os.getpid()}"

    def say(self, line: str) -> None:
        self.say_raw(f"{self.tag} {line}")

    def run(self) -> optuna.Study:
        config = self.config
        spec = StudySpec(config.study, config.objective, config.epochs)
        # Everything is checked before the first write: the study (read-only), the data, the
        # artifact directory; only then are tables created and the study joined.
        existing = open_storage(config.storage, writable=False, missing_ok=True)
        if existing is not None:
            check_existing(existing, spec)
            existing.close()
        dataset = load_dataset(config.objective, config.data_dir)
        directory = check_artifact_directory(config.artifacts)
        storage = open_storage(config.storage, patience=config.db_patience, notify=self.say)
        study, index, token = join_study(storage, spec, config.n_trials, config.seed)
        directory.create()
        device = choose_device(config.device, index)
        self.tag = f"[worker {index}]"
        self.storage, self.study, self.directory, self.token = storage, study, directory, token
        self.slots = storage.slots(study)
        hooks = ServiceHooks(dataset, directory, token, config.epochs, config.checkpoint_every, self.say)
        objective = make_objective(dataset, ObjectiveSettings(config.epochs, device, config.seed), hooks)
        labels = {keys.WORKER: self.identity, keys.DEVICE: str(device)}
        progress = self.slots.progress()
        self.say(f"joined study {config.study!r} ({config.objective}, {config.epochs} epochs/trial, "
                 f"budget {progress.budget}, {progress.finished} finished) as {self.identity} on {device}")
        directory.sweep(self.slots, token)
        with self.signals.installed():
            self.loop(objective, labels)
        progress = self.slots.progress()
        if progress.done:
            directory.sweep(self.slots, token)
            self.say(f"study {config.study!r} finished: {progress.finished} trials ({progress.complete} complete, "
                     f"{progress.pruned} pruned, {progress.failed} failed)")
        return study

    def loop(self, objective: Callable[[optuna.Trial], float], labels: dict[str, str]) -> None:
        config = self.config
        deadline = time.monotonic() + config.timeout if config.timeout else None
        announced_wait = False
        while deadline is None or time.monotonic() < deadline:
            self.signals.check()
            self.requeue_stale()
            with self.signals.deferred():
                claimed = self.slots.claim(self.identity)
            if claimed is not None and FAULT_PAUSE_AFTER_CLAIM in os.environ:
                time.sleep(float(os.environ[FAULT_PAUSE_AFTER_CLAIM]))  # tests kill -9 the worker here
            if claimed is None:
                if self.slots.progress().done:
                    return
                if not announced_wait:
                    self.say("no trial to claim; waiting for the running ones (to retry any whose worker dies)")
                    announced_wait = True
                time.sleep(min(config.heartbeat_interval, 5))
                continue
            announced_wait = False
            self.run_trial(claimed, objective, labels)

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

    def run_trial(self, claimed: int, objective: Callable[[optuna.Trial], float],
                  labels: dict[str, str]) -> None:
        started = time.monotonic()
        name = f"trial id {claimed}"
        with Heartbeat(self.storage, claimed, self.config.heartbeat_interval):
            try:
                self.signals.check()
                trial = optuna_adapter.open_trial(self.study, claimed)
                name = f"trial {trial.number}"
                for key, value in labels.items():
                    trial.set_user_attr(key, value)
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
            self.directory.keep_best(self.study, self.slots, self.config.keep_best)
            self.say(f"trial {trial.number} complete: val_acc {outcome:.2%} in {time.monotonic() - started:.0f} s "
                     f"(best so far {self.study.best_value:.2%}, trial {self.study.best_trial.number})")

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


def run_worker(config: WorkerConfig, say: Callable[[str], None] = print) -> Worker:
    worker = Worker(config, say)
    worker.run()
    return worker
