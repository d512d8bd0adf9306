"""Fashion-MNIST from the four official IDX .gz files (torchvision downloads them when online).

Split: 55,000 train / 5,000 validation drawn from the official training set with a
fixed seed; the official 10,000-image test set is kept apart for final evaluation.
"""

from __future__ import annotations

import gzip
import os
import re
import shutil
import struct
import zlib
from pathlib import Path

import torch

from objectives.data import Dataset, DatasetRecord, Split, check_trainable, seeded_permutation
from objectives.errors import DataError

SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")  # Debian's dataset-fashion-mnist
DOWNLOAD_DIR = Path.home() / ".cache" / "hpsearch" / "fashion-mnist"
CLASS_NAMES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
INPUT_DESCRIPTION = "784 float32 pixel values 0..255 per image (28x28, row-major), unscaled"
FILES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}
VALIDATION_FRACTION = 1 / 12  # 5,000 of the official 60,000 training images
SPLIT_SEED = 20_170_828  # Fashion-MNIST's release date: any fixed value works.
IDX_UBYTE = 0x08
IMAGE_SHAPE = (28, 28)


def read_idx(path: Path, expected_ndim: int) -> torch.Tensor:
    """Parse one gzipped IDX file of unsigned bytes into a uint8 tensor."""
    try:
        with gzip.open(path, "rb") as handle:
            raw = handle.read()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except (OSError, EOFError, zlib.error) as error:
        raise DataError(f"{path}: corrupt gzip data ({error}); download the file again") from None
    if len(raw) < 4:
        raise DataError(f"{path}: corrupt IDX file (only {len(raw)} bytes); download it again")
    zero, zero2, dtype, ndim = raw[0], raw[1], raw[2], raw[3]
    if zero or zero2 or dtype != IDX_UBYTE or ndim != expected_ndim:
        raise DataError(
            f"{path}: not an IDX file of {expected_ndim}-d unsigned bytes "
            f"(header {raw[:4].hex()}); download it again"
        )
    header_end = 4 + 4 * ndim
    if len(raw) < header_end:
        raise DataError(f"{path}: corrupt IDX file (header cut off after {len(raw)} bytes); download it again")
    shape = struct.unpack(f">{ndim}I", raw[4:header_end])
    expected = 1
    for size in shape:
        expected *= size
    if len(raw) - header_end != expected:
        raise DataError(
            f"{path}: corrupt IDX file, header says {shape} = {expected} bytes but it holds "
            f"{len(raw) - header_end}; download it again"
        )
    if expected == 0:
        return torch.empty(shape, dtype=torch.uint8)
    return torch.frombuffer(bytearray(raw[header_end:]), dtype=torch.uint8).reshape(shape)


def read_images(path: Path) -> torch.Tensor:
    images = read_idx(path, 3)
    if tuple(images.shape[1:]) != IMAGE_SHAPE:
        raise DataError(f"{path}: images are {images.shape[1]}x{images.shape[2]}, Fashion-MNIST's are "
                        f"{IMAGE_SHAPE[0]}x{IMAGE_SHAPE[1]}; this is another data set")
    return images.flatten(1)


def read_labels(path: Path) -> torch.Tensor:
    labels = read_idx(path, 1).long()
    if len(labels) and labels.max() >= len(CLASS_NAMES):
        raise DataError(f"{path}: label {int(labels.max())} is outside 0..{len(CLASS_NAMES) - 1}; "
                        f"this is another data set")
    return labels


def find_files(data_dir: Path | None) -> dict[str, Path]:
    """Locate the IDX files: in ``data_dir`` (or its torchvision layout), else the system copy.

    A directory holding some of the four files but not all is an error naming the missing."""
    candidates = []
    if data_dir is not None:
        candidates += [data_dir, data_dir / "FashionMNIST" / "raw"]
    else:
        candidates += [SYSTEM_DIR, DOWNLOAD_DIR / "FashionMNIST" / "raw"]
    for directory in candidates:
        present = [name for name in FILES.values() if (directory / name).is_file()]
        if len(present) == len(FILES):
            return {key: directory / name for key, name in FILES.items()}
        if present:
            missing = [name for name in FILES.values() if name not in present]
            raise DataError(f"{directory / missing[0]}: file not found ({len(present)} of the 4 Fashion-MNIST "
                            f"files are there; missing {', '.join(missing)}); add it or pass another --data-dir")
    return {}


def download(data_dir: Path) -> dict[str, Path]:
    """Fetch the files with torchvision into ``data_dir``/FashionMNIST/raw; a failed
    download leaves nothing behind."""
    from torchvision.datasets import FashionMNIST

    made = data_dir / "FashionMNIST"
    existed = made.exists()
    try:
        FashionMNIST(str(data_dir), train=True, download=True)
        FashionMNIST(str(data_dir), train=False, download=True)
    except Exception as error:  # torchvision raises plain RuntimeError/URLError offline
        if not existed:
            shutil.rmtree(made, ignore_errors=True)
        # torchvision's message spans lines and quotes each mirror; its last line is the cause.
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        reason = re.sub(r"^<urlopen error (.*)>$", r"\1", lines[-1]) if lines else type(error).__name__
        raise DataError(
            f"no Fashion-MNIST files in {data_dir}, and downloading them failed ({reason}); "
            f"put the four IDX .gz files ({', '.join(FILES.values())}) there, or pass --data-dir"
        ) from None
    return find_files(data_dir)


def load(data_dir: str | os.PathLike[str] | None, allow_download: bool = True) -> Dataset:
    """Read (or, online, download) Fashion-MNIST and split it.

    ``data_dir`` None means: Debian's system copy if installed, else a download cache.
    """
    directory = Path(data_dir) if data_dir is not None else None
    if directory is not None and not directory.is_dir():
        raise DataError(
            f"data directory {directory} does not exist; create it (the files download there "
            f"when online) or pass --data-dir with {', '.join(FILES.values())}"
        )
    paths = find_files(directory)
    if not paths:
        if not allow_download:
            raise DataError(
                f"Fashion-MNIST IDX files not found in {directory or SYSTEM_DIR}; pass --data-dir DIR "
                f"holding {', '.join(FILES.values())} (or install dataset-fashion-mnist)"
            )
        target = directory or DOWNLOAD_DIR
        target.mkdir(parents=True, exist_ok=True)
        paths = download(target)
    train_images = read_images(paths["train_images"])
    train_labels = read_labels(paths["train_labels"])
    test_images = read_images(paths["test_images"])
    test_labels = read_labels(paths["test_labels"])
    for images, labels, kind in ((train_images, train_labels, "train"), (test_images, test_labels, "test")):
        if len(images) != len(labels):
            raise DataError(f"{paths[kind + '_images']}: {len(images)} images but {len(labels)} labels")

    order = seeded_permutation(len(train_labels), SPLIT_SEED)
    n_validation = round(len(order) * VALIDATION_FRACTION)
    train_idx, val_idx = order[n_validation:], order[:n_validation]
    train = Split(train_images[train_idx], train_labels[train_idx])
    pixels = train.features.float()
    return check_trainable(Dataset(
        name="fashion_mnist",
        train=train,
        validation=Split(train_images[val_idx], train_labels[val_idx]),
        test=Split(test_images, test_labels),
        class_names=CLASS_NAMES,
        input_mean=(pixels.mean().item(),),
        input_std=(max(pixels.std().item(), 1e-6),),
        image_shape=IMAGE_SHAPE,
    ), str(paths["train_images"].parent))


DATASET = DatasetRecord(
    name="fashion_mnist",
    load=lambda data_dir, options: load(data_dir),
    data_help="Fashion-MNIST's four IDX .gz files",
    class_names=CLASS_NAMES,
    input_description=INPUT_DESCRIPTION,
    n_inputs=IMAGE_SHAPE[0] * IMAGE_SHAPE[1],
    image_shape=IMAGE_SHAPE,
)
