"""Small data files in the real on-disk formats, written by the tests themselves.

The images are learnable (each class lights its own block of pixels, plus noise) so
a few epochs reach high accuracy and pruning and determinism can be observed.
"""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pandas

from objectives.datasets import covtype, fashion_mnist


def write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as handle:
        handle.write(header + np.ascontiguousarray(array, dtype=np.uint8).tobytes())


def synthetic_images(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, size=n).astype(np.uint8)
    images = rng.integers(0, 90, size=(n, 28, 28)).astype(np.uint8)
    for label in range(10):
        rows = labels == label
        top = 2 + 2 * label
        images[rows, top:top + 4, 4:24] = rng.integers(120, 255, size=(int(rows.sum()), 4, 20))
    return images, labels


def write_fashion_mnist(directory: Path, n_train: int = 1200, n_test: int = 300) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    train_images, train_labels = synthetic_images(n_train, seed=1)
    test_images, test_labels = synthetic_images(n_test, seed=2)
    files = fashion_mnist.FILES
    write_idx(directory / files["train_images"], train_images)
    write_idx(directory / files["train_labels"], train_labels)
    write_idx(directory / files["test_images"], test_images)
    write_idx(directory / files["test_labels"], test_labels)
    return directory


def synthetic_covtype(n: int, seed: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Rows shaped like UCI covtype: 10 integer measurements, 4 + 40 one-hot columns, label 1..7."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(1, 8, size=n)
    continuous = rng.normal(0, 50, size=(n, covtype.N_CONTINUOUS)) + 2000 + 300 * labels[:, None]
    wilderness = np.eye(4, dtype=np.int64)[rng.integers(0, 4, size=n)]
    soil = np.eye(40, dtype=np.int64)[(labels * 5 + rng.integers(0, 3, size=n)) % 40]
    samples = np.hstack([continuous.round().astype(np.int64), wilderness, soil])
    return samples, labels


def write_covtype_uci(directory: Path, n: int = 1400) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    samples, labels = synthetic_covtype(n)
    rows = "\n".join(",".join(map(str, [*row, label])) for row, label in zip(samples, labels))
    with gzip.open(directory / covtype.UCI_FILE, "wt") as handle:
        handle.write(rows + "\n")
    return directory


def write_covtype_sklearn_cache(data_home: Path, n: int = 1400) -> Path:
    """The layout scikit-learn's fetch_covtype leaves in ``data_home`` (joblib, compress=9)."""
    import joblib

    samples, labels = synthetic_covtype(n)
    (data_home / covtype.SKLEARN_SAMPLES.parent).mkdir(parents=True, exist_ok=True)
    joblib.dump(samples.astype(np.float64), data_home / covtype.SKLEARN_SAMPLES, compress=9)
    joblib.dump(labels.astype(np.int32), data_home / covtype.SKLEARN_TARGETS, compress=9)
    return data_home


def synthetic_table(n: int = 600, seed: int = 5) -> pandas.DataFrame:
    """A user's table: numbers on different scales, a text column, a true/false column and
    a text label that depends on all three (learnable in a few epochs)."""
    rng = np.random.default_rng(seed)
    species = np.array(["setosa", "versicolor", "virginica"])[rng.integers(0, 3, size=n)]
    colour = np.where(species == "virginica", "blue", rng.choice(["red", "green"], size=n))
    index = {"setosa": 0, "versicolor": 1, "virginica": 2}
    classes = np.array([index[value] for value in species])
    return pandas.DataFrame({
        "height_cm": np.round(150 + 15 * classes + rng.normal(0, 3, size=n), 1),
        "weight_kg": np.round(50 + 10 * (classes == 1) + rng.normal(0, 2, size=n), 2),
        "colour": colour,
        "count": rng.integers(0, 1000, size=n),
        "outdoor": rng.random(size=n) < 0.5,
        "species": species,
    })


def write_table(directory: Path, name: str = "plants.csv", n: int = 600) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    table = synthetic_table(n)
    path = directory / name
    if name.endswith(".parquet"):
        table.to_parquet(path, index=False)
    else:
        table.to_csv(path, index=False)
    return path
