"""Where training runs: the one function that turns ``--device`` into a torch device, and
the one that turns ``--precision`` into what a training step multiplies in. Importing it
loads no torch (the command line lists the choices without it)."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from objectives.errors import DeviceError

if TYPE_CHECKING:
    import torch


def choose_device(requested: str = "auto", index: int = 0) -> torch.device:
    """``auto``: a GPU when there is one (``index`` mod the visible GPUs, so worker k of a
    host takes GPU k), else the CPU; ``cuda``: the same GPU, which must exist; ``cuda:N``;
    ``cpu``. A device this machine cannot use is refused (call it with the request alone
    to check one before anything is opened or written)."""
    import torch

    visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if requested == "cpu" or (requested == "auto" and not visible):
        return torch.device("cpu")
    kind, colon, number = requested.partition(":")
    if kind not in ("auto", "cuda") or (kind == "auto" and colon):
        raise DeviceError(f"unknown --device {requested!r}; use auto, cpu, cuda or cuda:N")
    if not visible:
        shown = os.environ.get("CUDA_VISIBLE_DEVICES")
        where = f" (CUDA_VISIBLE_DEVICES={shown!r})" if shown is not None else ""
        raise DeviceError(f"--device {requested}: no CUDA GPU is visible here{where}; use --device cpu or auto")
    if colon:
        if not (number.isdigit() and int(number) < visible):
            raise DeviceError(f"--device {requested}: this machine has {visible} CUDA GPU{'' if visible == 1 else 's'}: "
                              f"cuda:0..cuda:{visible - 1}")
        return torch.device("cuda", int(number))
    return torch.device("cuda", index % visible)


# --precision: what the matmuls of a training step compute in. Weights, optimizer state and
# evaluation stay float32 whatever is chosen, so a model's validation accuracy is the
# accuracy of the weights that are saved and exported.
PRECISIONS = ("auto", "float32", "bfloat16")
_measured: dict[str, torch.dtype] = {}


def choose_precision(requested: str, device: torch.device) -> torch.dtype:
    """``float32``, ``bfloat16`` (autocast: matmuls in bfloat16, accumulated in float32),
    or ``auto``: bfloat16 where this device multiplies it faster than float32. A GPU with
    native bfloat16 (Ampere and later) does; a CPU does when it has AMX or AVX-512 BF16
    units, and then a 1024-wide MLP steps 2-3x faster. Which one a CPU has is measured,
    once per process, on a matrix product of a training step's size, rather than read from
    a list of CPU flags that torch's kernels may or may not use."""
    import torch

    if requested not in PRECISIONS:
        raise DeviceError(f"unknown --precision {requested!r}; use {', '.join(PRECISIONS)}")
    if requested != "auto":
        return torch.float32 if requested == "float32" else torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported(including_emulation=False) else torch.float32
    if device.type != "cpu":
        return torch.float32
    if "cpu" not in _measured:
        _measured["cpu"] = torch.bfloat16 if _bfloat16_faster() else torch.float32
    return _measured["cpu"]


def _bfloat16_faster() -> bool:
    """Whether a 256 x 1024 x 1024 product (a batch through a hidden layer) takes under
    two thirds of float32's time in bfloat16: a margin that emulated bfloat16 never
    reaches and AMX or AVX-512 BF16 units clear by far (3-6x). The two are timed in turns
    and the fastest of each counts, so a busy machine (other workers on the same cores)
    slows both alike; on one thread, as a busy core would hold up several. About 0.1 s."""
    import time

    import torch

    operands = {dtype: (torch.ones(256, 1024, dtype=dtype), torch.ones(1024, 1024, dtype=dtype))
                for dtype in (torch.float32, torch.bfloat16)}
    best = dict.fromkeys(operands, float("inf"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one core's units: several threads wait for the busiest core
    try:
        for _ in range(16):
            for dtype, (a, b) in operands.items():
                started = time.perf_counter()
                torch.mm(a, b)
                best[dtype] = min(best[dtype], time.perf_counter() - started)
    finally:
        torch.set_num_threads(threads)
    return best[torch.bfloat16] < best[torch.float32] * 2 / 3
