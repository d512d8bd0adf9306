"""The MLP classifier and the hyperparameter dict that fully describes its architecture.

The dict is the contract between search, export and any later user: it holds only
JSON types (ints, floats, strings, lists, bools), and ``build_mlp(dict)`` always gives
the same architecture with the same parameter names. Input standardisation is part of
the model (as buffers), so an exported model takes raw features and needs no other code.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU}

REQUIRED_KEYS = ("n_inputs", "hidden_sizes", "n_classes")


class Standardize(nn.Module):
    """``(x - mean) / std`` with per-feature (or scalar) statistics kept as buffers.

    Integer input (uint8 pixels) is promoted to float by the subtraction itself, so a
    caller can pass raw pixels without a separate conversion.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32))
        self.register_buffer("inv_std", 1.0 / torch.tensor(list(std), dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) * self.inv_std


class MLPClassifier(nn.Sequential):
    """Standardize -> [Linear -> (BatchNorm) -> activation -> (Dropout)] * k -> Linear."""

    def __init__(
        self,
        n_inputs: int,
        hidden_sizes: Sequence[int],
        n_classes: int,
        activation: str = "relu",
        dropout: float = 0.0,
        batch_norm: bool = False,
        input_mean: Sequence[float] = (0.0,),
        input_std: Sequence[float] = (1.0,),
    ) -> None:
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; choose one of {sorted(ACTIVATIONS)}")
        layers: list[nn.Module] = [Standardize(input_mean, input_std)]
        width = n_inputs
        for size in hidden_sizes:
            # A bias before BatchNorm is cancelled by its mean subtraction.
            layers.append(nn.Linear(width, size, bias=not batch_norm))
            if batch_norm:
                layers.append(nn.BatchNorm1d(size))
            layers.append(ACTIVATIONS[activation]())
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = size
        layers.append(nn.Linear(width, n_classes))
        super().__init__(*layers)


def build_mlp(hyperparameters: Mapping[str, Any]) -> MLPClassifier:
    """Build the classifier described by ``hyperparameters`` (training-only keys are ignored)."""
    missing = [key for key in REQUIRED_KEYS if key not in hyperparameters]
    if missing:
        raise ValueError(f"model hyperparameters lack {', '.join(missing)}")
    return MLPClassifier(
        n_inputs=int(hyperparameters["n_inputs"]),
        hidden_sizes=[int(size) for size in hyperparameters["hidden_sizes"]],
        n_classes=int(hyperparameters["n_classes"]),
        activation=str(hyperparameters.get("activation", "relu")),
        dropout=float(hyperparameters.get("dropout", 0.0)),
        batch_norm=bool(hyperparameters.get("batch_norm", False)),
        input_mean=hyperparameters.get("input_mean", (0.0,)),
        input_std=hyperparameters.get("input_std", (1.0,)),
    )
