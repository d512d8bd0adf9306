"""What a study is (its data set, epochs per trial, search space, pruner, budget), and the
one place that decides each setting: the flag (or its variable), else the study's
recorded value, else the default for a new study.

Read-only commands import this module: it imports no torch.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from search import keys

DEFAULT_DATASET = "fashion_mnist"  # a new study's, when no --objective is given
DEFAULT_EPOCHS = 10  # a new study's epochs per trial, when no --epochs is given
DEFAULT_BUDGET = 20  # a new study's trial budget when no --n-trials is given
# The --pruner choices (``search.study.pruner`` makes them), named here so that the command
# line lists them without loading Optuna.
PRUNERS = ("median", "hyperband", "successive-halving")
DEFAULT_PRUNER = "median"


@dataclass(frozen=True)
class StudyRequest:
    """What a worker was asked to join, as given by flags and variables; None: not given."""

    name: str | None = None
    dataset: str | None = None
    epochs: int | None = None
    n_trials: int | None = None  # raises an existing study's budget, never lowers it
    space_file: str | None = None
    pruner: str | None = None
    data_options: Mapping[str, str] = field(default_factory=dict)  # a data set's own options (--label)


@dataclass(frozen=True)
class StudySpec:
    """The study a worker joins, every setting decided. ``space``, ``pruner`` and
    ``pruner`` hold only what was asked for: the study keeps its own otherwise;
    ``data_options`` are the study's with those asked for on top (a difference is refused
    by ``search.study.compatibility.check_compatible``)."""

    name: str
    dataset: str
    epochs: int
    n_trials: int | None = None
    space: dict[str, Any] | None = None
    pruner: str | None = None
    data_options: Mapping[str, str] = field(default_factory=dict)
    # What the worker's data file held, for data sets described by their file (a table's
    # columns and classes); None until the data is read, and for fixed data sets.
    data: Mapping[str, Any] | None = None


def settle(request: StudyRequest, name: str, recorded: Mapping[str, Any]) -> StudySpec:
    """The study ``name`` as ``request`` asks for it, with the study's ``recorded`` user
    attrs (empty for a new study) and the defaults where the request says nothing: a
    worker given only ``--study`` takes the study's settings."""
    dataset = request.dataset or recorded.get(keys.DATASET) or DEFAULT_DATASET
    space = None
    if request.space_file is not None:
        from objectives.space import load_space  # torch: only workers settle a spec

        space = load_space(request.space_file, dataset)
    return StudySpec(name=name, dataset=dataset, epochs=request.epochs or recorded.get(keys.EPOCHS) or DEFAULT_EPOCHS,
                     n_trials=request.n_trials, space=space, pruner=request.pruner,
                     data_options={**recorded.get(keys.DATA_OPTIONS, {}), **request.data_options})
