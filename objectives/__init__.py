"""Search objectives: datasets, search space, device-resident training.

``OBJECTIVES`` maps each objective name to its dataset loader.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

from objectives import covtype, fashion_mnist
from objectives.datasets import DataError, Dataset
from objectives.objective import EpochHooks, ObjectiveSettings, make_objective

OBJECTIVES: dict[str, Callable[[str | os.PathLike[str] | None], Dataset]] = {
    "fashion_mnist": fashion_mnist.load,
    "covtype": covtype.load,
}


@dataclass(frozen=True)
class DatasetInfo:
    """What an exported model's user needs to know without loading the data."""

    class_names: tuple[str, ...]
    input_description: str


DATASET_INFO = {
    "fashion_mnist": DatasetInfo(fashion_mnist.CLASS_NAMES, fashion_mnist.INPUT_DESCRIPTION),
    "covtype": DatasetInfo(covtype.CLASS_NAMES, covtype.INPUT_DESCRIPTION),
}


class UnknownObjective(ValueError):
    exit_code = 2  # a command line shows it as one line

    def __init__(self, name: str) -> None:
        super().__init__(f"unknown objective {name!r}; choose one of: {', '.join(OBJECTIVES)}")


def load_dataset(objective: str, data_dir: str | os.PathLike[str] | None) -> Dataset:
    if objective not in OBJECTIVES:
        raise UnknownObjective(objective)
    return OBJECTIVES[objective](data_dir)


__all__ = [
    "DATASET_INFO", "OBJECTIVES", "DataError", "Dataset", "EpochHooks", "ObjectiveSettings",
    "UnknownObjective", "load_dataset", "make_objective",
]
