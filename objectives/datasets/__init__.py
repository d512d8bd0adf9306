"""The data sets: one module each in this folder, each declaring ``DATASET``, a
``DatasetRecord``. Adding a data set is adding a module here; nothing else names it.

Names are found without importing the modules (``names``); a record is imported when it
is asked for.
"""

from __future__ import annotations

import importlib
import os
import pkgutil
from collections.abc import Mapping
from typing import TYPE_CHECKING

from objectives.errors import DataError, UnknownDataset

if TYPE_CHECKING:  # the registry itself loads no torch: the command line lists names with it
    from objectives.data import DataOption, Dataset, DatasetRecord


def names() -> list[str]:
    """Every data set's name (its module's), without importing any."""
    return sorted(module.name for module in pkgutil.iter_modules(__path__) if not module.name.startswith("_"))


def record(name: str) -> DatasetRecord:
    if name not in names():
        raise UnknownDataset(name, names())
    declared = importlib.import_module(f"{__name__}.{name}").DATASET
    if declared.name != name:
        raise AssertionError(f"objectives/datasets/{name}.py declares the data set {declared.name!r}")
    return declared


def options() -> list[DataOption]:
    """Every data set's own options, each once (imports every data set)."""
    found: dict[str, DataOption] = {}
    for name in names():
        for option in record(name).options:
            found.setdefault(option.name, option)
    return list(found.values())


def load_dataset(name: str, data_dir: str | os.PathLike[str] | None,
                 data_options: Mapping[str, str] | None = None) -> Dataset:
    """The data set ``name``, read from ``data_dir`` (None: its default place) with its
    ``data_options``, checked against what its record declares."""
    found = record(name)
    given = dict(data_options or {})
    accepted = {option.name for option in found.options}
    for option in sorted(set(given) - accepted):
        users = [other for other in names() if option in {o.name for o in record(other).options}]
        raise DataError(f"--{option} applies to the {' and '.join(users)} data set, not {name}; drop --{option} "
                        f"(and SEARCH_{option.upper()})")
    dataset = found.load(data_dir, given)
    if found.class_names is not None and dataset.class_names != found.class_names:
        raise AssertionError(f"{name} loaded classes {dataset.class_names}, its record says {found.class_names}")
    if found.n_inputs is not None and dataset.n_inputs != found.n_inputs:
        raise AssertionError(f"{name} loaded {dataset.n_inputs} inputs, its record says {found.n_inputs}")
    return dataset

