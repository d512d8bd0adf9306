"""Data loaders on small files in the real on-disk formats (no network, no mocks)."""

from __future__ import annotations

import gzip
import re
import shutil
import struct
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from objectives.datasets import covtype, fashion_mnist
from objectives.errors import DataError
from tests.support.datafiles import (
    synthetic_covtype,
    synthetic_images,
    write_covtype_sklearn_cache,
    write_covtype_uci,
    write_fashion_mnist,
    write_idx,
)

N_TRAIN, N_TEST = 1200, 300  # write_fashion_mnist defaults (the fashion_dir fixture)
N_COVTYPE = 1400  # write_covtype_uci default


def row_keys(features: torch.Tensor) -> list[bytes]:
    return [bytes(row) for row in features.contiguous().numpy()]


# --- IDX reader ----------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(7, 28, 28), (5, 3, 4), (13,)])
def test_idx_round_trip(tmp_path: Path, shape: tuple[int, ...]) -> None:
    rng = np.random.default_rng(0)
    array = rng.integers(0, 256, size=shape).astype(np.uint8)
    path = tmp_path / "data-idx.gz"
    write_idx(path, array)
    tensor = fashion_mnist.read_idx(path, len(shape))
    assert tensor.dtype == torch.uint8
    assert tuple(tensor.shape) == shape
    assert np.array_equal(tensor.numpy(), array)


def test_idx_empty_file(tmp_path: Path) -> None:
    """A valid IDX file with zero items (header sizes 0 x 28 x 28) reads as an empty tensor."""
    path = tmp_path / "empty-idx3.gz"
    write_idx(path, np.zeros((0, 28, 28), dtype=np.uint8))
    try:
        tensor = fashion_mnist.read_idx(path, 3)
    except DataError:
        raise
    except Exception as error:  # noqa: BLE001 - the point is which type escapes
        pytest.fail(
            f"(objectives/fashion_mnist.py read_idx, torch.frombuffer on an empty payload): "
            f"a valid empty IDX file raised {type(error).__name__}: {error}"
        )
    assert tuple(tensor.shape) == (0, 28, 28) and tensor.dtype == torch.uint8


# --- Fashion-MNIST -------------------------------------------------------------------------


def test_fashion_split_sizes_and_disjoint(fashion_dir: Path) -> None:
    dataset = fashion_mnist.load(fashion_dir, allow_download=False)
    n_val = round(N_TRAIN / 12)
    assert len(dataset.validation) == n_val == 100
    assert len(dataset.train) == N_TRAIN - n_val
    assert dataset.n_inputs == 784 and dataset.n_classes == 10
    assert dataset.train.features.dtype == torch.uint8
    assert dataset.train.labels.dtype == torch.long

    # Train + validation is exactly the official training set, as a multiset of (image, label).
    images, labels = synthetic_images(N_TRAIN, seed=1)
    original = Counter(zip(row_keys(torch.from_numpy(images.reshape(N_TRAIN, -1))), labels.tolist()))
    split = Counter(zip(row_keys(dataset.train.features), dataset.train.labels.tolist()))
    split += Counter(zip(row_keys(dataset.validation.features), dataset.validation.labels.tolist()))
    assert split == original
    # ... and no image sits in both train and validation (the noise makes every image unique).
    assert len(original) == N_TRAIN
    assert not set(row_keys(dataset.train.features)) & set(row_keys(dataset.validation.features))


def test_fashion_split_is_fixed(fashion_dir: Path) -> None:
    first = fashion_mnist.load(fashion_dir, allow_download=False)
    second = fashion_mnist.load(fashion_dir, allow_download=False)
    for a, b in ((first.train, second.train), (first.validation, second.validation)):
        assert torch.equal(a.features, b.features)
        assert torch.equal(a.labels, b.labels)
    assert first.input_mean == second.input_mean and first.input_std == second.input_std


def test_fashion_test_set_untouched(fashion_dir: Path) -> None:
    dataset = fashion_mnist.load(fashion_dir, allow_download=False)
    images, labels = synthetic_images(N_TEST, seed=2)
    assert torch.equal(dataset.test.features, torch.from_numpy(images.reshape(N_TEST, 784)))
    assert torch.equal(dataset.test.labels, torch.from_numpy(labels).long())


def test_fashion_statistics_from_train_split_only(fashion_dir: Path) -> None:
    dataset = fashion_mnist.load(fashion_dir, allow_download=False)
    train = dataset.train.features.numpy().astype(np.float64)
    assert len(dataset.input_mean) == 1 and len(dataset.input_std) == 1
    assert dataset.input_mean[0] == pytest.approx(train.mean(), rel=1e-5)
    assert dataset.input_std[0] == pytest.approx(train.std(ddof=1), rel=1e-4)
    # The statistics of all 1,200 training images differ measurably: the split matters.
    everything = np.concatenate([train, dataset.validation.features.numpy().astype(np.float64)])
    assert everything.mean() != pytest.approx(train.mean(), rel=1e-5)


def test_fashion_torchvision_layout(tmp_path: Path) -> None:
    write_fashion_mnist(tmp_path / "FashionMNIST" / "raw", n_train=120, n_test=30)
    dataset = fashion_mnist.load(tmp_path, allow_download=False)
    assert len(dataset.train) + len(dataset.validation) == 120
    assert len(dataset.validation) == 10
    assert len(dataset.test) == 30


def small_fashion(tmp_path: Path) -> Path:
    return write_fashion_mnist(tmp_path / "fm", n_train=60, n_test=12)


def test_fashion_truncated_gzip(tmp_path: Path) -> None:
    directory = small_fashion(tmp_path)
    path = directory / fashion_mnist.FILES["train_images"]
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="corrupt gzip") as error:
        fashion_mnist.load(directory, allow_download=False)
    assert str(path) in str(error.value)


def test_fashion_payload_length_mismatch(tmp_path: Path) -> None:
    directory = small_fashion(tmp_path)
    path = directory / fashion_mnist.FILES["test_labels"]
    with gzip.open(path, "wb") as handle:  # header says 12 labels, payload holds 11
        handle.write(bytes([0, 0, 8, 1]) + struct.pack(">I", 12) + bytes(11))
    with pytest.raises(DataError, match="header says") as error:
        fashion_mnist.load(directory, allow_download=False)
    assert str(path) in str(error.value)


@pytest.mark.parametrize(
    "header",
    [
        bytes([0, 0, 0x0D, 3]),  # float32 IDX, not unsigned bytes
        bytes([0, 0, 0x08, 2]),  # 2-d where images are 3-d
        bytes([1, 0, 0x08, 3]),  # bad magic
    ],
    ids=["wrong-dtype", "wrong-ndim", "bad-magic"],
)
def test_fashion_wrong_header(tmp_path: Path, header: bytes) -> None:
    directory = small_fashion(tmp_path)
    path = directory / fashion_mnist.FILES["train_images"]
    ndim = header[3]
    with gzip.open(path, "wb") as handle:
        handle.write(header + struct.pack(f">{ndim}I", *([60, 28, 28][:ndim])) + bytes(60 * 784))
    with pytest.raises(DataError, match="not an IDX file") as error:
        fashion_mnist.load(directory, allow_download=False)
    assert str(path) in str(error.value)


def test_fashion_header_truncated_before_dimensions(tmp_path: Path) -> None:
    """A 3-d header cut off after the first size: must be DataError, not struct.error."""
    directory = small_fashion(tmp_path)
    path = directory / fashion_mnist.FILES["train_images"]
    with gzip.open(path, "wb") as handle:
        handle.write(bytes([0, 0, 8, 3]) + struct.pack(">I", 60))
    with pytest.raises(DataError, match=re.escape(str(path))):
        fashion_mnist.load(directory, allow_download=False)


def test_fashion_missing_file_without_download(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    directory = small_fashion(tmp_path)
    (directory / fashion_mnist.FILES["test_labels"]).unlink()

    def no_network(target: Path) -> dict[str, Path]:
        raise AssertionError(f"a download into {target} was attempted")

    monkeypatch.setattr(fashion_mnist, "download", no_network)  # only proves no network is touched
    with pytest.raises(DataError) as error:
        fashion_mnist.load(directory, allow_download=False)
    message = str(error.value)
    assert str(directory) in message
    assert fashion_mnist.FILES["test_labels"] in message


def test_fashion_nonexistent_data_dir(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(DataError, match="does not exist") as error:
        fashion_mnist.load(missing)  # even with downloads allowed: nothing is created
    assert str(missing) in str(error.value)
    assert not missing.exists()


# --- CoverType ------------------------------------------------------------------------------


def test_covtype_uci_and_sklearn_layouts_agree(covtype_dir: Path, tmp_path: Path) -> None:
    uci = covtype.load(covtype_dir)
    cache = covtype.load(write_covtype_sklearn_cache(tmp_path / "sk", n=N_COVTYPE))
    assert uci.n_inputs == 54 and uci.n_classes == 7
    for name in ("train", "validation", "test"):
        a, b = getattr(uci, name), getattr(cache, name)
        assert a.features.dtype == b.features.dtype == torch.float32
        assert a.labels.dtype == b.labels.dtype == torch.long
        assert torch.equal(a.features, b.features), name
        assert torch.equal(a.labels, b.labels), name
    assert uci.input_mean == cache.input_mean
    assert uci.input_std == cache.input_std


def test_covtype_labels_and_rows(covtype_dir: Path) -> None:
    dataset = covtype.load(covtype_dir)
    samples, labels = synthetic_covtype(N_COVTYPE)
    all_labels = torch.cat([dataset.train.labels, dataset.validation.labels, dataset.test.labels])
    assert int(all_labels.min()) == 0 and int(all_labels.max()) == 6
    assert Counter(all_labels.tolist()) == Counter((labels - 1).tolist())
    # Every original row appears in exactly one split, with its label shifted to 0..6.
    original = Counter(
        zip(row_keys(torch.from_numpy(samples.astype(np.float32))), (labels - 1).tolist())
    )
    loaded: Counter = Counter()
    for split in (dataset.train, dataset.validation, dataset.test):
        loaded += Counter(zip(row_keys(split.features), split.labels.tolist()))
    assert loaded == original


def test_covtype_stratified_split(covtype_dir: Path) -> None:
    dataset = covtype.load(covtype_dir)
    total = Counter(
        torch.cat([dataset.train.labels, dataset.validation.labels, dataset.test.labels]).tolist()
    )
    parts = [Counter(s.labels.tolist()) for s in (dataset.train, dataset.validation, dataset.test)]
    for label, count in total.items():
        for part, fraction in zip(parts, (0.8, 0.1, 0.1)):
            assert abs(part[label] - fraction * count) <= 1.0, (label, part[label], count)
    assert len(dataset.train) == pytest.approx(0.8 * N_COVTYPE, abs=7)
    assert len(dataset.validation) == pytest.approx(0.1 * N_COVTYPE, abs=7)


def test_covtype_standardisation_uses_train_rows(covtype_dir: Path) -> None:
    dataset = covtype.load(covtype_dir)
    train = dataset.train.features.numpy().astype(np.float64)
    mean, std = np.array(dataset.input_mean), np.array(dataset.input_std)
    assert mean.shape == std.shape == (54,)
    np.testing.assert_allclose(mean[:10], train[:, :10].mean(0), rtol=1e-7)
    np.testing.assert_allclose(std[:10], train[:, :10].std(0, ddof=1), rtol=1e-7)
    assert np.all(mean[10:] == 0.0) and np.all(std[10:] == 1.0)
    # Not the statistics of all rows (validation and test rows are excluded).
    everything = np.concatenate(
        [train, dataset.validation.features.numpy(), dataset.test.features.numpy()]
    )
    assert not np.allclose(mean[:10], everything[:, :10].mean(0), rtol=1e-7)

    # Inside the model, raw training rows come out with mean 0 / std 1 on the continuous columns.
    from models import build_mlp

    model = build_mlp({"n_inputs": 54, "hidden_sizes": [], "n_classes": 7,
                       "input_mean": list(dataset.input_mean), "input_std": list(dataset.input_std)})
    scaled = model[0](dataset.train.features).double().numpy()
    np.testing.assert_allclose(scaled[:, :10].mean(0), 0.0, atol=1e-5)
    np.testing.assert_allclose(scaled[:, :10].std(0, ddof=1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(scaled[:, 10:], train[:, 10:])


def test_covtype_corrupt_gzip(tmp_path: Path) -> None:
    directory = write_covtype_uci(tmp_path / "ct", n=200)
    path = directory / covtype.UCI_FILE
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="corrupt gzip") as error:
        covtype.load(directory)
    assert str(path) in str(error.value)


@pytest.mark.parametrize("columns", [54, 56])
def test_covtype_wrong_column_count(tmp_path: Path, columns: int) -> None:
    directory = tmp_path / "ct"
    directory.mkdir()
    path = directory / covtype.UCI_FILE
    rows = "\n".join(",".join(["1"] * columns) for _ in range(5))
    with gzip.open(path, "wt") as handle:
        handle.write(rows + "\n")
    with pytest.raises(DataError, match=f"{columns} columns") as error:
        covtype.load(directory)
    assert str(path) in str(error.value)


def test_covtype_ragged_rows(tmp_path: Path) -> None:
    directory = tmp_path / "ct"
    directory.mkdir()
    path = directory / covtype.UCI_FILE
    with gzip.open(path, "wt") as handle:
        handle.write(",".join(["1"] * 55) + "\n" + ",".join(["1"] * 30) + "\n")
    with pytest.raises(DataError) as error:
        covtype.load(directory)
    assert str(path) in str(error.value)


def test_covtype_bad_labels(tmp_path: Path) -> None:
    directory = tmp_path / "ct"
    directory.mkdir()
    with gzip.open(directory / covtype.UCI_FILE, "wt") as handle:
        handle.write(",".join(["1"] * 54 + ["8"]) + "\n")
    with pytest.raises(DataError, match="1..7"):
        covtype.load(directory)


def test_covtype_directory_without_data(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="CoverType data not found") as error:
        covtype.load(tmp_path)
    message = str(error.value)
    assert covtype.UCI_FILE in message
    assert str(tmp_path) in message
    assert not (tmp_path / "covertype").exists()


def test_covtype_nonexistent_data_dir(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist") as error:
        covtype.load(tmp_path / "nowhere")
    assert str(tmp_path / "nowhere") in str(error.value)


def test_covtype_damaged_sklearn_cache(tmp_path: Path) -> None:
    data_home = write_covtype_sklearn_cache(tmp_path / "sk", n=50)
    (data_home / covtype.SKLEARN_SAMPLES).write_bytes(b"garbage")
    with pytest.raises(DataError, match="unreadable scikit-learn covtype cache"):
        covtype.load(data_home)


def test_covtype_uci_file_preferred_over_cache(covtype_dir: Path, tmp_path: Path) -> None:
    directory = tmp_path / "both"
    shutil.copytree(covtype_dir, directory)
    cache = write_covtype_sklearn_cache(directory, n=N_COVTYPE)
    (cache / covtype.SKLEARN_SAMPLES).write_bytes(b"garbage")  # never read: the UCI file wins
    assert len(covtype.load(directory).train) == len(covtype.load(covtype_dir).train)
