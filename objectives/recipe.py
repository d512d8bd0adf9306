"""The one recipe from a trial's params to a trained model, shared by the search (the
objective) and ``search best --retrain``: the model's argument dict built once (saved
with its weights, rebuilt from them), the trainer's settings, and the epochs."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from models import build_mlp
from objectives import space
from objectives.data import Dataset, Split
from objectives.training.trainer import Trainer, TrainingSettings


@dataclass(frozen=True)
class Recipe:
    hyperparameters: dict[str, Any]  # what models.build_mlp takes
    settings: TrainingSettings
    image_shape: tuple[int, int] | None  # shifts and flips apply to images only

    @classmethod
    def of(cls, params: Mapping[str, Any], dataset: Dataset, epochs: int) -> Recipe:
        """The recipe of a trial's ``params`` on ``dataset``, its rate decayed over ``epochs``."""
        return cls(space.model_hyperparameters(params, dataset), space.training_settings(params, epochs),
                   dataset.image_shape)

    def trainer(self, split: Split, device: torch.device, seed: int,
                precision: torch.dtype = torch.float32) -> Trainer:
        """A fresh model and its trainer on ``split``; ``seed`` fixes both; ``precision``:
        what its forward pass multiplies in (``objectives.training.device.choose_precision``)."""
        torch.manual_seed(seed)
        return Trainer(build_mlp(self.hyperparameters), self.settings, split, device, seed,
                       image_shape=self.image_shape, hyperparameters=self.hyperparameters, precision=precision)


def train(trainer: Trainer, epochs: int) -> Iterator[tuple[int, float]]:
    """Train from the trainer's next epoch (1, or one past a restored checkpoint) through
    ``epochs``, yielding each epoch's number and mean training loss."""
    for epoch in range(trainer.epochs_done + 1, epochs + 1):
        yield epoch, trainer.run_epoch()
