"""``search best --export``: the best trial's model file, from its stored weights or
retrained on train+validation (``--retrain``). Imported only when a file is asked for:
it needs torch, which the rest of ``best`` does not."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from models import build_mlp, describe_layout
from objectives.datasets import load_dataset, record
from objectives.recipe import Recipe, train
from objectives.training.device import choose_device, choose_precision
from objectives.training.trainer import TrainingDiverged, accuracy
from search import keys
from search.artifacts import open_store
from search.commands import exports
from search.errors import UserError
from search.storage.optuna_adapter import StudyRecord, TrialRecord
from search.study.summary import epochs_run


def retrain(study: StudyRecord, trial: TrialRecord, data_dir: str | None, device_name: str, precision_name: str,
            say: Callable[[str], None]) -> tuple[torch.nn.Module, dict[str, Any], float]:
    """Train the trial's hyperparameters on train+validation for the study's epochs, with
    the trial's seed (the search's own recipe); returns the model, its argument dict and
    its test accuracy."""
    dataset = load_dataset(study.user_attrs[keys.DATASET], data_dir, study.user_attrs.get(keys.DATA_OPTIONS, {}))
    device = choose_device(device_name)
    precision = choose_precision(precision_name, device)
    epochs = int(study.user_attrs.get(keys.EPOCHS) or epochs_run(trial))
    recipe = Recipe.of(trial.params, dataset, epochs)
    trainer = recipe.trainer(dataset.train_and_validation(), device, int(trial.user_attrs.get(keys.SEED, trial.number)),
                             precision)
    try:
        for epoch, loss in train(trainer, epochs):
            say(f"retrain epoch {epoch}/{epochs}: train_loss {loss:.4f}")
    except TrainingDiverged as diverged:
        raise UserError(f"retraining trial {trial.number} diverged ({diverged}); export its stored weights "
                        f"without --retrain, or pick another trial") from None
    return trainer.model, recipe.hyperparameters, accuracy(trainer.model, dataset.test.to(device))


def describe_data(study: StudyRecord, hyperparameters: dict[str, Any]) -> dict[str, Any]:
    """What a user of the file needs to know about its inputs and outputs: the study's
    record of its data where the file described it (a table), else the data set's record."""
    recorded = study.user_attrs.get(keys.DATA)
    if recorded is not None:
        class_names, description = recorded["class_names"], recorded["input"]
    else:
        known = record(study.user_attrs[keys.DATASET])
        class_names, description = list(known.class_names), known.input_description
    preprocessing = {"input": description, "standardize_mean": hyperparameters.get("input_mean"),
                     "standardize_std": hyperparameters.get("input_std"), "standardization_inside_model": True}
    described = {"class_names": class_names, "preprocessing": preprocessing}
    if recorded is not None:
        preprocessing["inputs"] = recorded["inputs"]
    if options := study.user_attrs.get(keys.DATA_OPTIONS):
        described["data_options"] = options  # what evaluate reads the data with
    return described


def export(study: StudyRecord, trial: TrialRecord, summary: dict[str, Any], path: Path, artifacts: str,
           data_dir: str | None, device: str, precision: str, as_json: bool, retrained: bool) -> int:
    say = (lambda line: print(line, file=sys.stderr, flush=True)) if as_json else print
    metadata = {**summary, "format_version": exports.FORMAT_VERSION, "library_versions": exports.library_versions(),
                "trained_on": "train"}
    if retrained:
        model, hyperparameters, test_accuracy = retrain(study, trial, data_dir, device, precision, say)
        state_dict = {key: value.cpu() for key, value in model.state_dict().items()}
        metadata.update(trained_on="train+validation", test_accuracy=test_accuracy)
        say(f"retrained on train+validation: test accuracy {test_accuracy:.2%}")
    else:
        state_dict, hyperparameters = open_store(artifacts).read_weights(trial)
    metadata.update(describe_data(study, hyperparameters))
    metadata["layout"] = describe_layout(build_mlp(hyperparameters))
    if path.suffix == exports.PROGRAM_SUFFIX:
        exports.write_program(path, state_dict, hyperparameters, metadata)
        say(f"exported trial {trial.number} to {path}: a torch.export program, "
            f"torch.export.load({str(path)!r}).module()(x) with x float32 [batch, {hyperparameters['n_inputs']}]")
        return 0
    exports.write_model(path, state_dict, hyperparameters, metadata)
    say(f"exported trial {trial.number} to {path}")
    return 0
