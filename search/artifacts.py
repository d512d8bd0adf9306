"""What the workers keep in the shared artifact store (a directory or volume by default).

* Per-epoch checkpoints (model, optimizer, RNG states, epoch) so a retried trial resumes
  where its dead worker stopped. The trial's user attr ``checkpoint`` points at the
  latest; it is written under a fresh id before the pointer moves, so a worker killed
  mid-write never leaves a torn checkpoint behind the pointer. Optuna's retry callback
  copies user attrs, which is how the retry finds it.
* Final weights of completed trials (``{"model_state_dict", "model_hyperparameters"}``),
  uploaded with ``optuna.artifacts.upload_artifact`` so optuna-dashboard lists them;
  only the best ``keep_best`` trials keep theirs.
"""

from __future__ import annotations

import io
import os
import tempfile
import uuid
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.artifacts import FileSystemArtifactStore, upload_artifact
from optuna.artifacts.exceptions import ArtifactNotFound
from optuna.trial import TrialState

from search.errors import UserError

DEFAULT_ARTIFACTS = "search-artifacts"
CHECKPOINT_ATTR = "checkpoint"
WEIGHTS_ATTR = "weights_artifact_id"


def open_artifact_store(path: str | os.PathLike[str]) -> FileSystemArtifactStore:
    directory = Path(path)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserError(f"cannot create the artifact directory {directory}: {error.strerror}; "
                        f"pass --artifacts with a writable directory") from None
    return FileSystemArtifactStore(str(directory))


def read_tensors(store: FileSystemArtifactStore, artifact_id: str) -> dict[str, Any]:
    """Read an artifact written by ``torch.save``, refusing anything but plain data."""
    with store.open_reader(artifact_id) as reader:
        return torch.load(io.BytesIO(reader.read()), map_location="cpu", weights_only=True)


class CheckpointStore:
    def __init__(self, store: FileSystemArtifactStore) -> None:
        self.store = store

    def save(self, trial: optuna.Trial, state: dict[str, Any], epoch: int) -> None:
        buffer = io.BytesIO()
        torch.save(state, buffer)
        buffer.seek(0)
        artifact_id = f"checkpoint-{uuid.uuid4()}"
        self.store.write(artifact_id, buffer)
        previous = trial.user_attrs.get(CHECKPOINT_ATTR)
        trial.set_user_attr(CHECKPOINT_ATTR, {"artifact_id": artifact_id, "epoch": epoch})
        if previous:
            self.remove(previous["artifact_id"])

    def latest(self, trial: optuna.Trial | optuna.trial.FrozenTrial) -> tuple[dict[str, Any], int] | None:
        """The trial's (possibly inherited) latest checkpoint and its epoch, if readable."""
        pointer = trial.user_attrs.get(CHECKPOINT_ATTR)
        if not pointer:
            return None
        try:
            return read_tensors(self.store, pointer["artifact_id"]), int(pointer["epoch"])
        except (ArtifactNotFound, OSError, RuntimeError):
            return None  # lost or torn: train from scratch rather than fail the trial

    def discard(self, trial: optuna.Trial) -> None:
        pointer = trial.user_attrs.get(CHECKPOINT_ATTR)
        if pointer:
            self.remove(pointer["artifact_id"])

    def remove(self, artifact_id: str) -> None:
        try:
            self.store.remove(artifact_id)
        except ArtifactNotFound:
            pass


def save_weights(store: FileSystemArtifactStore, trial: optuna.Trial,
                 model: torch.nn.Module, model_hyperparameters: dict[str, Any]) -> str:
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"trial-{trial.number}-weights.pt"
        torch.save({"model_state_dict": state, "model_hyperparameters": model_hyperparameters}, path)
        artifact_id = upload_artifact(artifact_store=store, file_path=str(path), study_or_trial=trial)
    trial.set_user_attr(WEIGHTS_ATTR, artifact_id)
    return artifact_id


def keep_best_weights(study: optuna.Study, store: FileSystemArtifactStore, keep_best: int) -> None:
    """Remove the weights of completed trials outside the best ``keep_best``."""
    completed = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                 if t.user_attrs.get(WEIGHTS_ATTR)]
    completed.sort(key=lambda t: (-t.value, t.number))
    for trial in completed[keep_best:]:
        try:
            store.remove(trial.user_attrs[WEIGHTS_ATTR])
        except ArtifactNotFound:
            pass  # removed when an earlier trial finished
