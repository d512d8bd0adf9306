"""Reading an exported best-model file safely: ``torch.load(weights_only=True)`` only.

The file is a plain dict ``{"model_state_dict", "model_hyperparameters", "metadata"}``
of tensors, numbers, strings, lists and dicts; anything else (a pickled callable, a
custom class) is refused by PyTorch's restricted unpickler before it can run.
"""

from __future__ import annotations

import os
import pickle
import re
from typing import Any

import torch

from models.mlp import MLPClassifier, build_mlp

REQUIRED_ENTRIES = ("model_state_dict", "model_hyperparameters", "metadata")


class ExportedModelError(ValueError):
    """The file is missing, unsafe, or not an exported model."""


def refused_global(message: str) -> str:
    """The 'Unsupported global: GLOBAL x.y' part of PyTorch's long refusal, if any."""
    match = re.search(r"(?:Unsupported global: GLOBAL|unsupported GLOBAL) ([\w.]+)", message)
    return f" such as {match.group(1)}" if match else ""


def read_exported(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load the exported dict with the restricted unpickler, on the CPU."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ExportedModelError(f"{path}: no such file") from None
    except pickle.UnpicklingError as error:
        raise ExportedModelError(
            f"{path}: refused to load: it holds objects other than plain data (tensors, numbers, "
            f"strings, lists, dicts){refused_global(str(error))}, so it is no safe export; nothing in it was run"
        ) from None
    except Exception as error:  # torch raises many types for a file that is not its format
        raise ExportedModelError(f"{path}: not a readable PyTorch file ({type(error).__name__}: {error})") from None
    if not isinstance(payload, dict) or any(key not in payload for key in REQUIRED_ENTRIES):
        raise ExportedModelError(
            f"{path}: not an exported model (expected the entries {', '.join(REQUIRED_ENTRIES)})"
        )
    return payload


def load_exported(path: str | os.PathLike[str]) -> MLPClassifier:
    """Rebuild the exported model with its weights, in eval mode, on the CPU."""
    payload = read_exported(path)
    model = build_mlp(payload["model_hyperparameters"])
    model.load_state_dict(payload["model_state_dict"])
    return model.eval()
