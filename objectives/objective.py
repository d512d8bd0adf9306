"""The Optuna objective: suggest -> build -> train -> report -> return validation accuracy.

Service concerns (checkpoints, progress lines, saving final weights) enter through
``EpochHooks``; with the default no-op hooks this is a plain Optuna objective.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import optuna
import torch

from objectives import space
from objectives.data import Dataset
from objectives.recipe import Recipe, train
from objectives.training.trainer import Trainer, TrainingDiverged, accuracy


@dataclass(frozen=True)
class ObjectiveSettings:
    epochs: int
    device: torch.device
    seed: int = 0
    space: space.Space | None = None  # None: the default space
    precision: torch.dtype = torch.float32  # of the forward pass (objectives.training.device.choose_precision)


class EpochHooks:
    """Called by the objective around training; the service overrides what it needs."""

    def trial_seed(self, trial: optuna.Trial, base_seed: int) -> int:
        """The trial's training seed: distinct per trial, fixed by the base seed."""
        return base_seed * 100_003 + trial.number

    def resume(self, trial: optuna.Trial, trainer: Trainer) -> None:
        """Restore the trial's latest checkpoint into ``trainer``, if it has one."""

    def epoch_end(self, trial: optuna.Trial, trainer: Trainer, val_accuracy: float,
                  train_loss: float, last: bool) -> None:
        """After each epoch's report (and the pruning decision, when it continues)."""

    def finished(self, trial: optuna.Trial, trainer: Trainer, val_accuracy: float) -> None:
        """The trial trained all its epochs; its value is ``val_accuracy``."""


def make_objective(dataset: Dataset, settings: ObjectiveSettings,
                   hooks: EpochHooks | None = None) -> Callable[[optuna.Trial], float]:
    hooks = hooks or EpochHooks()
    train_split = dataset.train.to(settings.device)
    validation = dataset.validation.to(settings.device)
    searched = settings.space or space.load_space(None, dataset.name)

    def objective(trial: optuna.Trial) -> float:
        params = space.suggest(trial, searched)
        seed = hooks.trial_seed(trial, settings.seed)
        trainer = Recipe.of(params, dataset, settings.epochs).trainer(train_split, settings.device, seed,
                                                                      settings.precision)
        hooks.resume(trial, trainer)

        val_accuracy = float("nan")
        try:
            for epoch, train_loss in train(trainer, settings.epochs):
                val_accuracy = accuracy(trainer.model, validation)
                trial.report(val_accuracy, epoch)
                if trial.should_prune():
                    raise optuna.TrialPruned(f"pruned at epoch {epoch} with validation accuracy {val_accuracy:.4f}")
                hooks.epoch_end(trial, trainer, val_accuracy, train_loss, last=epoch == settings.epochs)
        except TrainingDiverged as diverged:
            # A diverging configuration is a bad one, not a worker failure.
            raise optuna.TrialPruned(str(diverged)) from None
        hooks.finished(trial, trainer, val_accuracy)
        return val_accuracy

    return objective
