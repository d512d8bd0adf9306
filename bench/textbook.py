"""The textbook Fashion-MNIST recipe the benchmarks compare against, written once.

torchvision's ``FashionMNIST`` with ``transforms.v2`` (``ToImage``, ``ToDtype`` scaled to
[0, 1]), a ``DataLoader``, a plain ``nn.Sequential`` MLP of ReLU layers and SGD, the loop
every tutorial shows: ``zero_grad -> forward -> backward -> step`` per batch.
``bench/epoch_speed.py`` times its epochs; ``bench/search_efficiency.py`` runs a whole
Optuna search with it.
"""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import torch
from torch import nn

from objectives.datasets import fashion_mnist


def extract_for_torchvision(data_dir: Path, into: Path) -> Path:
    """Unzip the IDX files into torchvision's ``FashionMNIST/raw`` layout under ``into``
    (torchvision reads them there without downloading)."""
    raw = into / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for name in fashion_mnist.FILES.values():
        with gzip.open(data_dir / name, "rb") as source, open(raw / name[:-3], "wb") as target:
            shutil.copyfileobj(source, target)
    return into


def training_images(root: Path) -> torch.utils.data.Dataset:
    """The 60,000 official training images as torchvision serves them: float [1, 28, 28] in [0, 1]."""
    from torchvision import datasets
    from torchvision.transforms import v2

    transform = v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=True)])
    return datasets.FashionMNIST(str(root), train=True, download=False, transform=transform)


def mlp(hidden: list[int]) -> nn.Sequential:
    """784 -> hidden... -> 10, ReLU between."""
    layers: list[nn.Module] = [nn.Flatten()]
    width = 784
    for size in hidden:
        layers += [nn.Linear(width, size), nn.ReLU()]
        width = size
    return nn.Sequential(*layers, nn.Linear(width, 10))


def train_epoch(model: nn.Module, loader: torch.utils.data.DataLoader, optimizer: torch.optim.Optimizer,
                device: torch.device) -> None:
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    for images, labels in loader:
        images, labels = images.to(device), labels.to(device)
        optimizer.zero_grad()
        loss = loss_fn(model(images), labels)
        loss.backward()
        optimizer.step()


@torch.no_grad()
def evaluate(model: nn.Module, loader: torch.utils.data.DataLoader, device: torch.device) -> float:
    model.eval()
    correct = total = 0
    for images, labels in loader:
        predictions = model(images.to(device)).argmax(1)
        correct += (predictions == labels.to(device)).sum().item()
        total += len(labels)
    return correct / total
