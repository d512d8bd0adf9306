"""Data sets: the record each one declares, and the in-memory splits every loader returns.

Features stay in their storage dtype (uint8 pixels, float32 tabular columns) so a
whole split fits on the device cheaply; the model's ``Standardize`` layer holds the
scaling statistics computed on the training split only.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from objectives.errors import DataError


@dataclass(frozen=True)
class Split:
    """Features (N x n_inputs) and integer labels (N) of one split."""

    features: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def to(self, device: torch.device | str) -> Split:
        return Split(self.features.to(device), self.labels.to(device))


@dataclass(frozen=True)
class Dataset:
    """Train / validation / test splits plus what a model needs to know about the inputs."""

    name: str
    train: Split
    validation: Split
    test: Split
    class_names: tuple[str, ...]
    input_mean: tuple[float, ...]
    input_std: tuple[float, ...]
    # (height, width) when each row is an image stored row-major: shifts and flips apply.
    image_shape: tuple[int, int] | None = None
    # What each input is, in order, for data sets whose columns come from the file (a table).
    inputs: tuple[str, ...] | None = None
    input_description: str = ""

    @property
    def n_inputs(self) -> int:
        return int(self.train.features.shape[1])

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    def train_and_validation(self) -> Split:
        """Both splits as one, for retraining the chosen configuration on every labelled row."""
        return Split(torch.cat([self.train.features, self.validation.features]),
                     torch.cat([self.train.labels, self.validation.labels]))

    def described(self) -> dict[str, Any] | None:
        """What the file held, for a study to record (and compare a joining worker's data
        with): its classes, inputs and how to build them; None for a data set whose
        inputs and classes are fixed."""
        if self.inputs is None:
            return None
        return {"class_names": list(self.class_names), "inputs": list(self.inputs), "input": self.input_description}


@dataclass(frozen=True)
class DataOption:
    """An option of a data set's own: ``--NAME`` on the command line, ``SEARCH_NAME`` in
    the environment, recorded with the study."""

    name: str
    metavar: str
    help: str


Loader = Callable[[str | os.PathLike[str] | None, Mapping[str, str]], Dataset]


@dataclass(frozen=True)
class DatasetRecord:
    """Everything the project knows about a data set before reading it: each module in
    ``objectives/datasets/`` declares one as ``DATASET``, and nothing else names it."""

    name: str  # the --objective value and the study's record of it
    load: Loader  # (--data-dir or None, the data set's options) -> checked splits
    data_help: str  # what --data-dir holds, for --help
    # The classes and what one input row is, when fixed (None: the file says, as a table's).
    class_names: tuple[str, ...] | None = None
    input_description: str | None = None
    n_inputs: int | None = None
    # (height, width) when rows are images: the only data sets shifts and flips apply to.
    image_shape: tuple[int, int] | None = None
    options: tuple[DataOption, ...] = ()

    @property
    def described_by_file(self) -> bool:
        return self.class_names is None


MIN_TRAIN = 2  # batch norm needs two rows; one row teaches nothing anyway


def check_trainable(dataset: Dataset, source: str) -> Dataset:
    """Refuse, naming ``source``, a data set no trial could train on or be scored by."""
    for name in ("train", "validation", "test"):
        split: Split = getattr(dataset, name)
        if len(split) < (MIN_TRAIN if name == "train" else 1):
            raise DataError(f"{source}: the {name} split has {len(split)} rows after splitting; it needs "
                            f"at least {MIN_TRAIN if name == 'train' else 1} (is the file cut short?)")
        if split.labels.min() < 0 or split.labels.max() >= dataset.n_classes:
            raise DataError(f"{source}: label {int(split.labels.max())} is outside 0..{dataset.n_classes - 1}")
        if split.features.is_floating_point() and not torch.isfinite(split.features).all():
            raise DataError(f"{source}: the {name} split holds NaN or infinite values")
    return dataset


def seeded_permutation(n: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randperm(n, generator=generator)


def stratified_split(
    labels: torch.Tensor, fractions: tuple[float, ...], seed: int
) -> list[torch.Tensor]:
    """Indices of each part, with every class spread over the parts in ``fractions``."""
    generator = torch.Generator().manual_seed(seed)
    parts: list[list[torch.Tensor]] = [[] for _ in fractions]
    for label in torch.unique(labels):
        members = torch.nonzero(labels == label).flatten()
        members = members[torch.randperm(len(members), generator=generator)]
        bounds = torch.tensor([0.0, *fractions]).cumsum(0) * len(members)
        bounds = bounds.round().long().tolist()
        for part, (start, stop) in zip(parts, zip(bounds[:-1], bounds[1:])):
            part.append(members[start:stop])
    return [torch.cat(part)[torch.randperm(sum(map(len, part)), generator=generator)] for part in parts]
