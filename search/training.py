"""What a worker trains: the real objectives, with the service's hooks around their epochs.

Kept apart from ``search.worker`` so the worker loop imports no torch (the scale
benchmarks run hundreds of workers with a synthetic workload).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import optuna
import torch

from objectives import Dataset, EpochHooks, ObjectiveSettings, load_dataset, make_objective, space
from objectives.trainer import Trainer
from search import keys
from search.artifacts import ArtifactDirectory
from search.errors import UserError
from search.wording import counted

if TYPE_CHECKING:
    from search.worker import Worker, WorkerConfig


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
            raise UserError(f"--device {requested}: this machine has {counted(count, 'CUDA GPU')}: "
                            f"cuda:0..cuda:{count - 1}")
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


class Training:
    """The ``Workload`` of a real worker: load and check the data first, then train on
    the device chosen by the worker's index."""

    def __init__(self, config: WorkerConfig) -> None:
        self.config = config
        self.dataset: Dataset | None = None

    def check(self) -> None:
        self.dataset = load_dataset(self.config.objective, self.config.data_dir)

    def objective(self, worker: Worker) -> Callable[[optuna.Trial], float]:
        assert self.dataset is not None, "check() loads the data first"
        config = self.config
        device = choose_device(config.device, worker.index)
        worker.device = str(device)
        hooks = ServiceHooks(self.dataset, worker.directory, worker.token, config.epochs,
                             config.checkpoint_every, worker.say)
        return make_objective(self.dataset, ObjectiveSettings(config.epochs, device, config.seed, worker.space), hooks)
