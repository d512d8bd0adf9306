"""A device-resident training loop in the airbench style.

The whole split lives on the device as tensors; each epoch gathers the split once in
the order of an on-device permutation and a batch is a slice of that, and the uint8
pixels become floats only in the model's first layer, one batch at a time. No DataLoader
and no per-sample Python: one epoch is a short loop of ``slice -> forward -> backward ->
fused optimizer step`` (``kernels.FusedStep``: torch's kernel without ``step()``'s per-call
bookkeeping, which at batch 32 on a CPU costs a tenth of the step), the forward pass in
bfloat16 where the device is faster at it (``device.choose_precision``). Its state
(model, optimizer, RNGs, epoch) round-trips through ``state_dict`` so a checkpoint
resumes exactly where it stopped.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from objectives.data import Split
from objectives.training.augmentation import Augmenter
from objectives.training import kernels

EVAL_CHUNK = 16_384


class TrainingDiverged(RuntimeError):
    """The training loss became NaN or infinite."""


@dataclass(frozen=True)
class TrainingSettings:
    optimizer: str
    learning_rate: float
    weight_decay: float
    batch_size: int
    momentum: float = 0.9
    # Length of the cosine learning-rate decay; None keeps the rate constant.
    schedule_epochs: int | None = None
    # Epochs over which the rate rises linearly from ~0 (Adam's early steps on a fresh
    # model are the unstable ones, and a large rate needs them small).
    warmup_epochs: float = 0.0
    label_smoothing: float = 0.0
    # Training-time image augmentation (objectives.training.augmentation); tabular data has none.
    max_shift: int = 0
    flip: bool = False

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], schedule_epochs: int | None = None) -> TrainingSettings:
        """From a trial's params; keys a study from before them never sampled take the
        defaults (what those trials trained with)."""
        return cls(
            optimizer=str(values["optimizer"]),
            learning_rate=float(values["learning_rate"]),
            weight_decay=float(values["weight_decay"]),
            batch_size=int(values["batch_size"]),
            momentum=float(values.get("momentum", 0.9)),
            schedule_epochs=schedule_epochs,
            warmup_epochs=float(values.get("warmup_epochs", 0.0)),
            label_smoothing=float(values.get("label_smoothing", 0.0)),
            max_shift=int(values.get("max_shift", 0)),
            flip=bool(values.get("flip", False)),
        )

    def learning_rate_at(self, epoch: int, fraction: float = 0.0) -> float:
        """The rate of the step ``fraction`` (0..1) of the way through 0-based ``epoch``: cosine
        decay evaluated at the epoch's start, times a linear warm-up over the first
        ``warmup_epochs`` (per step). Without warm-up it is what trials always trained with,
        so a study from before it retrains identically."""
        rate = self.learning_rate
        if self.schedule_epochs:
            rate *= 0.5 * (1 + math.cos(math.pi * epoch / self.schedule_epochs))
        progress = epoch + fraction
        if progress < self.warmup_epochs:
            rate *= progress / self.warmup_epochs
        return rate


def make_optimizer(model: nn.Module, settings: TrainingSettings) -> torch.optim.Optimizer:
    # Fused kernels update every parameter in one pass: on a small MLP the per-parameter
    # Python loop of the default implementation costs as much as the matmuls.
    kind = kernels.NAMES.get(settings.optimizer)
    if kind is None:
        raise ValueError(f"unknown optimizer {settings.optimizer!r}; choose sgd, adam or adamw")
    common = {"lr": settings.learning_rate, "weight_decay": settings.weight_decay,
              "fused": kernels.fused(settings.optimizer)}
    if kind is torch.optim.SGD:
        return torch.optim.SGD(model.parameters(), momentum=settings.momentum,
                               nesterov=settings.momentum > 0, **common)
    return kind(model.parameters(), **common)


@torch.no_grad()
def predict(model: nn.Module, features: torch.Tensor, chunk: int = EVAL_CHUNK) -> torch.Tensor:
    """Class predictions for every row, in large chunks, in eval mode."""
    was_training = model.training
    model.eval()
    predictions = [model(features[start:start + chunk]).argmax(1)
                   for start in range(0, len(features), chunk)]
    model.train(was_training)
    return torch.cat(predictions)


def accuracy(model: nn.Module, split: Split) -> float:
    return share_correct(predict(model, split.features), split.labels)


def share_correct(predictions: torch.Tensor, labels: torch.Tensor) -> float:
    """Counted, then divided in double precision (a float32 mean differs in the 8th digit)."""
    return (predictions == labels).sum().item() / len(labels)


class Trainer:
    """Trains ``model`` on an on-device ``train`` split, one epoch per call. ``hyperparameters``:
    the dict the model was built from (``models.build_mlp``), kept to be saved with it."""

    def __init__(self, model: nn.Module, settings: TrainingSettings, train: Split,
                 device: torch.device, seed: int, image_shape: tuple[int, int] | None = None,
                 hyperparameters: dict[str, Any] | None = None, precision: torch.dtype = torch.float32) -> None:
        self.device = device
        # bfloat16: the forward pass under autocast (matmuls in bfloat16, with float32
        # accumulation); weights, gradients and the optimizer's state stay float32.
        self.precision = precision
        self.hyperparameters = hyperparameters
        self.settings = settings
        self.train = train.to(device)
        self.model = model.to(device)
        self.optimizer = make_optimizer(self.model, settings)
        self.optimizer_step = kernels.step_for(self.optimizer)
        self.seed = seed
        self.shuffle = torch.Generator(device=device).manual_seed(seed)
        # The split in this epoch's order, rewritten in place every epoch: a fresh
        # dataset-sized tensor per epoch would cost page faults on a CPU.
        self.shuffled_features = torch.empty_like(self.train.features)
        self.shuffled_labels = torch.empty_like(self.train.labels)
        self.augment: Augmenter | None = None
        if settings.max_shift or settings.flip:
            if image_shape is None:
                raise ValueError("shifts and flips need images; this data set has none")
            self.augment = Augmenter(image_shape, settings.max_shift, settings.flip, len(self.train),
                                     device, self.train.features.dtype)
        self.epochs_done = 0

    def run_epoch(self) -> float:
        """One pass over the training split; returns the mean training loss."""
        self.model.train()
        n = len(self.train)
        batch = self.settings.batch_size
        order = torch.randperm(n, device=self.device, generator=self.shuffle)
        # One gather per epoch; each batch is then a contiguous slice (a view), which
        # saves two gathers per step (kernel launches on a GPU, dispatch on a CPU).
        torch.index_select(self.train.features, 0, order, out=self.shuffled_features)
        torch.index_select(self.train.labels, 0, order, out=self.shuffled_labels)
        if self.augment is not None:
            self.augment(self.shuffled_features, self.shuffle)
        # A last batch of one sample would break BatchNorm and adds only noise: drop it.
        stop = n - 1 if n % batch == 1 else n
        steps = math.ceil(stop / batch)
        group = self.optimizer.param_groups[0]
        losses = []
        for step, (inputs, targets) in enumerate(zip(self.shuffled_features[:stop].split(batch),
                                                     self.shuffled_labels[:stop].split(batch))):
            # Derived from the step count, so a resumed trainer needs no scheduler state.
            group["lr"] = self.settings.learning_rate_at(self.epochs_done, (step + 1) / steps)
            # The model's Standardize layer turns uint8 pixels into floats in its first op.
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.precision == torch.bfloat16):
                loss = F.cross_entropy(self.model(inputs), targets, label_smoothing=self.settings.label_smoothing)
            # Gradients go straight to the optimizer: nothing to accumulate into or clear
            # from .grad, which at small batches is a measurable share of a step.
            self.optimizer_step(torch.autograd.grad(loss, self.optimizer_step.parameters))
            losses.append(loss.detach())
        self.epochs_done += 1
        # One host sync per epoch, not per step.
        mean_loss = torch.stack(losses).mean().item()
        if not math.isfinite(mean_loss):
            raise TrainingDiverged(f"training loss became {mean_loss} in epoch {self.epochs_done}")
        return mean_loss

    def state_dict(self) -> dict[str, Any]:
        state = {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "shuffle_rng": self.shuffle.get_state(),
            "cpu_rng": torch.get_rng_state(),
            "epochs_done": self.epochs_done,
        }
        if self.device.type == "cuda":
            state["cuda_rng"] = torch.cuda.get_rng_state(self.device)
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.optimizer_step.state_replaced()
        try:
            self.shuffle.set_state(state["shuffle_rng"])
        except RuntimeError:
            # Saved on another kind of device (a CUDA generator's state is 16 bytes, a
            # CPU one's 5,056): the epochs to come get an order of their own, fixed by
            # the seed and the epoch, as a retry on another host would.
            self.shuffle.manual_seed(self.seed * 1_000_003 + int(state["epochs_done"]))
        torch.set_rng_state(state["cpu_rng"])
        if self.device.type == "cuda" and "cuda_rng" in state:
            torch.cuda.set_rng_state(state["cuda_rng"], self.device)
        self.epochs_done = int(state["epochs_done"])
