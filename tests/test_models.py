"""The MLP built from its hyperparameter dict, and safe loading of exported files."""

from __future__ import annotations

import builtins
import json
import os
import re
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from models import ExportedModelError, MLPClassifier, build_mlp, load_exported, read_exported
from models.mlp import Dropout

BASE: dict[str, Any] = {
    "n_inputs": 54,
    "hidden_sizes": [64, 32],
    "n_classes": 7,
    "activation": "gelu",
    "dropout": 0.0,
    "batch_norm": False,
    "input_mean": [float(i) for i in range(54)],
    "input_std": [1.0 + i / 10 for i in range(54)],
    "optimizer": "adam",  # training-only keys are ignored by build_mlp
    "learning_rate": 0.003,
}


def variant(**changes: Any) -> dict[str, Any]:
    return {**BASE, **changes}


def shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {key: tuple(value.shape) for key, value in model.state_dict().items()}


@pytest.mark.parametrize(
    "hyperparameters",
    [
        BASE,
        variant(batch_norm=True),
        variant(dropout=0.3),
        variant(batch_norm=True, dropout=0.25, activation="silu", hidden_sizes=[16, 16, 16]),
        variant(hidden_sizes=[]),
    ],
    ids=["plain", "batch-norm", "dropout", "bn-dropout-silu-3", "linear"],
)
def test_json_round_trip_same_architecture(hyperparameters: dict[str, Any]) -> None:
    decoded = json.loads(json.dumps(hyperparameters))
    original, rebuilt = build_mlp(hyperparameters), build_mlp(decoded)
    assert isinstance(rebuilt, MLPClassifier)
    assert shapes(original) == shapes(rebuilt)
    assert list(original.state_dict()) == list(rebuilt.state_dict())
    assert [type(m) for m in original] == [type(m) for m in rebuilt]
    # The weights of one load into the other without any key/shape complaints.
    rebuilt.load_state_dict(original.state_dict(), strict=True)
    x = torch.randn(5, 54)
    assert torch.equal(original.eval()(x), rebuilt.eval()(x))


def test_layer_structure_variants() -> None:
    plain = build_mlp(variant(hidden_sizes=[8]))
    assert [type(m) for m in plain][1:] == [nn.Linear, nn.GELU, nn.Linear]
    assert plain[1].bias is not None

    bn = build_mlp(variant(hidden_sizes=[8], batch_norm=True, dropout=0.5, activation="relu"))
    assert [type(m) for m in bn][1:] == [nn.Linear, nn.BatchNorm1d, nn.ReLU, Dropout, nn.Linear]
    assert isinstance(bn[4], nn.Dropout)  # what torch.export and a reader of the layout know
    assert bn[1].bias is None  # cancelled by BatchNorm
    assert bn[4].p == 0.5
    assert "2.running_mean" in bn.state_dict()
    assert bn[-1].out_features == 7 and bn[1].in_features == 54


def test_dropout_active_only_in_training() -> None:
    model = build_mlp(variant(hidden_sizes=[256], dropout=0.5))
    x = torch.randn(4, 54)
    model.train()
    torch.manual_seed(0)
    a = model(x)
    b = model(x)
    assert not torch.equal(a, b)
    model.eval()
    assert torch.equal(model(x), model(x))


@pytest.mark.parametrize("p", [0.05, 0.3, 0.5, 0.9])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_dropout_drops_at_its_rate_and_keeps_the_expectation(p: float, dtype: torch.dtype) -> None:
    # Four coin flips per 32-bit draw: the rate must still be p (within 1/512), the flips of
    # one word independent, the kept values scaled so the mean is unchanged, and the
    # gradient masked exactly as the output.
    torch.manual_seed(1)
    layer = Dropout(p).train()
    x = torch.ones(1000, 1001, dtype=dtype, requires_grad=True)
    y = layer(x)
    assert y.dtype == dtype
    dropped = y == 0
    assert abs(dropped.float().mean().item() - p) < 1 / 512 + 0.004
    quads = dropped.flatten()[:1_000_000].view(-1, 4).float()
    assert abs((quads[:, 0] * quads[:, 3]).mean().item() - p * p) < 0.01  # bytes of a word: independent
    assert abs(y.float().mean().item() - 1) < 0.01
    y.sum().backward()
    assert torch.equal(x.grad == 0, dropped)
    assert torch.equal(layer.eval()(x), x)


def test_unknown_activation() -> None:
    with pytest.raises(ValueError, match="tanh"):
        build_mlp(variant(activation="tanh"))


@pytest.mark.parametrize("missing", ["n_inputs", "hidden_sizes", "n_classes"])
def test_missing_keys(missing: str) -> None:
    hyperparameters = dict(BASE)
    del hyperparameters[missing]
    with pytest.raises(ValueError, match=missing):
        build_mlp(hyperparameters)


def test_standardize_layer_scales_raw_inputs() -> None:
    model = build_mlp(variant(hidden_sizes=[4]))
    x = torch.randn(6, 54) * 10 + 3
    mean = torch.tensor(BASE["input_mean"])
    std = torch.tensor(BASE["input_std"])
    torch.testing.assert_close(model[0](x), (x - mean) / std)
    # Its statistics are buffers: saved with the weights, never trained.
    state = model.state_dict()
    assert torch.equal(state["0.mean"], mean)
    assert not any(name.startswith("0.") for name, _ in model.named_parameters())

    scalar = build_mlp({"n_inputs": 3, "hidden_sizes": [], "n_classes": 2,
                        "input_mean": [100.0], "input_std": [50.0]})
    raw = torch.tensor([[100.0, 150.0, 0.0]])
    torch.testing.assert_close(scalar[0](raw), torch.tensor([[0.0, 1.0, -2.0]]))
    # uint8 pixels are promoted by the layer itself, exactly as if converted first.
    pixels = torch.tensor([[100, 150, 0]], dtype=torch.uint8)
    assert scalar[0](pixels).dtype == torch.float32
    assert torch.equal(scalar[0](pixels), scalar[0](pixels.float()))


# --- exported files -------------------------------------------------------------------------


def export_file(path: Path, model: nn.Module, hyperparameters: dict[str, Any]) -> None:
    torch.save(
        {
            "model_state_dict": model.state_dict(),
            "model_hyperparameters": hyperparameters,
            "metadata": {"objective": "covtype", "value": 0.9, "class_names": ["a", "b"]},
        },
        path,
    )


def test_load_exported_identical_outputs(tmp_path: Path) -> None:
    hyperparameters = variant(batch_norm=True, dropout=0.2)
    model = build_mlp(hyperparameters)
    # Train a step so BatchNorm running statistics differ from a fresh model's.
    model.train()
    model(torch.randn(32, 54) * 5).sum().backward()
    model.eval()
    path = tmp_path / "best.pt"
    export_file(path, model, hyperparameters)

    payload = read_exported(path)
    assert payload["model_hyperparameters"] == hyperparameters
    assert payload["metadata"]["objective"] == "covtype"

    loaded = load_exported(path)
    assert not loaded.training
    assert all(not module.training for module in loaded.modules())
    x = torch.randn(17, 54) * 20
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


class RunsCommand:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.marker}",))


class RunsCode:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (builtins.exec, (f"open({str(self.marker)!r}, 'w').close()",))


@pytest.mark.parametrize("payload_class", [RunsCommand, RunsCode])
@pytest.mark.parametrize("where", ["top-level", "nested"])
@pytest.mark.parametrize("reader", [read_exported, load_exported])
def test_pickled_callable_refused(tmp_path: Path, payload_class: type, where: str, reader: Any) -> None:
    marker = tmp_path / "MARKER"
    evil = payload_class(marker)
    good = build_mlp(variant())
    if where == "top-level":
        content: Any = evil
    else:
        content = {"model_state_dict": good.state_dict(), "model_hyperparameters": BASE,
                   "metadata": {"note": evil}}
    path = tmp_path / "evil.pt"
    torch.save(content, path)
    assert not marker.exists()
    with pytest.raises(ExportedModelError, match="refused") as error:
        reader(path)
    assert str(path) in str(error.value)
    assert not marker.exists(), "the pickled callable ran"


def test_custom_class_refused(tmp_path: Path) -> None:
    path = tmp_path / "module.pt"
    torch.save({"model_state_dict": build_mlp(variant()), "model_hyperparameters": BASE,
                "metadata": {}}, path)  # a whole pickled module, not a state dict
    with pytest.raises(ExportedModelError, match="refused"):
        read_exported(path)


@pytest.mark.parametrize(
    "content",
    [
        [1, 2, 3],
        torch.zeros(3),
        {"model_state_dict": {}, "model_hyperparameters": {}},
        {"model_hyperparameters": BASE, "metadata": {}},
        {"model_state_dict": {}, "metadata": {}},
    ],
    ids=["list", "tensor", "no-metadata", "no-state", "no-hyperparameters"],
)
def test_not_an_export(tmp_path: Path, content: Any) -> None:
    path = tmp_path / "other.pt"
    torch.save(content, path)
    with pytest.raises(ExportedModelError, match="not an exported model") as error:
        load_exported(path)
    assert str(path) in str(error.value)


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.pt"
    with pytest.raises(ExportedModelError, match="no such file"):
        load_exported(path)
    with pytest.raises(ExportedModelError, match="no such file"):
        read_exported(str(path))


@pytest.mark.parametrize("kind", ["empty", "truncated-zip", "text"])
def test_garbage_file(tmp_path: Path, kind: str) -> None:
    """Any unreadable file is an ExportedModelError naming it, never a raw unpickler exception."""
    path = tmp_path / "garbage.pt"
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated-zip":
        export_file(path, build_mlp(variant()), BASE)
        path.write_bytes(path.read_bytes()[:200])
    else:
        path.write_bytes(b"this is not a torch file at all" * 10)
    with pytest.raises(ExportedModelError, match=re.escape(str(path))):
        load_exported(path)
