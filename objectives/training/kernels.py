"""``optimizer.step()`` without its per-call bookkeeping, for small models on a CPU: the
one module that touches torch's private optimizer kernels.

``torch.optim.Optimizer.step`` rebuilds its lists of parameters, gradients and state
tensors on every call, wraps itself in profiling hooks and grad-mode switches, and then
groups the tensors by device before it reaches the fused kernel. On a small MLP that
costs about 100 us a step, as long as the fused update itself and about a tenth of a
whole batch-32 step on a 2-core CPU. ``FusedStep`` builds the lists once and calls the
fused kernel (``torch._fused_sgd_``, ``_fused_adam_``, ``_fused_adamw_``) exactly as
``torch.optim`` does for a single-device, single-dtype group. The optimizer keeps owning
its state tensors, which the kernel updates in place, so ``optimizer.state_dict()``
always sees the latest state. The kernels are torch internals: tests/test_optimizer_step.py
checks every update is bit-identical to ``step()``, so a torch release that changes
them fails there rather than training differently. A torch without them trains with an
unfused optimizer and ``PublicStep`` (``step_for`` chooses): ``optimizer.step()``, the
public API, slower on a CPU.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch


Gradients = Sequence[torch.Tensor]
# torch's kernel for each optimizer, by name (AdamW first: recent torch makes it a subclass of Adam).
KERNELS = ((torch.optim.AdamW, "_fused_adamw_"), (torch.optim.Adam, "_fused_adam_"), (torch.optim.SGD, "_fused_sgd_"))
NAMES = {"adamw": torch.optim.AdamW, "adam": torch.optim.Adam, "sgd": torch.optim.SGD}


def fused(optimizer: str) -> bool:
    """Whether this torch has the fused kernel of ``optimizer`` ("sgd", "adam", "adamw")
    that ``FusedStep`` calls (Adam's also uses ``_foreach_add_`` for its step counts)."""
    name = next(name for kind, name in KERNELS if issubclass(NAMES[optimizer], kind))
    return hasattr(torch, name) and hasattr(torch, "_foreach_add_")


def step_for(optimizer: torch.optim.Optimizer) -> FusedStep | PublicStep:
    """How the trainer applies gradients: ``FusedStep`` for a fused optimizer, else ``step()``."""
    return FusedStep(optimizer) if optimizer.param_groups[0].get("fused") else PublicStep(optimizer)


class PublicStep:
    """``optimizer.step()`` with gradients passed in, as ``FusedStep`` takes them."""

    def __init__(self, optimizer: torch.optim.Optimizer) -> None:
        self.optimizer = optimizer
        self.parameters: list[torch.Tensor] = [p for group in optimizer.param_groups for p in group["params"]]

    def __call__(self, gradients: Gradients) -> None:
        for parameter, gradient in zip(self.parameters, gradients, strict=True):
            parameter.grad = gradient
        self.optimizer.step()
        for parameter in self.parameters:
            parameter.grad = None

    def state_replaced(self) -> None:
        """Nothing to rebind: ``step()`` reads the optimizer's state each time."""


class FusedStep:
    """Callable that applies one step of ``optimizer`` (fused SGD, Adam or AdamW) with
    gradients passed in, in the order of the optimizer's parameters, as returned by
    ``torch.autograd.grad``: they never need to be stored in or cleared from ``.grad``."""

    def __init__(self, optimizer: torch.optim.Optimizer) -> None:
        group = optimizer.param_groups[0]
        supported = isinstance(optimizer, torch.optim.SGD | torch.optim.Adam | torch.optim.AdamW)
        if (not supported or len(optimizer.param_groups) != 1 or not group.get("fused")
                or group.get("amsgrad")):
            raise ValueError("FusedStep needs fused SGD, Adam or AdamW (no amsgrad) with one parameter group")
        self.optimizer = optimizer
        # The order the gradients must come in: pass these to torch.autograd.grad.
        self.parameters: list[torch.Tensor] = list(group["params"])
        self._update: Callable[[Gradients], None] | None = None

    def __call__(self, gradients: Gradients) -> None:
        if self._update is None:
            # The first step is torch's own: it creates the state tensors we then bind to.
            for parameter, gradient in zip(self.parameters, gradients, strict=True):
                parameter.grad = gradient
            self.optimizer.step()
            for parameter in self.parameters:
                parameter.grad = None
            self._update = self._bind()
        else:
            self._update(gradients)

    def state_replaced(self) -> None:
        """Call after ``optimizer.load_state_dict``: it swaps in new state tensors."""
        self._update = None

    def _bind(self) -> Callable[[Gradients], None]:
        optimizer = self.optimizer
        fused = next(getattr(torch, name) for kind, name in KERNELS if isinstance(optimizer, kind))
        group = optimizer.param_groups[0]
        # Detached aliases share storage with the parameters; updating them in place needs
        # no grad-mode switch.
        params = [p.detach() for p in self.parameters]
        # .get: indexing the defaultdict would add empty entries to the state_dict.
        states = [optimizer.state.get(p, {}) for p in self.parameters]

        if isinstance(optimizer, torch.optim.SGD):
            # Plain SGD (momentum 0) keeps no buffers and its kernel takes none.
            buffers = [state["momentum_buffer"] for state in states] if group["momentum"] else []

            def update_sgd(gradients: Gradients) -> None:
                fused(params, gradients, buffers, lr=group["lr"],
                                  weight_decay=group["weight_decay"], momentum=group["momentum"],
                                  dampening=group["dampening"], nesterov=group["nesterov"],
                                  maximize=group["maximize"], is_first_step=False)
            return update_sgd

        exp_avgs = [state["exp_avg"] for state in states]
        exp_avg_sqs = [state["exp_avg_sq"] for state in states]
        steps = [state["step"] for state in states]

        def update_adam(gradients: Gradients) -> None:
            beta1, beta2 = group["betas"]
            torch._foreach_add_(steps, 1)  # the kernel reads the step count for bias correction
            fused(params, gradients, exp_avgs, exp_avg_sqs, [], steps, lr=group["lr"],
                   beta1=beta1, beta2=beta2, weight_decay=group["weight_decay"], eps=group["eps"],
                   amsgrad=False, maximize=group["maximize"])
        return update_adam
