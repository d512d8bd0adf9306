"""CoverType (UCI forest cover type, 581,012 x 54) from the real on-disk formats.

Looked for in the data directory, in this order:
1. the UCI file ``covtype.data.gz`` (55 comma-separated integers per row, label 1..7 last);
2. scikit-learn's ``fetch_covtype`` cache (``covertype/samples_py3`` and ``targets_py3``,
   joblib dumps), i.e. the directory is sklearn's ``data_home``;
3. online, with scikit-learn installed: ``fetch_covtype(data_home=dir)`` downloads it.

Labels 1..7 become 0..6; the split is stratified 80/10/10 with a fixed seed; the 10
continuous columns are standardised with training-split statistics (the 44 binary
wilderness/soil indicator columns are left as they are).
"""

from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path

import numpy as np
import torch

from objectives.data import Dataset, DatasetRecord, Split, check_trainable, stratified_split
from objectives.errors import DataError
from objectives.safe_joblib import UnsafePickle, load_array

CLASS_NAMES = (
    "Spruce/Fir", "Lodgepole Pine", "Ponderosa Pine", "Cottonwood/Willow",
    "Aspen", "Douglas-fir", "Krummholz",
)
INPUT_DESCRIPTION = "the 54 UCI covtype columns as float32, in file order, unscaled"
N_FEATURES = 54
N_CONTINUOUS = 10
UCI_FILE = "covtype.data.gz"
SKLEARN_SAMPLES = Path("covertype") / "samples_py3"
SKLEARN_TARGETS = Path("covertype") / "targets_py3"
DOWNLOAD_DIR = Path.home() / ".cache" / "hpsearch" / "covtype"
SPLIT_FRACTIONS = (0.8, 0.1, 0.1)
SPLIT_SEED = 1998  # the year the data set was donated to UCI


def read_uci(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with gzip.open(path, "rt") as handle:
            table = np.loadtxt(handle, delimiter=",", dtype=np.int32, ndmin=2)
    except (OSError, EOFError, zlib.error) as error:
        raise DataError(f"{path}: corrupt gzip data ({error}); download covtype.data.gz again") from None
    except ValueError as error:
        raise DataError(f"{path}: not the UCI covtype format ({error}); download it again") from None
    if table.shape[1] != N_FEATURES + 1:
        raise DataError(f"{path}: rows have {table.shape[1]} columns, the UCI format has {N_FEATURES + 1}; "
                        f"download it again")
    return table[:, :N_FEATURES], table[:, N_FEATURES]


def read_sklearn_cache(data_home: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        samples = load_array(data_home / SKLEARN_SAMPLES)
        targets = load_array(data_home / SKLEARN_TARGETS)
    except UnsafePickle as refusal:
        raise DataError(f"{refusal}: refused to load: it holds {refusal.what}, not just a numeric array "
                        f"(a joblib cache is a pickle, which can run code); nothing in it was run. "
                        f"Delete it and run fetch_covtype again, or use the UCI {UCI_FILE}") from None
    except Exception as error:  # a damaged cache: joblib and pickle raise many types
        raise DataError(
            f"{data_home / SKLEARN_SAMPLES.parent}: unreadable scikit-learn covtype cache ({error}); "
            f"delete it and run fetch_covtype again"
        ) from None
    samples, targets = np.asarray(samples), np.asarray(targets)
    if samples.ndim != 2 or samples.shape[1] != N_FEATURES or len(samples) != len(targets):
        raise DataError(
            f"{data_home / SKLEARN_SAMPLES}: shape {samples.shape} with {len(targets)} targets "
            f"is not the covtype cache (N x {N_FEATURES})"
        )
    return samples, targets


def fetch_with_sklearn(data_home: Path) -> tuple[np.ndarray, np.ndarray]:
    hint = (
        f"put the UCI {UCI_FILE} or a scikit-learn fetch_covtype cache "
        f"({SKLEARN_SAMPLES}) in {data_home}, or pass --data-dir"
    )
    try:
        from sklearn.datasets import fetch_covtype
    except ImportError:
        raise DataError(f"CoverType data not found: {hint}") from None
    try:
        bunch = fetch_covtype(data_home=str(data_home), download_if_missing=True)
    except Exception as error:  # offline: URLError / OSError
        raise DataError(f"CoverType data not found and the download failed ({error}): {hint}") from None
    return bunch.data, bunch.target


def read_raw(directory: Path) -> tuple[np.ndarray, np.ndarray]:
    if (directory / UCI_FILE).is_file():
        return read_uci(directory / UCI_FILE)
    if (directory / SKLEARN_SAMPLES).is_file() and (directory / SKLEARN_TARGETS).is_file():
        return read_sklearn_cache(directory)
    return fetch_with_sklearn(directory)


def load(data_dir: str | os.PathLike[str] | None) -> Dataset:
    directory = Path(data_dir) if data_dir is not None else DOWNLOAD_DIR
    if data_dir is not None and not directory.is_dir():
        raise DataError(
            f"data directory {directory} does not exist; create it with {UCI_FILE} or a "
            f"scikit-learn covtype cache in it, or pass another --data-dir"
        )
    samples, targets = read_raw(directory)
    labels = torch.as_tensor(np.asarray(targets), dtype=torch.long) - 1
    if len(labels) == 0 or labels.min() < 0 or labels.max() >= len(CLASS_NAMES):
        raise DataError(f"CoverType labels in {directory} are not all in 1..{len(CLASS_NAMES)}; this is not "
                        f"the UCI covtype data: download it again")
    features = torch.as_tensor(np.asarray(samples, dtype=np.float32))
    if not torch.isfinite(features).all():
        raise DataError(f"{directory}: the CoverType samples hold NaN or infinite values; download them again")

    train_idx, val_idx, test_idx = stratified_split(labels, SPLIT_FRACTIONS, SPLIT_SEED)
    continuous = features[train_idx, :N_CONTINUOUS].double()
    mean = torch.zeros(N_FEATURES, dtype=torch.float64)
    std = torch.ones(N_FEATURES, dtype=torch.float64)
    mean[:N_CONTINUOUS] = continuous.mean(0)
    # A constant column (possible in tiny files) must not divide by zero.
    std[:N_CONTINUOUS] = continuous.std(0).clamp_min(1e-6)
    return check_trainable(Dataset(
        name="covtype",
        train=Split(features[train_idx], labels[train_idx]),
        validation=Split(features[val_idx], labels[val_idx]),
        test=Split(features[test_idx], labels[test_idx]),
        class_names=CLASS_NAMES,
        input_mean=tuple(mean.tolist()),
        input_std=tuple(std.tolist()),
    ), str(directory))


DATASET = DatasetRecord(
    name="covtype",
    load=lambda data_dir, options: load(data_dir),
    data_help="covtype.data.gz or a scikit-learn covtype cache",
    class_names=CLASS_NAMES,
    input_description=INPUT_DESCRIPTION,
    n_inputs=N_FEATURES,
)
