"""The MLP classifier and the hyperparameter dict that fully describes its architecture.

The dict is the contract between search, export and any later user: it holds only
JSON types (ints, floats, strings, lists, bools), and ``build_mlp(dict)`` always gives
the same architecture with the same parameter names. Input standardisation is part of
the model (as buffers), so an exported model takes raw features and needs no other code.
"""

from __future__ import annotations

import math
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


class Dropout(nn.Dropout):
    """``nn.Dropout`` (identity at inference) whose training mask is cheaper on a CPU.

    torch's CPU dropout draws one Bernoulli number per activation from a Mersenne Twister:
    on a 1024-wide MLP that was a third of a training step. Here each 32-bit draw gives the
    coin flips of four activations (one random byte each, dropped when below
    ``round(p * 256)``), so the rate is ``p`` to within 1/512; the kept ones are scaled by
    the inverse of that rate, as ``nn.Dropout`` scales by ``1 / (1 - p)``. On a GPU,
    torch's fused kernel is faster and is used as it is."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0 or x.device.type != "cpu":
            return super().forward(x)
        cut = min(round(self.p * 256), 255)
        words = torch.empty((x.numel() + 3) // 4, dtype=torch.int32).random_(-2**31, 2**31)
        keep = words.view(torch.uint8)[:x.numel()].view(x.shape) >= cut
        return x * (keep * (256 / (256 - cut))).to(x.dtype)


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
                layers.append(Dropout(dropout))
            width = size
        layers.append(nn.Linear(width, n_classes))
        super().__init__(*layers)


def describe_layout(model: MLPClassifier) -> list[str]:
    """The layers in plain words, one per ``state_dict`` index: enough to rebuild the model
    with any framework from an exported file, without this package."""
    described = []
    for index, layer in enumerate(model):
        if isinstance(layer, Standardize):
            text = (f"Standardize: y = (x - mean) * inv_std, buffers mean and inv_std of {layer.mean.numel()} "
                    f"value(s) (one, or one per input); takes raw features (pixels 0-255, table columns)")
        elif isinstance(layer, nn.Linear):
            text = (f"Linear {layer.in_features} -> {layer.out_features}, "
                    + ("weight and bias" if layer.bias is not None else "weight only (batch norm follows)"))
        elif isinstance(layer, nn.BatchNorm1d):
            text = (f"BatchNorm1d {layer.num_features}, eps {layer.eps}: weight, bias, running_mean, running_var "
                    f"(num_batches_tracked unused at inference)")
        elif isinstance(layer, nn.Dropout):
            text = f"Dropout p={layer.p}: identity at inference, no parameters"
        else:
            text = f"{type(layer).__name__} activation, no parameters"
        described.append(f"{index}: {text}")
    described.append(f"output: {model[-1].out_features} logits (argmax = class index)")
    return described


def _count(value: Any, name: str, least: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise ValueError(f"{name} must be a whole number of at least {least}, not {value!r}")
    return value


def _statistics(value: Any, name: str, n_inputs: int, positive: bool) -> list[float]:
    if not isinstance(value, (list, tuple)) or len(value) not in (1, n_inputs) or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value):
        raise ValueError(f"{name} must be a list of 1 or {n_inputs} finite numbers")
    if positive and min(value) <= 0:
        raise ValueError(f"{name} must be positive")
    return [float(v) for v in value]


def build_mlp(hyperparameters: Mapping[str, Any]) -> MLPClassifier:
    """Build the classifier described by ``hyperparameters`` (training-only keys are ignored).

    Every entry is checked, so a damaged dict is a ValueError naming the entry."""
    if not isinstance(hyperparameters, Mapping):
        raise ValueError(f"model hyperparameters must be a dict, not {type(hyperparameters).__name__}")
    missing = [key for key in REQUIRED_KEYS if key not in hyperparameters]
    if missing:
        raise ValueError(f"model hyperparameters lack {', '.join(missing)}")
    n_inputs = _count(hyperparameters["n_inputs"], "n_inputs", 1)
    hidden = hyperparameters["hidden_sizes"]
    if not isinstance(hidden, (list, tuple)):
        raise ValueError(f"hidden_sizes must be a list of layer widths, not {hidden!r}")
    dropout = hyperparameters.get("dropout", 0.0)
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
        raise ValueError(f"dropout must be a number in [0, 1), not {dropout!r}")
    batch_norm = hyperparameters.get("batch_norm", False)
    if not isinstance(batch_norm, bool):
        raise ValueError(f"batch_norm must be true or false, not {batch_norm!r}")
    return MLPClassifier(
        n_inputs=n_inputs,
        hidden_sizes=[_count(size, "hidden_sizes entries", 1) for size in hidden],
        n_classes=_count(hyperparameters["n_classes"], "n_classes", 2),
        activation=str(hyperparameters.get("activation", "relu")),
        dropout=float(dropout),
        batch_norm=batch_norm,
        input_mean=_statistics(hyperparameters.get("input_mean", [0.0]), "input_mean", n_inputs, False),
        input_std=_statistics(hyperparameters.get("input_std", [1.0]), "input_std", n_inputs, True),
    )
