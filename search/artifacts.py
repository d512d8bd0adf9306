"""What the workers keep in the shared artifact directory, and the bound on its size.

* Checkpoints (model, optimizer, RNG states, epoch) in ``checkpoints/``, so a retried
  trial resumes where its dead worker stopped. The trial's user attr ``checkpoint`` is
  the pointer. A file is written completely (temporary name, fsync, rename) before the
  pointer moves to it, and the old file is deleted only after. If the pointer cannot
  move (the trial was failed meanwhile), the new file is deleted. Whoever holds the
  pointer owns the file: a retry inherits it with the pointer, and a trial that ends
  (completed, pruned, failed for good) clears its pointer and deletes its file.
* Final weights of completed trials at the top level, listed as Optuna artifacts so
  optuna-dashboard offers them; only the best ``keep_best`` trials keep them, and
  removed weights leave the dashboard's list as well.
* File names carry the study's token (a random id kept in the study) and the writing
  trial's id, so ``sweep`` can delete what a killed worker left half-done (a file whose
  pointer never moved, weights never listed) without touching other studies' files.

On disk: the best K weights per study plus one checkpoint per running trial (two for
an instant while a new one replaces the old).
"""

from __future__ import annotations

import io
import os
import re
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import optuna
from optuna.artifacts import FileSystemArtifactStore
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import FrozenTrial

from search import keys, optuna_adapter
from search.errors import UserError
from search.history import History

CHECKPOINT_DIR = "checkpoints"
TOKEN_LENGTH = 12
_WRITER = re.compile(r"^\.?(?P<token>[0-9a-f]{12})-(?P<trial>[0-9a-f]+)-")


class ArtifactStoreError(UserError):
    """The artifact directory cannot be written (full, read-only, gone)."""


def new_token() -> str:
    return uuid.uuid4().hex[:TOKEN_LENGTH]


def save_atomically(path: Path, payload: Any, save: Callable[[Any, io.BytesIO], None] | None = None) -> None:
    """``torch.save`` (or ``save``) to ``path`` so that a reader (or a crash) never sees half a
    file, and a failure (a full disk) leaves no file and raises OSError. The bytes are made
    in memory first: torch's own file writer reports a full disk as a RuntimeError."""
    import torch  # here, not at the top: the worker loop runs without torch in the scale benchmarks

    buffer = io.BytesIO()
    (save or torch.save)(payload, buffer)
    temporary = path.with_name(f".{path.name}.tmp")
    try:
        with open(temporary, "wb") as handle:
            handle.write(buffer.getbuffer())
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def write_atomically(path: Path, payload: Any) -> None:
    """``save_atomically`` into the artifact directory; a failure is one clear line."""
    try:
        save_atomically(path, payload)
    except OSError as error:
        raise ArtifactStoreError(f"cannot write {path}: {error.strerror}; free space in (or fix the "
                                 f"permissions of) the artifact directory {path.parent}") from None


def read_tensors(path: Path | io.BufferedReader) -> dict[str, Any]:
    """Read a file written by ``torch.save``, refusing anything but plain data."""
    import torch

    return torch.load(path, map_location="cpu", weights_only=True)


class ArtifactDirectory:
    """The shared directory (a path every worker sees): weights on top, checkpoints below."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.root = Path(path)
        self.checkpoints = self.root / CHECKPOINT_DIR
        self.store = FileSystemArtifactStore(str(self.root))  # what optuna-dashboard reads
        self.checked: set[int] = set()  # trial numbers whose weights this process has removed
        self.seen_completed = 0  # history.completed at the last keep_best

    def create(self) -> None:
        try:
            self.checkpoints.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise ArtifactStoreError(f"cannot create the artifact directory {self.checkpoints}: "
                                     f"{error.strerror}; pass --artifacts with a writable directory") from None

    # --- checkpoints ----------------------------------------------------------------
    def save_checkpoint(self, token: str, trial: optuna.Trial, state: dict[str, Any], epoch: int) -> None:
        name = f"{token}-{optuna_adapter.trial_id(trial):x}-e{epoch}-{uuid.uuid4().hex[:8]}.pt"
        write_atomically(self.checkpoints / name, state)
        previous = trial.user_attrs.get(keys.CHECKPOINT)
        try:
            trial.set_user_attr(keys.CHECKPOINT, {"file": name, "epoch": epoch, "trial": trial.number})
        except UpdateFinishedTrialError:
            (self.checkpoints / name).unlink(missing_ok=True)  # the retry keeps the previous one
            raise
        if previous and "file" in previous:
            (self.checkpoints / previous["file"]).unlink(missing_ok=True)

    def latest_checkpoint(self, trial: optuna.Trial) -> tuple[dict[str, Any], dict[str, Any]] | None:
        """The trial's (inherited) latest checkpoint and its pointer, if it is readable."""
        pointer = trial.user_attrs.get(keys.CHECKPOINT)
        if not pointer or "file" not in pointer:
            return None
        try:
            return read_tensors(self.checkpoints / pointer["file"]), pointer
        except (OSError, RuntimeError, EOFError):
            return None  # lost or unreadable: train from scratch rather than fail the trial

    def discard_checkpoint(self, trial: optuna.Trial) -> None:
        """Clear the pointer, then delete its file (not if the trial was taken over)."""
        pointer = trial.user_attrs.get(keys.CHECKPOINT)
        if pointer:
            trial.set_user_attr(keys.CHECKPOINT, None)
            if "file" in pointer:
                (self.checkpoints / pointer["file"]).unlink(missing_ok=True)

    # --- weights --------------------------------------------------------------------
    def save_weights(self, token: str, trial: optuna.Trial, model: Any,
                     model_hyperparameters: dict[str, Any]) -> str:
        owner = optuna_adapter.trial_id(trial)
        artifact_id = f"{token}-{owner:x}-{uuid.uuid4()}"  # hex and dashes: the dashboard's URL form
        state = {key: value.detach().cpu() for key, value in model.state_dict().items()}
        write_atomically(self.root / artifact_id, {"model_state_dict": state,
                                                   "model_hyperparameters": model_hyperparameters})
        try:
            optuna_adapter.register_artifact(trial.storage, owner, artifact_id,
                                             f"trial-{trial.number}{keys.WEIGHTS_SUFFIX}")
        except UpdateFinishedTrialError:
            (self.root / artifact_id).unlink(missing_ok=True)
            raise
        return artifact_id

    def keep_best(self, history: History, slots: optuna_adapter.Slots, keep: int) -> None:
        """Remove the weights, and their dashboard entries, of completed trials outside the
        best ``keep``. Only what changed since the last call is looked at: the trials
        completed since, and those they pushed out of the best (at most as many)."""
        new = history.completed - self.seen_completed
        if self.seen_completed == 0 or new > len(history.completions):
            candidates = history.ranked[keep:]  # the first look, or too much to tell apart
        else:
            best = {number for _, number, _ in history.ranked[:keep]}
            candidates = history.ranked[keep:keep + new] + [
                (None, trial.number, trial) for trial in list(history.completions)[len(history.completions) - new:]
                if trial.number not in best]
        self.seen_completed = history.completed
        for _, number, trial in candidates:
            if number in self.checked:
                continue
            self.checked.add(number)
            for artifact_id in weights_ids(trial):
                slots.unregister_artifact(optuna_adapter.trial_id(trial), artifact_id)
                (self.root / artifact_id).unlink(missing_ok=True)

    # --- the bound ------------------------------------------------------------------
    def files(self) -> Iterator[Path]:
        for directory in (self.root, self.checkpoints):
            yield from (path for path in directory.iterdir() if path.is_file())

    def sweep(self, slots: optuna_adapter.Slots, token: str) -> list[Path]:
        """Delete the study's files that nothing points at and no running trial is still
        writing: what killed workers and taken-over trials left behind."""
        # Files first, references second: a file written after the listing is not judged
        # against references read before its writer started.
        candidates = [(path, writer) for path in self.files()
                      if (writer := _WRITER.match(path.name)) and writer["token"] == token]
        references = slots.references()
        removed = []
        for path, writer in candidates:
            name = path.name.removeprefix(".").removesuffix(".tmp")
            kept = references.checkpoints if path.parent == self.checkpoints else references.listed
            if name in kept or int(writer["trial"], 16) in references.running:
                continue
            path.unlink(missing_ok=True)
            removed.append(path)
        return removed


def weights_ids(trial: FrozenTrial) -> list[str]:
    return [key.removeprefix(keys.ARTIFACTS_PREFIX) for key, value in trial.system_attrs.items()
            if key.startswith(keys.ARTIFACTS_PREFIX) and keys.WEIGHTS_SUFFIX in str(value)]


def check_artifact_directory(path: str | os.PathLike[str]) -> ArtifactDirectory:
    """Prove the directory writable (or creatable) before anything is written anywhere;
    ``ArtifactDirectory.create`` makes it once the study is joined."""
    directory = ArtifactDirectory(path)
    if directory.root.exists() and not directory.root.is_dir():
        raise ArtifactStoreError(f"cannot create the artifact directory {directory.root}: it is a file; "
                                 f"pass --artifacts with a directory")
    existing = directory.root
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise ArtifactStoreError(f"cannot create the artifact directory {directory.root}: {existing} is not "
                                 f"writable; pass --artifacts with a writable directory")
    if directory.root.is_dir():
        probe = directory.root / f".probe-{os.getpid()}"
        write_atomically(probe, {})
        probe.unlink()
    return directory
