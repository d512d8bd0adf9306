"""Reading an exported best-model file safely: ``torch.load(weights_only=True)`` only.

The file is a plain dict ``{"model_state_dict", "model_hyperparameters", "metadata"}``
of tensors, numbers, strings, lists and dicts; anything else (a pickled callable, a
custom class) is refused by PyTorch's restricted unpickler before it can run. What
loads is then checked entry by entry, so a damaged or hand-edited file is one
``ExportedModelError`` naming the file and the entry, never a traceback.
"""

from __future__ import annotations

import os
import pickle
import re
import zipfile
from typing import Any

import torch

from models.mlp import MLPClassifier, build_mlp

# The file's entries: the weights, the dict the model is rebuilt from, what it is.
STATE_DICT, HYPERPARAMETERS, METADATA = "model_state_dict", "model_hyperparameters", "metadata"
REQUIRED_ENTRIES = (STATE_DICT, HYPERPARAMETERS, METADATA)
AGAIN = "the file was edited or damaged: export it again (search best --export)"
METADATA_TYPES = {"objective": str, "study": str, "trial_number": int, "class_names": list,
                  "validation_accuracy": (int, float), "test_accuracy": (int, float), "params": dict,
                  "epochs": int, "preprocessing": dict, "library_versions": dict}


class ExportedModelError(ValueError):
    """The file is missing, unsafe, or not an exported model; the message names the fix."""


def refused_global(message: str) -> str:
    """The 'Unsupported global: GLOBAL x.y' part of PyTorch's long refusal, if any."""
    match = re.search(r"(?:Unsupported global: GLOBAL|unsupported GLOBAL) ([\w.]+)", message)
    return f" such as {match.group(1)}" if match else ""


def read_exported(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load the exported dict with the restricted unpickler, on the CPU, and check its shape."""
    if not os.path.isfile(path):
        raise ExportedModelError(f"{path}: no such file; check the path" if not os.path.exists(path)
                                 else f"{path}: not a file; give the path of an exported .pt file")
    if not zipfile.is_zipfile(path):
        raise ExportedModelError(f"{path}: not a PyTorch file (torch.save writes a zip archive; this is "
                                 f"{os.path.getsize(path):,} bytes of something else); give a file written by "
                                 f"search best --export")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise ExportedModelError(
            f"{path}: refused to load: it holds objects other than plain data (tensors, numbers, "
            f"strings, lists, dicts){refused_global(str(error))}, so it is no safe export; nothing in it was run"
        ) from None
    except Exception as error:  # torch raises many types for a damaged archive
        first = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise ExportedModelError(f"{path}: not a readable PyTorch file ({type(error).__name__}: {first}); "
                                 f"{AGAIN}") from None
    if not isinstance(payload, dict) or any(key not in payload for key in REQUIRED_ENTRIES):
        raise ExportedModelError(
            f"{path}: not an exported model (expected the entries {', '.join(REQUIRED_ENTRIES)}); "
            f"give a file written by search best --export"
        )
    check_entries(path, payload)
    return payload


def check_entries(path: str | os.PathLike[str], payload: dict[str, Any]) -> None:
    state, hyperparameters, metadata = (payload[key] for key in REQUIRED_ENTRIES)
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                              for k, v in state.items()):
        raise ExportedModelError(f"{path}: model_state_dict must map parameter names to tensors; {AGAIN}")
    if not isinstance(hyperparameters, dict):
        raise ExportedModelError(f"{path}: model_hyperparameters must be a dict; {AGAIN}")
    if not isinstance(metadata, dict):
        raise ExportedModelError(f"{path}: metadata must be a dict, not {type(metadata).__name__}; {AGAIN}")
    for key, kind in METADATA_TYPES.items():
        if key in metadata and metadata[key] is not None and not isinstance(metadata[key], kind):
            raise ExportedModelError(f"{path}: metadata entry {key!r} is a {type(metadata[key]).__name__}, "
                                     f"not a {getattr(kind, '__name__', 'number')}; {AGAIN}")
    if not all(isinstance(name, str) for name in metadata.get("class_names") or []):
        raise ExportedModelError(f"{path}: metadata entry 'class_names' must list strings; {AGAIN}")


def load_exported(path: str | os.PathLike[str]) -> MLPClassifier:
    """Rebuild the exported model with its weights, in eval mode, on the CPU."""
    payload = read_exported(path)
    try:
        model = build_mlp(payload[HYPERPARAMETERS])
    except (ValueError, TypeError) as error:
        raise ExportedModelError(f"{path}: model_hyperparameters: {error}; {AGAIN}") from None
    expected, state = model.state_dict(), payload[STATE_DICT]
    missing = sorted(expected.keys() - state.keys())
    unexpected = sorted(state.keys() - expected.keys())
    reshaped = [f"{key} {tuple(state[key].shape)} vs {tuple(expected[key].shape)}"
                for key in expected.keys() & state.keys() if state[key].shape != expected[key].shape]
    if missing or unexpected or reshaped:
        problems = "; ".join(f"{label}: {', '.join(items[:3])}{' ...' if len(items) > 3 else ''}"
                             for label, items in (("missing", missing), ("unexpected", unexpected),
                                                  ("wrong shape", reshaped)) if items)
        raise ExportedModelError(f"{path}: model_state_dict does not fit model_hyperparameters ({problems}); "
                                 f"{AGAIN}")
    model.load_state_dict(state)
    return model.eval()
