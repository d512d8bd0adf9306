"""The search space, and the conversion of a trial's params into model and training settings.

``suggest`` registers every hyperparameter with the trial; ``model_hyperparameters`` and
``training_settings`` turn the resulting flat params dict (live or from a stored trial)
into the plain dict ``models.build_mlp`` takes and the trainer's settings, so export and
retraining rebuild exactly what the trial trained.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import optuna

from objectives.datasets import Dataset
from objectives.trainer import TrainingSettings

MAX_HIDDEN_LAYERS = 3
WIDTH_RANGE = (32, 1024)
OPTIMIZERS = ("sgd", "adam", "adamw")
ACTIVATIONS = ("relu", "gelu", "silu")
BATCH_SIZES = (64, 128, 256, 512, 1024)


def suggest(trial: optuna.Trial) -> dict[str, Any]:
    n_layers = trial.suggest_int("n_layers", 1, MAX_HIDDEN_LAYERS)
    for layer in range(n_layers):
        trial.suggest_int(f"n_units_l{layer}", *WIDTH_RANGE, log=True)
    trial.suggest_categorical("activation", ACTIVATIONS)
    trial.suggest_float("dropout", 0.0, 0.5)
    trial.suggest_categorical("batch_norm", (False, True))
    trial.suggest_categorical("optimizer", OPTIMIZERS)
    trial.suggest_float("learning_rate", 1e-5, 1e-1, log=True)
    trial.suggest_float("weight_decay", 1e-6, 1e-2, log=True)
    trial.suggest_categorical("batch_size", BATCH_SIZES)
    return dict(trial.params)


def model_hyperparameters(params: Mapping[str, Any], dataset: Dataset) -> dict[str, Any]:
    """The plain dict ``models.build_mlp`` rebuilds the architecture from."""
    return {
        "n_inputs": dataset.n_inputs,
        "hidden_sizes": [int(params[f"n_units_l{i}"]) for i in range(int(params["n_layers"]))],
        "n_classes": dataset.n_classes,
        "activation": str(params["activation"]),
        "dropout": float(params["dropout"]),
        "batch_norm": bool(params["batch_norm"]),
        "input_mean": list(dataset.input_mean),
        "input_std": list(dataset.input_std),
    }


def training_settings(params: Mapping[str, Any], epochs: int) -> TrainingSettings:
    """The trainer's settings, with the learning rate decayed over ``epochs`` (cosine)."""
    return TrainingSettings.from_dict(params, schedule_epochs=epochs)
