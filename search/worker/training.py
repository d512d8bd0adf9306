"""The real workload: the objectives of ``objectives/``, with the service's hooks around
their epochs (seeds kept with the trial, checkpoints, final weights, progress lines).
Imported only where a worker really trains: it brings torch."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

import optuna

from objectives.data import Dataset
from objectives.datasets import load_dataset
from objectives.objective import EpochHooks, ObjectiveSettings, make_objective
from objectives.training.device import choose_device, choose_precision
from objectives.training.trainer import Trainer
from search import keys
from search.artifacts import ArtifactStore
from search.study.spec import StudySpec
from search.worker.workload import Joined


class ServiceHooks(EpochHooks):
    """Seeds, checkpoints, final weights and progress lines around the objective's epochs."""

    def __init__(self, store: ArtifactStore, epochs: int, every: int, say: Callable[[str], None]) -> None:
        self.store = store
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
        latest = self.store.latest_checkpoint(trial)
        if latest is None:
            return
        state, pointer = latest
        trainer.load_state_dict(state)
        trial.set_user_attr(keys.RESUMED_FROM, pointer.epoch)
        self.say(f"trial {trial.number}: resumed from the epoch-{pointer.epoch} checkpoint "
                 f"written by trial {pointer.trial}")

    def epoch_end(self, trial: optuna.Trial, trainer: Trainer, val_accuracy: float,
                  train_loss: float, last: bool) -> None:
        elapsed = time.monotonic() - self.epoch_started
        epoch = trainer.epochs_done
        self.say(f"trial {trial.number} epoch {epoch}/{self.epochs}: val_acc {val_accuracy:.2%} "
                 f"train_loss {train_loss:.4f} ({elapsed:.1f} s)")
        if not last and epoch % self.every == 0:
            self.store.save_checkpoint(trial, trainer.state_dict(), epoch)
        self.epoch_started = time.monotonic()

    def finished(self, trial: optuna.Trial, trainer: Trainer, val_accuracy: float) -> None:
        self.store.save_weights(trial, trainer.model, trainer.hyperparameters)


class Training:
    """Load and check the data first, then train on the device chosen by the worker's index."""

    def __init__(self, data_dir: str | None, device: str, seed: int, checkpoint_every: int = 1,
                 precision: str = "auto") -> None:
        self.data_dir = data_dir
        self.requested_device = device
        self.requested_precision = precision
        self.precision = precision
        self.seed = seed
        self.checkpoint_every = checkpoint_every
        self.device = device
        self.dataset: Dataset | None = None

    def check(self, spec: StudySpec) -> Mapping[str, Any] | None:
        self.dataset = load_dataset(spec.dataset, self.data_dir, spec.data_options)
        return self.dataset.described()

    def objective(self, joined: Joined) -> Callable[[optuna.Trial], float]:
        assert self.dataset is not None, "check() reads the data first"
        device = choose_device(self.requested_device, joined.index)
        self.device = str(device)
        precision = choose_precision(self.requested_precision, device)
        self.precision = str(precision).removeprefix("torch.")
        hooks = ServiceHooks(joined.store, joined.spec.epochs, self.checkpoint_every, joined.say)
        settings = ObjectiveSettings(joined.spec.epochs, device, self.seed, joined.space, precision)
        return make_objective(self.dataset, settings, hooks)
