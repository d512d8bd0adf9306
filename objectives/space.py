"""The search space, and the conversion of a trial's params into model and training settings.

The space is a TOML file (``space.toml`` beside this module is the default; its header
documents the format); ``load_space`` reads and checks one into a plain dict that the
study stores, so every worker samples the same space. ``suggest`` registers every
hyperparameter with the trial; ``model_hyperparameters`` and
``training_settings`` turn the resulting flat params dict (live or from a stored trial)
into the plain dict ``models.build_mlp`` takes and the trainer's settings, so export and
retraining rebuild exactly what the trial trained.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import optuna

from models import ACTIVATIONS
from objectives import datasets
from objectives.data import Dataset
from objectives.errors import SpaceError
from objectives.training.trainer import TrainingSettings

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

DEFAULT_FILE = Path(__file__).with_name("space.toml")
# What studies that stored no space sampled (they predate the space file).
UNSTORED_FILE = Path(__file__).with_name("space-2026-11.toml")
OPTIMIZERS = ("sgd", "adam", "adamw")  # what objectives.training.trainer.make_optimizer builds
# Every parameter, in the order trials suggest them, and the type of its values.
KINDS: dict[str, type] = {"n_layers": int, "n_units": int, "activation": str, "dropout": float, "batch_norm": bool,
                          "optimizer": str, "learning_rate": float, "weight_decay": float, "batch_size": int,
                          "warmup_epochs": float, "label_smoothing": float, "max_shift": int, "flip": bool}
# Parameters a file may leave out: then no trial suggests them and training uses the
# trainer's defaults (none of each), as every study from before they existed did.
OPTIONAL = ("warmup_epochs", "label_smoothing", "max_shift", "flip")
AUGMENTATION = {"max_shift": 0, "flip": False}  # the parameters that augment images, and their "off"
# Values the model and trainer can use: (test, what it says when a value fails it).
LIMITS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "n_layers": (lambda v: v >= 1, "at least 1"), "n_units": (lambda v: v >= 1, "at least 1"),
    "batch_size": (lambda v: v >= 1, "at least 1"), "dropout": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "learning_rate": (lambda v: v > 0, "positive"), "weight_decay": (lambda v: v >= 0, "at least 0"),
    "activation": (lambda v: v in ACTIVATIONS, f"one of {', '.join(ACTIVATIONS)}"),
    "optimizer": (lambda v: v in OPTIMIZERS, f"one of {', '.join(OPTIMIZERS)}"),
    "batch_norm": (lambda v: True, ""), "flip": (lambda v: True, ""),
    "warmup_epochs": (lambda v: v >= 0, "at least 0"), "label_smoothing": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "max_shift": (lambda v: 0 <= v <= 8, "in 0..8 pixels"),
}
Space = dict[str, dict[str, Any]]  # parameter -> {"low", "high", "log"} | {"choices"} | {"value"}


def load_space(path: str | os.PathLike[str] | None, dataset: str) -> Space:
    """The space ``dataset`` searches, from the TOML file at ``path`` (the default file if
    None), checked entry by entry; a data set's own tables ([name.parameter]) replace the
    common ones. Rows that are not images are never augmented: a file with no table of such
    a data set's own leaves its shifts and flips off; one that has tables for it must say
    so itself, or is refused."""
    known = datasets.names()
    path = Path(path) if path is not None else DEFAULT_FILE
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise SpaceError(f"search space file {path}: cannot read it ({error.strerror}); check --space") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise SpaceError(f"search space file {path} is not valid TOML ({error}); fix the file") from None
    tables = {name: table for name, table in document.items() if name in KINDS}
    for name, table in document.items():
        if name in KINDS:
            continue
        if name not in known or not isinstance(table, dict):
            raise SpaceError(f"search space file {path}: unknown table [{name}]; parameters are "
                             f"{', '.join(KINDS)}, and objective sections {', '.join(known)}: fix the file")
        for parameter, override in table.items():
            if parameter not in KINDS:
                raise SpaceError(f"search space file {path}: unknown parameter [{name}.{parameter}]; "
                                 f"parameters are {', '.join(KINDS)}: fix the file")
            check_entry(path, f"{name}.{parameter}", override)
            if name == dataset:
                tables[parameter] = override
    images = datasets.record(dataset).image_shape is not None
    if not images and dataset not in document:
        tables.update({name: {"value": off} for name, off in AUGMENTATION.items() if name in tables})
    missing = [name for name in KINDS if name not in tables and name not in OPTIONAL]
    if missing:
        raise SpaceError(f"search space file {path}: no {', '.join(f'[{name}]' for name in missing)} table; "
                         f"every parameter needs one (value = X fixes it): start from a copy of {DEFAULT_FILE}")
    checked = {name: check_entry(path, name, tables[name]) for name in KINDS if name in tables}
    if not images:
        for name, off in AUGMENTATION.items():
            if name in checked and checked[name] != {"value": off}:
                raise SpaceError(f"search space file {path}: [{name}] augments images, and {dataset} rows are "
                                 f"not images; add [{dataset}.{name}] value = {str(off).lower()} to the file")
    return checked


TYPE_NAMES = {int: "a whole number", float: "a number", str: "a string", bool: "true or false"}


def check_entry(path: Path, name: str, table: Any) -> dict[str, Any]:
    """One parameter's table (``name`` may be ``dataset.parameter``), checked and normalised."""
    parameter = name.rpartition(".")[2]
    kind = KINDS[parameter]
    test, wanted = LIMITS[parameter]

    def bad(problem: str) -> SpaceError:
        return SpaceError(f"search space file {path}: [{name}] {problem}; fix the file")

    def value_of(value: Any) -> Any:
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if type(value) is not kind or not test(value):
            raise bad(f"{value!r} is not {TYPE_NAMES[kind] if type(value) is not kind else wanted}")
        return value

    keys = set(table) if isinstance(table, dict) else None
    if keys == {"value"}:
        return {"value": value_of(table["value"])}
    if keys == {"choices"}:
        choices = table["choices"]
        if not isinstance(choices, list) or not choices:
            raise bad("choices must be a non-empty list")
        return {"choices": [value_of(choice) for choice in choices]}
    if keys in ({"low", "high"}, {"low", "high", "log"}) and kind in (int, float):
        low, high, log = value_of(table["low"]), value_of(table["high"]), table.get("log", False)
        if not isinstance(log, bool):
            raise bad("log must be true or false")
        if low > high:
            raise bad(f"low {low} is above high {high}")
        if log and low <= 0:
            raise bad("a log range needs low > 0")
        return {"low": low, "high": high, "log": log}
    forms = "low/high[/log], choices or value" if kind in (int, float) else "choices or value"
    raise bad(f"has {', '.join(sorted(keys)) if keys else repr(table)}; give {forms}")


def suggest(trial: optuna.Trial, space: Space) -> dict[str, Any]:
    """Register every hyperparameter with the trial, in ``KINDS`` order (a fixed value is a
    one-choice categorical, so it is in ``trial.params`` like the others)."""
    def one(name: str, parameter: str) -> Any:
        entry = space[parameter]
        if "value" in entry:
            return trial.suggest_categorical(name, [entry["value"]])
        if "choices" in entry:
            return trial.suggest_categorical(name, entry["choices"])
        if KINDS[parameter] is int:
            return trial.suggest_int(name, entry["low"], entry["high"], log=entry["log"])
        return trial.suggest_float(name, entry["low"], entry["high"], log=entry["log"])

    for parameter in KINDS:
        if parameter not in space:
            continue  # an optional parameter the space leaves out
        if parameter == "n_units":
            for layer in range(trial.params["n_layers"]):
                one(f"n_units_l{layer}", "n_units")
        else:
            one(parameter, parameter)
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

