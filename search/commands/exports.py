"""The files ``search best --export`` writes, and how it tells them from other files.

An exported file is a plain dict saved with ``torch.save``::

    {"model_state_dict": {...tensors...},
     "model_hyperparameters": {...the dict models.build_mlp takes...},
     "metadata": {"objective", "study", "trial_number", "validation_accuracy", "class_names",
                  "preprocessing", "params", "epochs", "library_versions", "layout", ...}}

so ``torch.load(path, weights_only=True)`` reads it and ``models.load_exported(path)``
rebuilds the model, with no code from this project beyond ``models`` (which owns the
entry names); ``metadata["layout"]`` says what each ``state_dict`` index is, in words,
for rebuilding it without ``models``. ``--export PATH.pt2`` writes a ``torch.export``
program instead, which runs with torch alone (the same metadata inside).
"""

from __future__ import annotations

import json
import platform
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import torch

from models import ExportedModelError, build_mlp, read_exported
from models.exported import HYPERPARAMETERS, METADATA, STATE_DICT
from search.artifacts.files import save_atomically
from search.errors import UserError

FORMAT_VERSION = 1
PROGRAM_SUFFIX = ".pt2"  # --export PATH.pt2 writes a torch.export program instead
PROGRAM_METADATA = "hpsearch.json"


def check_writable(path: Path, force: bool) -> None:
    """Fail before any long work if the export cannot be written (by trying to), or would
    replace a file that is not an earlier export (unless ``force``)."""
    directory = path.resolve().parent
    if path.is_dir():
        raise UserError(f"cannot export to {path}: it is a directory; give a file path such as {path / 'model.pt'}")
    if path.exists() and not force and not is_export(path):
        raise UserError(f"{path} exists and is not a model exported by search; pass --force to replace "
                        f"it, or choose another --export path")
    if not directory.is_dir():
        raise UserError(f"cannot export to {path}: directory {directory} does not exist")
    try:
        tempfile.TemporaryFile(dir=directory).close()
    except OSError as error:
        raise UserError(f"cannot export to {path}: directory {directory} is not writable "
                        f"({error.strerror}); choose another path") from None


def is_export(path: Path) -> bool:
    """A file ``search best --export`` wrote: a readable export, or a ``.pt2`` program with
    its metadata entry."""
    if path.suffix != PROGRAM_SUFFIX:
        try:
            read_exported(path)
            return True
        except ExportedModelError:
            return False
    try:
        with zipfile.ZipFile(path) as archive:
            return any(name.endswith(f"/extra/{PROGRAM_METADATA}") for name in archive.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


def library_versions() -> dict[str, str]:
    # torch.__version__ is a str subclass the restricted unpickler would refuse.
    return {"torch": str(torch.__version__), "optuna": str(optuna.__version__),
            "python": platform.python_version()}


def write_export(path: Path, payload: Any, save: Callable[[Any, Any], None] | None = None) -> None:
    """Write atomically (with ``torch.save``, or ``save``): a reader never sees half a file, a
    failure leaves no file."""
    try:
        save_atomically(path, payload, save)
    except OSError as error:
        raise UserError(f"cannot write {path}: {error.strerror}; free space there or choose another "
                        f"--export path") from None


def write_model(path: Path, state_dict: dict[str, Any], hyperparameters: dict[str, Any],
                metadata: dict[str, Any]) -> None:
    write_export(path, {STATE_DICT: state_dict, HYPERPARAMETERS: hyperparameters, METADATA: metadata})


def write_program(path: Path, state_dict: dict[str, Any], hyperparameters: dict[str, Any],
                  metadata: dict[str, Any]) -> None:
    """The model as a ``torch.export`` program (any batch size) that runs with torch alone;
    the metadata travels in it as ``extra/{PROGRAM_METADATA}`` (``torch.export.load(...,
    extra_files={PROGRAM_METADATA: ""})``)."""
    model = build_mlp(hyperparameters)
    model.load_state_dict(state_dict)
    model.eval()
    example = torch.zeros(2, hyperparameters["n_inputs"])
    program = torch.export.export(model, (example,), dynamic_shapes=({0: torch.export.Dim("batch")},))
    extra = {PROGRAM_METADATA: json.dumps(metadata)}
    write_export(path, program, save=lambda program_, file: torch.export.save(program_, file, extra_files=extra))
