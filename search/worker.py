"""The worker loop: claim a queued trial, train it under a heartbeat, record the result.

A worker exits when the study has no queued or running trial left (it keeps polling
while others run, so it can take over a retry if one of them dies), or when its time
budget is spent. SIGTERM/SIGINT re-queue the current trial at once; a kill -9 is caught
by the heartbeat instead, and the retry resumes from the trial's last checkpoint.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import optuna
import torch
from optuna.artifacts import FileSystemArtifactStore
from optuna.exceptions import StorageInternalError, UpdateFinishedTrialError
from optuna.storages import fail_stale_trials
from optuna.trial import TrialState

from objectives import Dataset, EpochHooks, ObjectiveSettings, load_dataset, make_objective, space
from objectives.trainer import Trainer
from search.artifacts import CheckpointStore, keep_best_weights, open_artifact_store, save_weights
from search.storage import open_storage
from search.study import StudySpec, check_existing, claim_queued_trial, has_unfinished, join_study

RESUMED_ATTR = "resumed_from_epoch"


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
    heartbeat_interval: int = 10
    keep_best: int = 5
    checkpoint_every: int = 1


class WorkerStopped(Exception):
    """SIGTERM or SIGINT arrived."""


def choose_device(requested: str, worker_index: int) -> torch.device:
    """``auto``/``cuda``: GPU (index mod visible GPUs) when there is one; else as given."""
    if requested in ("auto", "cuda"):
        if torch.cuda.is_available():
            return torch.device("cuda", worker_index % torch.cuda.device_count())
        if requested == "cuda":
            raise RuntimeError("--device cuda was asked for but no CUDA GPU is visible")
        return torch.device("cpu")
    return torch.device(requested)


@contextmanager
def heartbeat(storage: optuna.storages.RDBStorage, trial_id: int, interval: int) -> Iterator[None]:
    stop = threading.Event()

    def beat() -> None:
        while True:
            try:
                storage.record_heartbeat(trial_id)
            except StorageInternalError:
                pass  # the database is away; the reconnect timeout already waited
            if stop.wait(interval):
                return

    thread = threading.Thread(target=beat, name=f"heartbeat-{trial_id}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


@contextmanager
def stop_on_signals() -> Iterator[None]:
    def handler(signum: int, frame: object) -> None:
        raise WorkerStopped(signal.Signals(signum).name)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


class ServiceHooks(EpochHooks):
    """Checkpoints, final weights and progress lines around the objective's epochs."""

    def __init__(self, dataset: Dataset, checkpoints: CheckpointStore, epochs: int, every: int,
                 say: Callable[[str], None]) -> None:
        self.dataset = dataset
        self.checkpoints = checkpoints
        self.epochs = epochs
        self.every = every
        self.say = say
        self.epoch_started = time.monotonic()

    def resume(self, trial: optuna.Trial, trainer: Trainer) -> None:
        self.epoch_started = time.monotonic()
        latest = self.checkpoints.latest(trial)
        if latest is None:
            return
        state, epoch = latest
        trainer.load_state_dict(state)
        trial.set_user_attr(RESUMED_ATTR, epoch)
        origin = trial.storage.get_trial_system_attrs(trial._trial_id).get("failed_trial")
        self.say(f"trial {trial.number}: resumed from the epoch-{epoch} checkpoint of trial {origin}")

    def epoch_end(self, trial: optuna.Trial, trainer: Trainer, val_accuracy: float,
                  train_loss: float, last: bool) -> None:
        elapsed = time.monotonic() - self.epoch_started
        epoch = trainer.epochs_done
        self.say(f"trial {trial.number} epoch {epoch}/{self.epochs}: val_acc {val_accuracy:.2%} "
                 f"train_loss {train_loss:.4f} ({elapsed:.1f} s)")
        if not last and epoch % self.every == 0:
            self.checkpoints.save(trial, trainer.state_dict(), epoch)
        self.epoch_started = time.monotonic()

    def finished(self, trial: optuna.Trial, trainer: Trainer, val_accuracy: float) -> None:
        hyperparameters = space.model_hyperparameters(trial.params, self.dataset)
        save_weights(self.checkpoints.store, trial, trainer.model, hyperparameters)
        self.checkpoints.discard(trial)


def requeue(study: optuna.Study, trial: optuna.Trial) -> None:
    """Fail ``trial`` and queue its retry now, as the heartbeat check would later."""
    storage = study._storage
    if storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL):
        retry = storage.get_heartbeat_stale_trial_callback()
        if retry is not None:
            retry(study, storage.get_trial(trial._trial_id))


def run_worker(config: WorkerConfig, say: Callable[[str], None] = print) -> optuna.Study:
    spec = StudySpec(config.study, config.objective, config.epochs)
    storage = open_storage(config.storage, heartbeat_interval=config.heartbeat_interval)
    check_existing(storage, spec)
    dataset = load_dataset(config.objective, config.data_dir)
    store = open_artifact_store(config.artifacts)
    study, index = join_study(storage, spec, config.n_trials, config.seed)
    device = choose_device(config.device, index)
    identity = f"{socket.gethostname()}/{os.getpid()}"
    tag = f"[worker {index}]"

    def say_tagged(line: str) -> None:
        say(f"{tag} {line}")

    hooks = ServiceHooks(dataset, CheckpointStore(store), config.epochs, config.checkpoint_every, say_tagged)
    objective = make_objective(dataset, ObjectiveSettings(config.epochs, device, config.seed), hooks)
    say_tagged(f"joined study {config.study!r} ({config.objective}, {config.epochs} epochs/trial) "
               f"as {identity} on {device}")
    deadline = time.monotonic() + config.timeout if config.timeout else None
    announced_wait = False
    with stop_on_signals():
        while deadline is None or time.monotonic() < deadline:
            fail_stale_trials(study)
            trial = claim_queued_trial(study)
            if trial is None:
                if not has_unfinished(study):
                    break
                if not announced_wait:
                    say_tagged("no queued trial; waiting for running ones (to retry any whose worker dies)")
                    announced_wait = True
                time.sleep(min(config.heartbeat_interval, 5))
                continue
            announced_wait = False
            run_trial(study, trial, objective, config, say_tagged, store,
                      {"worker": identity, "device": str(device)})
    return study


def run_trial(study: optuna.Study, trial: optuna.Trial, objective: Callable[[optuna.Trial], float],
              config: WorkerConfig, say: Callable[[str], None], store: FileSystemArtifactStore,
              labels: dict[str, str]) -> None:
    started = time.monotonic()
    try:
        # The heartbeat starts first: a RUNNING trial without one is never found stale.
        with heartbeat(study._storage, trial._trial_id, config.heartbeat_interval):
            for key, value in labels.items():
                trial.set_user_attr(key, value)
            outcome = train_and_tell(study, trial, objective, say)
    except UpdateFinishedTrialError:
        # Our heartbeats stalled (e.g. a long database outage) and another worker failed
        # the trial and queued its retry: that retry owns it now.
        say(f"trial {trial.number} was taken over by a retry after missed heartbeats; dropping it")
        return
    if outcome is not None:
        keep_best_weights(study, store, config.keep_best)
        say(f"trial {trial.number} complete: val_acc {outcome:.2%} in {time.monotonic() - started:.0f} s "
            f"(best so far {study.best_value:.2%}, trial {study.best_trial.number})")


def train_and_tell(study: optuna.Study, trial: optuna.Trial, objective: Callable[[optuna.Trial], float],
                   say: Callable[[str], None]) -> float | None:
    """Run the objective and record its outcome; returns the value of a completed trial."""
    try:
        value = objective(trial)
    except optuna.TrialPruned as pruned:
        tell(study, trial, TrialState.PRUNED)
        say(f"trial {trial.number} pruned: {pruned}")
        return None
    except WorkerStopped as stop:
        requeue(study, trial)
        say(f"trial {trial.number} re-queued: worker stopped by {stop}")
        raise
    except (StorageInternalError, UpdateFinishedTrialError):
        raise
    except Exception as error:  # a bug or resource error fails this trial, not the worker
        trial.set_user_attr("fail_reason", f"{type(error).__name__}: {error}")
        tell(study, trial, TrialState.FAIL)
        say(f"trial {trial.number} failed: {type(error).__name__}: {error}")
        return None
    tell(study, trial, TrialState.COMPLETE, value)
    return value


def tell(study: optuna.Study, trial: optuna.Trial, state: TrialState, value: float | None = None) -> None:
    recorded = study.tell(trial, value, state=state, skip_if_finished=True)
    if recorded.state != state:
        raise UpdateFinishedTrialError(f"trial {trial.number} was already {recorded.state.name}")
