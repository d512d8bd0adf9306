"""FusedStep makes exactly the updates of ``optimizer.step()``, including after a resume."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from objectives.training import kernels
from objectives.training.kernels import FusedStep
from objectives.training.trainer import TrainingSettings, make_optimizer

SETTINGS = {
    "sgd": TrainingSettings("sgd", 0.05, 1e-3, 16),
    "sgd-without-momentum": TrainingSettings("sgd", 0.05, 1e-3, 16, momentum=0.0),
    "adam": TrainingSettings("adam", 3e-3, 1e-4, 16),
    "adamw": TrainingSettings("adamw", 3e-3, 1e-2, 16),
}


def small_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 3))


def gradients(model: nn.Module, step: int) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(step)
    return [torch.randn(parameter.shape, generator=generator) for parameter in model.parameters()]


def reference_step(model: nn.Module, optimizer: torch.optim.Optimizer, step: int) -> None:
    for parameter, gradient in zip(model.parameters(), gradients(model, step)):
        parameter.grad = gradient
    optimizer.step()


def assert_same(model_a: nn.Module, model_b: nn.Module, optimizer_a: torch.optim.Optimizer,
                optimizer_b: torch.optim.Optimizer) -> None:
    for a, b in zip(model_a.parameters(), model_b.parameters(), strict=True):
        assert torch.equal(a, b)
    state_a, state_b = optimizer_a.state_dict()["state"], optimizer_b.state_dict()["state"]
    assert state_a.keys() == state_b.keys()
    for index, entries in state_a.items():
        for key, value in entries.items():
            assert torch.equal(value, state_b[index][key]), (index, key)


@pytest.mark.parametrize("name", sorted(SETTINGS))
def test_same_updates_as_optimizer_step(name: str) -> None:
    reference_model, fast_model = small_model(), small_model()
    reference = make_optimizer(reference_model, SETTINGS[name])
    fast_optimizer = make_optimizer(fast_model, SETTINGS[name])
    fast_step = FusedStep(fast_optimizer)
    for step in range(6):
        if step == 3:  # the trainer changes the rate between epochs; it must take effect
            for optimizer in (reference, fast_optimizer):
                optimizer.param_groups[0]["lr"] *= 0.5
        reference_step(reference_model, reference, step)
        fast_step(gradients(fast_model, step))
    assert_same(reference_model, fast_model, reference, fast_optimizer)
    # Gradients are passed, never left behind in .grad.
    assert all(parameter.grad is None for parameter in fast_model.parameters())
    assert not torch.equal(reference_model[0].weight, small_model()[0].weight)


@pytest.mark.parametrize("name", sorted(SETTINGS))
def test_loaded_state_is_used_after_state_replaced(name: str) -> None:
    reference_model = small_model()
    reference = make_optimizer(reference_model, SETTINGS[name])
    for step in range(2):
        reference_step(reference_model, reference, step)
    saved_model, saved_optimizer = copy.deepcopy(reference_model.state_dict()), copy.deepcopy(reference.state_dict())
    for step in range(2, 4):
        reference_step(reference_model, reference, step)

    # A FusedStep already bound to other state, then loaded from the checkpoint.
    model = small_model()
    optimizer = make_optimizer(model, SETTINGS[name])
    fast_step = FusedStep(optimizer)
    for step in range(3):
        fast_step(gradients(model, 100 + step))
    model.load_state_dict(saved_model)
    optimizer.load_state_dict(saved_optimizer)
    fast_step.state_replaced()
    for step in range(2, 4):
        fast_step(gradients(model, step))
    assert_same(reference_model, model, reference, optimizer)


@pytest.mark.parametrize("make", [
    lambda params: torch.optim.SGD(params, lr=0.1, momentum=0.9),
    lambda params: torch.optim.Adam(params, fused=True, amsgrad=True),
    lambda params: torch.optim.RMSprop(params),
], ids=["not-fused", "amsgrad", "rmsprop"])
def test_unsupported_optimizers_are_refused(make) -> None:
    with pytest.raises(ValueError, match="FusedStep needs"):
        FusedStep(make(small_model().parameters()))


@pytest.mark.parametrize("name", sorted(SETTINGS))
def test_without_torchs_private_kernels_it_takes_the_public_step(name: str, monkeypatch) -> None:
    """A torch without the fused kernels: an unfused optimizer, stepped by ``step()``, with
    gradients passed in as the trainer passes them."""
    for _, kernel in kernels.KERNELS:
        monkeypatch.delattr(torch, kernel, raising=False)
    reference_model, fast_model = small_model(), small_model()
    reference = make_optimizer(reference_model, SETTINGS[name])
    fast_optimizer = make_optimizer(fast_model, SETTINGS[name])
    assert not fast_optimizer.param_groups[0]["fused"]
    fast_step = kernels.step_for(fast_optimizer)
    assert isinstance(fast_step, kernels.PublicStep)
    for step in range(4):
        reference_step(reference_model, reference, step)
        fast_step(gradients(fast_model, step))
    assert_same(reference_model, fast_model, reference, fast_optimizer)
    assert all(parameter.grad is None for parameter in fast_model.parameters())
