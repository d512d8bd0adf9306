"""A user's own table: a CSV (or Parquet) file whose ``--label`` column holds each row's class.

``--data-dir`` names the file (``.csv``, ``.csv.gz``, ``.parquet``), or a directory that
holds exactly one. Every other column is an input, in the file's order:

* numbers (integers, floats, true/false) as they are; the model standardises them with
  the training split's mean and spread (its ``Standardize`` layer);
* text, one-hot encoded: one input per value the column holds in the file (sorted), 1.0
  where the row holds that value, else 0.0. A text column with more than
  ``MAX_CATEGORIES`` values (an id, free text) is refused: drop or encode it.

The classes are the label column's values (sorted). Rows are split 80/10/10 into train,
validation and test, stratified by class, with a fixed seed: the same file always splits
the same way, on every worker. A file that cannot be used (missing, empty, no such label
column, one class, a column of numbers with text in it, empty or NaN cells) is one line
naming the column and the line of the file.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from objectives.data import DataOption, Dataset, DatasetRecord, Split, check_trainable, stratified_split
from objectives.errors import DataError

SUFFIXES = (".csv", ".csv.gz", ".parquet")
MAX_CATEGORIES = 100
SPLIT_FRACTIONS = (0.8, 0.1, 0.1)
SPLIT_SEED = 20_261_202
LABEL = DataOption("label", "COLUMN", "the column holding each row's class (table data: a CSV or Parquet file)")


def find_file(data_dir: str | os.PathLike[str] | None) -> Path:
    if data_dir is None:
        raise DataError("the table data set reads your own file; pass --data-dir FILE.csv (or .parquet) "
                        "and --label COLUMN")
    path = Path(data_dir)
    if path.is_dir():
        found = sorted(child for child in path.iterdir() if child.name.endswith(SUFFIXES))
        if len(found) != 1:
            what = "no" if not found else f"{len(found)} ({', '.join(child.name for child in found)})"
            raise DataError(f"{path} holds {what} .csv or .parquet files; pass --data-dir naming one file")
        return found[0]
    if not path.exists():
        raise DataError(f"{path}: no such file; pass --data-dir naming a .csv or .parquet file")
    if not path.name.endswith(SUFFIXES):
        raise DataError(f"{path}: not a .csv, .csv.gz or .parquet file; pass --data-dir naming one")
    return path


def read_table(path: Path) -> pd.DataFrame:
    try:
        if path.name.endswith(".parquet"):
            return pd.read_parquet(path)
        return pd.read_csv(path, skipinitialspace=True)
    except ImportError:
        raise DataError(f"{path}: reading Parquet needs pyarrow (pip install pyarrow); or save the table "
                        f"as CSV") from None
    except pd.errors.EmptyDataError:
        raise DataError(f"{path} is empty; give a table with a header line and rows") from None
    except (pd.errors.ParserError, UnicodeDecodeError, OSError, ValueError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise DataError(f"{path}: not a readable table ({first}); check the file") from None


def line(index: int) -> int:
    """The file's line of a row (the header is line 1)."""
    return index + 2


def check_cells(path: Path, table: pd.DataFrame) -> None:
    """No empty or NaN cell, no infinite number, no column of numbers with text in it."""
    for column in table.columns:
        values = table[column]
        missing = values.isna().to_numpy()
        if missing.any():
            raise DataError(f"{path}: column {column!r} has {int(missing.sum())} empty or NaN cells (the first "
                            f"on line {line(int(np.argmax(missing)))}); fill them or drop those rows")
        if pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
            infinite = ~np.isfinite(values.to_numpy(dtype=float))
            if infinite.any():
                raise DataError(f"{path}: column {column!r} holds an infinite number on line "
                                f"{line(int(np.argmax(infinite)))}; fix or drop that row")
        elif not pd.api.types.is_bool_dtype(values):
            numbers = pd.to_numeric(values, errors="coerce")
            junk = numbers.isna().to_numpy()
            if 2 * int(junk.sum()) < len(values):  # mostly numbers: the text is junk, not categories
                first = int(np.argmax(junk))
                raise DataError(f"{path}: column {column!r} holds numbers, but {values.iloc[first]!r} on line "
                                f"{line(first)} is not one; fix those cells or drop the column")


def encode(path: Path, features: pd.DataFrame) -> tuple[np.ndarray, list[str], list[bool]]:
    """The inputs as float32 columns, their names, and which are numbers (to standardise)."""
    columns, names, numeric = [], [], []
    for column in features.columns:
        values = features[column]
        if pd.api.types.is_numeric_dtype(values) or pd.api.types.is_bool_dtype(values):
            columns.append(values.to_numpy(dtype=np.float32)[:, None])
            names.append(str(column))
            numeric.append(True)
            continue
        text = values.astype(str)
        categories = sorted(text.unique())
        if len(categories) > MAX_CATEGORIES:
            raise DataError(f"{path}: column {column!r} has {len(categories):,} distinct text values; one-hot "
                            f"encoding allows {MAX_CATEGORIES}: drop the column (or encode it as numbers)")
        columns.append((text.to_numpy()[:, None] == np.array(categories)[None, :]).astype(np.float32))
        names += [f"{column}={category}" for category in categories]
        numeric += [False] * len(categories)
    return np.hstack(columns), names, numeric


def class_names(path: Path, column: str, labels: pd.Series) -> tuple[list[str], np.ndarray]:
    """The classes (sorted label values, as text) and each row's class index."""
    values = sorted(labels.unique())
    if len(values) < 2:
        raise DataError(f"{path}: label column {column!r} holds one class ({values[0]!r}); a classifier needs "
                        f"at least two: check --label")
    index = {value: position for position, value in enumerate(values)}
    return [str(value) for value in values], labels.map(index).to_numpy(dtype=np.int64, copy=True)


def load(data_dir: str | os.PathLike[str] | None, options: Mapping[str, str]) -> Dataset:
    path = find_file(data_dir)
    table = read_table(path)
    label = options.get("label")
    if label is None or label not in table.columns:
        given = "needs --label COLUMN naming" if label is None else f"has no column {label!r}; pass --label with"
        raise DataError(f"{path} {given} the column of classes; its columns: {', '.join(map(str, table.columns))}")
    if len(table) == 0:
        raise DataError(f"{path} has a header but no rows; give a table with rows")
    if len(table.columns) < 2:
        raise DataError(f"{path} has no column but the label {label!r}; give a table with inputs")
    check_cells(path, table)
    classes, targets = class_names(path, label, table[label])
    inputs, names, numeric = encode(path, table.drop(columns=[label]))
    features, labels = torch.from_numpy(inputs), torch.from_numpy(targets)

    train_idx, val_idx, test_idx = stratified_split(labels, SPLIT_FRACTIONS, SPLIT_SEED)
    train = features[train_idx].double()
    chosen = torch.tensor(numeric)
    mean = torch.where(chosen, train.mean(0), torch.zeros(len(names), dtype=torch.float64))
    # A constant column (possible in small files) must not divide by zero.
    std = torch.where(chosen, train.std(0).nan_to_num(1.0).clamp_min(1e-6), torch.ones(len(names), dtype=torch.float64))
    return check_trainable(Dataset(
        name="table",
        train=Split(features[train_idx], labels[train_idx]),
        validation=Split(features[val_idx], labels[val_idx]),
        test=Split(features[test_idx], labels[test_idx]),
        class_names=tuple(classes),
        input_mean=tuple(mean.tolist()),
        input_std=tuple(std.tolist()),
        inputs=tuple(names),
        input_description=(f"{len(names)} float32 inputs, in the order of preprocessing.inputs: a number column's "
                           f"value as in the file (true/false as 1/0), and for a text column 'column=value' 1.0 "
                           f"where the row holds that value, else 0.0 (standardisation is inside the model)"),
    ), str(path))


DATASET = DatasetRecord(
    name="table",
    load=load,
    data_help="your own CSV or Parquet file (or a directory holding one), with --label naming its class column",
    options=(LABEL,),
)
