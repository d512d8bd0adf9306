"""Where training runs: the one function that turns ``--device`` into a torch device."""

from __future__ import annotations

import os

import torch

from objectives.errors import DeviceError


def choose_device(requested: str = "auto", index: int = 0) -> torch.device:
    """``auto``: a GPU when there is one (``index`` mod the visible GPUs, so worker k of a
    host takes GPU k), else the CPU; ``cuda``: the same GPU, which must exist; ``cuda:N``;
    ``cpu``. A device this machine cannot use is refused (call it with the request alone
    to check one before anything is opened or written)."""
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
