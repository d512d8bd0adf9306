"""``search best`` and ``search evaluate``: the best trial, its model file, its test accuracy.

An exported file is a plain dict saved with ``torch.save``::

    {"model_state_dict": {...tensors...},
     "model_hyperparameters": {...the dict models.build_mlp takes...},
     "metadata": {"objective", "study", "trial_number", "validation_accuracy", "class_names",
                  "preprocessing", "params", "epochs", "library_versions", ...}}

so ``torch.load(path, weights_only=True)`` reads it and ``models.load_exported(path)``
rebuilds the model, with no code from this project beyond ``models``; ``metadata["layout"]``
says what each ``state_dict`` index is, in words, for rebuilding it without ``models``.
``--export PATH.pt2`` writes a ``torch.export`` program instead, which runs with torch
alone (the same metadata inside).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.trial import FrozenTrial, TrialState

from models import build_mlp, describe_layout
from search import keys
from search.errors import UserError
from search.wording import counted

FORMAT_VERSION = 1
PROGRAM_SUFFIX = ".pt2"  # --export PATH.pt2 writes a torch.export program instead
PROGRAM_METADATA = "hpsearch.json"


def best_trial(study: optuna.Study) -> FrozenTrial:
    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        raise UserError(f"study {study.study_name!r} has no completed trial yet; "
                        f"let the workers finish one (see: search status --study {study.study_name})")
    return study.best_trial


def epochs_run(trial: FrozenTrial) -> int:
    return max(trial.intermediate_values, default=0)


def slot_time(trial: FrozenTrial, by_number: dict[int, FrozenTrial]) -> tuple[float | None, int]:
    """Seconds and attempts of the trial's slot: a trial that continues failed attempts (a
    dead worker's, resumed from their checkpoint) took all of their time too, and
    ``retry_history`` lists them."""
    numbers = {*trial.system_attrs.get(keys.RETRY_HISTORY, []), trial.number}
    attempts = [by_number[number] for number in numbers if number in by_number]
    seconds = [attempt.duration.total_seconds() for attempt in attempts if attempt.duration]
    return (sum(seconds) if seconds else None), len(attempts)


def trial_summary(study: optuna.Study, trial: FrozenTrial) -> dict[str, Any]:
    seconds, attempts = slot_time(trial, {earlier.number: earlier for earlier in study.get_trials(deepcopy=False)})
    return {
        "study": study.study_name, "trial_number": trial.number, "validation_accuracy": trial.value,
        "params": trial.params, "epochs": epochs_run(trial), "duration_s": seconds, "attempts": attempts,
        "objective": study.user_attrs.get(keys.OBJECTIVE),
    }


def check_writable(path: Path, force: bool) -> None:
    """Fail before any long work if the export cannot be written (by trying to), or would
    replace a file that is not an earlier export (unless ``force``)."""
    directory = path.resolve().parent
    if path.is_dir():
        raise UserError(f"cannot export to {path}: it is a directory; give a file path such as {path / 'model.pt'}")
    if path.exists() and not force and not is_export(path):
        raise UserError(f"{path} exists and is not a model exported by search; pass --force to replace "
                        f"it, or choose another --export path")
    if not directory.is_dir():
        raise UserError(f"cannot export to {path}: directory {directory} does not exist")
    try:
        tempfile.TemporaryFile(dir=directory).close()
    except OSError as error:
        raise UserError(f"cannot export to {path}: directory {directory} is not writable "
                        f"({error.strerror}); choose another path") from None


def library_versions() -> dict[str, str]:
    # torch.__version__ is a str subclass the restricted unpickler would refuse.
    return {"torch": str(torch.__version__), "optuna": str(optuna.__version__),
            "python": platform.python_version()}


def stored_weights(directory: Any, trial: FrozenTrial) -> dict[str, Any]:
    from search.artifacts import read_tensors, weights_ids

    listed = weights_ids(trial)
    if not listed:
        raise UserError(f"trial {trial.number} has no stored weights (only the best --keep-best trials keep "
                        f"theirs); rerun with --retrain to train them again")
    try:
        return read_tensors(directory.root / listed[0])
    except FileNotFoundError:
        raise UserError(f"the weights of trial {trial.number} ({listed[0]}) are not in {directory.root} "
                        f"(another --artifacts directory?); rerun with --retrain") from None
    except Exception as error:  # a damaged file: torch raises many types
        raise UserError(f"the weights of trial {trial.number} in {directory.root / listed[0]} are unreadable "
                        f"({type(error).__name__}); rerun with --retrain") from None


def retrain(trial: FrozenTrial, objective: str, data_dir: str | None, device_name: str,
            say: Callable[[str], None]) -> tuple[torch.nn.Module, dict[str, Any], float]:
    """Train the trial's hyperparameters on train+validation for its epoch count; test accuracy."""
    from objectives import load_dataset, space
    from objectives.datasets import Split
    from objectives.trainer import Trainer, accuracy, pick_device

    dataset = load_dataset(objective, data_dir)
    device = pick_device(device_name)
    combined = Split(torch.cat([dataset.train.features, dataset.validation.features]),
                     torch.cat([dataset.train.labels, dataset.validation.labels]))
    seed = int(trial.user_attrs.get(keys.SEED, trial.number))
    torch.manual_seed(seed)
    hyperparameters = space.model_hyperparameters(trial.params, dataset)
    epochs = epochs_run(trial)
    trainer = Trainer(build_mlp(hyperparameters), space.training_settings(trial.params, epochs),
                      combined, device, seed, image_shape=dataset.image_shape)
    for epoch in range(1, epochs + 1):
        loss = trainer.run_epoch()
        say(f"retrain epoch {epoch}/{epochs}: train_loss {loss:.4f}")
    test_accuracy = accuracy(trainer.model, dataset.test.to(device))
    return trainer.model, hyperparameters, test_accuracy


def write_export(path: Path, payload: Any, save: Callable[[Any, Any], None] | None = None) -> None:
    """Write atomically (with ``torch.save``, or ``save``): a reader never sees half a file, a
    failure leaves no file."""
    from search.artifacts import save_atomically

    try:
        save_atomically(path, payload, save)
    except OSError as error:
        raise UserError(f"cannot write {path}: {error.strerror}; free space there or choose another "
                        f"--export path") from None


def command_best(args: argparse.Namespace) -> int:
    from search.artifacts import ArtifactDirectory
    from search.storage import open_storage
    from search.study import load_existing

    export = Path(args.export) if args.export is not None else None
    if export is not None:
        check_writable(export, args.force)
    if args.retrain:
        from search.training import check_device

        check_device(args.device)
    study = load_existing(open_storage(args.storage, writable=False), args.study)
    trial = best_trial(study)
    summary = trial_summary(study, trial)
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        attempts = f" over {summary['attempts']} attempts" if summary["attempts"] > 1 else ""
        print(f"best trial {trial.number} of study {study.study_name!r}: val_acc {trial.value:.2%} "
              f"after {counted(summary['epochs'], 'epoch')} in {summary['duration_s'] or 0:.0f} s{attempts}")
        for key, value in trial.params.items():
            print(f"  {key} = {value}")
    if export is None:
        return 0

    objective = summary["objective"]
    say = (lambda line: print(line, file=sys.stderr, flush=True)) if args.json else print
    metadata = {**summary, "format_version": FORMAT_VERSION, "library_versions": library_versions(),
                "trained_on": "train"}
    if args.retrain:
        model, hyperparameters, test_accuracy = retrain(trial, objective, args.data_dir, args.device, say)
        state_dict = {key: value.cpu() for key, value in model.state_dict().items()}
        metadata.update(trained_on="train+validation", test_accuracy=test_accuracy)
        say(f"retrained on train+validation: test accuracy {test_accuracy:.2%}")
    else:
        weights = stored_weights(ArtifactDirectory(args.artifacts), trial)
        state_dict, hyperparameters = weights["model_state_dict"], weights["model_hyperparameters"]
    metadata.update(describe_inputs(objective, hyperparameters))
    metadata["layout"] = describe_layout(build_mlp(hyperparameters))
    if export.suffix == PROGRAM_SUFFIX:
        write_program(export, state_dict, hyperparameters, metadata)
        say(f"exported trial {trial.number} to {export}: a torch.export program, "
            f"torch.export.load({str(export)!r}).module()(x) with x float32 [batch, {hyperparameters['n_inputs']}]")
        return 0
    write_export(export, {"model_state_dict": state_dict, "model_hyperparameters": hyperparameters,
                          "metadata": metadata})
    say(f"exported trial {trial.number} to {export}")
    return 0


def write_program(path: Path, state_dict: dict[str, Any], hyperparameters: dict[str, Any],
                  metadata: dict[str, Any]) -> None:
    """The model as a ``torch.export`` program (any batch size) that runs with torch alone;
    the metadata travels in it as ``extra/{PROGRAM_METADATA}`` (``torch.export.load(...,
    extra_files={PROGRAM_METADATA: ""})``)."""
    model = build_mlp(hyperparameters)
    model.load_state_dict(state_dict)
    model.eval()
    example = torch.zeros(2, hyperparameters["n_inputs"])
    program = torch.export.export(model, (example,), dynamic_shapes=({0: torch.export.Dim("batch")},))
    extra = {PROGRAM_METADATA: json.dumps(metadata)}
    write_export(path, program, save=lambda program_, file: torch.export.save(program_, file, extra_files=extra))


def is_export(path: Path) -> bool:
    """A file ``search best --export`` wrote: a readable export, or a ``.pt2`` program with
    its metadata entry."""
    from models import ExportedModelError, read_exported

    if path.suffix != PROGRAM_SUFFIX:
        try:
            read_exported(path)
            return True
        except ExportedModelError:
            return False
    try:
        with zipfile.ZipFile(path) as archive:
            return any(name.endswith(f"/extra/{PROGRAM_METADATA}") for name in archive.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


def describe_inputs(objective: str, hyperparameters: dict[str, Any]) -> dict[str, Any]:
    from objectives import DATASET_INFO

    info = DATASET_INFO[objective]
    return {
        "class_names": list(info.class_names),
        "preprocessing": {
            "input": info.input_description,
            "standardize_mean": hyperparameters.get("input_mean"),
            "standardize_std": hyperparameters.get("input_std"),
            "standardization_inside_model": True,
        },
    }


def command_evaluate(args: argparse.Namespace) -> int:
    from models import ExportedModelError, load_exported, read_exported
    from objectives import DATASET_INFO, load_dataset
    from objectives.trainer import predict, share_correct

    metadata = read_exported(args.path)["metadata"]
    objective = metadata.get("objective")
    if objective not in DATASET_INFO:
        raise ExportedModelError(f"{args.path}: its metadata names objective {objective!r}, not one of "
                                 f"{', '.join(DATASET_INFO)}; give a file written by search best --export")
    model = load_exported(args.path)
    test = load_dataset(objective, args.data_dir).test
    width = model[1].in_features if len(model) > 1 else None
    if width != test.features.shape[1]:
        raise ExportedModelError(f"{args.path}: the model takes {width} inputs, but {objective} test samples "
                                 f"have {test.features.shape[1]}; the file was edited or mixes two models: "
                                 f"export it again")
    predictions = predict(model, test.features)
    class_names = metadata.get("class_names") or [str(i) for i in range(int(test.labels.max()) + 1)]
    per_class = {}
    for index, name in enumerate(class_names):
        members = test.labels == index
        per_class[name] = (predictions[members] == index).float().mean().item() if members.any() else None
    result = {"path": str(args.path), "objective": objective, "trial_number": metadata.get("trial_number"),
              "test_accuracy": share_correct(predictions, test.labels),  # what retraining recorded
              "n_test": len(test), "per_class_accuracy": per_class}
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"{args.path}: {objective} trial {result['trial_number']}, "
          f"test accuracy {result['test_accuracy']:.2%} on {len(test):,} samples")
    for name, value in per_class.items():
        print(f"  {name:<20} {'-' if value is None else f'{value:.2%}'}")
    return 0
