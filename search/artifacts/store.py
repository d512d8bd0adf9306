"""What the workers keep in the artifact store, and the bound on its size.

* Checkpoints, so a retried trial resumes where its dead worker stopped. The trial's user
  attr ``checkpoint`` is the pointer. A file is written completely before the pointer
  moves to it, and the old file is deleted only after. If the pointer cannot move (the
  trial was failed meanwhile), the new file is deleted. Whoever holds the pointer owns
  the file: a retry inherits it with the pointer, and a trial that ends (completed,
  pruned, failed for good) clears its pointer and deletes its file.
* Final weights of completed trials, listed as Optuna artifacts so optuna-dashboard
  offers them; only the best ``--keep-best`` trials keep them, and removed weights leave
  the dashboard's list as well.
* Names carry the study's token and the writing trial's id (``formats``), so ``sweep``
  can delete what a killed worker left half-done (a file whose pointer never moved,
  weights never listed) without touching other studies' files.

In the store: the best K weights per study plus one checkpoint per running trial (two for
an instant while a new one replaces the old). Where the bytes go is the backend's
business (``Directory``: a directory every worker sees).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any, Protocol

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import FrozenTrial

from search import keys
from search.artifacts import formats
from search.artifacts.files import read_tensors, serialized
from search.errors import UserError
from search.storage import optuna_adapter


class Backend(Protocol):
    """Where an ``ArtifactStore`` keeps its bytes, under string keys."""

    location: str  # for messages
    optuna: optuna.artifacts.FileSystemArtifactStore  # an Optuna artifact store on the same bytes

    def check(self) -> None:
        """Prove the store writable before anything is written anywhere."""

    def create(self) -> None:
        """Make the store (once the study is joined)."""

    def write(self, key: str, data: bytes | memoryview) -> None:
        """Store ``data`` whole or not at all."""

    def read(self, key: str) -> bytes:
        """The bytes under ``key``; FileNotFoundError if there are none."""

    def remove(self, key: str) -> None:
        """Delete ``key`` if it is there."""

    def keys(self) -> Iterator[str]:
        """Every key, half-written ones included."""


class ArtifactStore:
    def __init__(self, backend: Backend, token: str | None = None) -> None:
        self.backend = backend
        self.token = token  # the study's; None for a store that is only read
        self.removed: set[int] = set()  # trial numbers whose weights this process has removed

    # --- checkpoints ----------------------------------------------------------------
    def save_checkpoint(self, trial: optuna.Trial, state: dict[str, Any], epoch: int) -> None:
        name = formats.new_checkpoint_name(self.token, optuna_adapter.trial_id(trial), epoch)
        self.backend.write(formats.checkpoint_key(name), serialized(state))
        previous = keys.Checkpoint.read(trial.user_attrs.get(keys.CHECKPOINT))
        try:
            trial.set_user_attr(keys.CHECKPOINT, keys.Checkpoint(name, epoch, trial.number).stored())
        except UpdateFinishedTrialError:
            self.backend.remove(formats.checkpoint_key(name))  # the retry keeps the previous one
            raise
        if previous is not None:
            self.backend.remove(formats.checkpoint_key(previous.file))

    def latest_checkpoint(self, trial: optuna.Trial) -> tuple[dict[str, Any], keys.Checkpoint] | None:
        """The trial's (inherited) latest checkpoint and its pointer, if it is readable."""
        pointer = keys.Checkpoint.read(trial.user_attrs.get(keys.CHECKPOINT))
        if pointer is None:
            return None
        try:
            return read_tensors(self.backend.read(formats.checkpoint_key(pointer.file))), pointer
        except (OSError, RuntimeError, EOFError):
            return None  # lost or unreadable: train from scratch rather than fail the trial

    def discard_checkpoint(self, trial: optuna.Trial) -> None:
        """Clear the pointer, then delete its file (not if the trial was taken over)."""
        value = trial.user_attrs.get(keys.CHECKPOINT)
        if value:
            trial.set_user_attr(keys.CHECKPOINT, None)
            pointer = keys.Checkpoint.read(value)
            if pointer is not None:
                self.backend.remove(formats.checkpoint_key(pointer.file))

    # --- weights --------------------------------------------------------------------
    def save_weights(self, trial: optuna.Trial, model: Any, hyperparameters: dict[str, Any]) -> str:
        owner = optuna_adapter.trial_id(trial)
        artifact_id = formats.new_weights_id(self.token, owner)
        self.backend.write(artifact_id, serialized(formats.weights_payload(model, hyperparameters)))
        try:
            optuna_adapter.register_artifact(trial.storage, owner, artifact_id, formats.weights_filename(trial.number))
        except UpdateFinishedTrialError:
            self.backend.remove(artifact_id)
            raise
        return artifact_id

    def read_weights(self, trial: FrozenTrial) -> tuple[dict[str, Any], dict[str, Any]]:
        """The state dict and hyperparameters of a trial's stored weights."""
        listed = weights_ids(trial)
        if not listed:
            raise UserError(f"trial {trial.number} has no stored weights (only the best --keep-best trials keep "
                            f"theirs); rerun with --retrain to train them again")
        try:
            return formats.read_weights(read_tensors(self.backend.read(listed[0])))
        except FileNotFoundError:
            raise UserError(f"the weights of trial {trial.number} ({listed[0]}) are not in {self.backend.location} "
                            f"(another --artifacts directory?); rerun with --retrain") from None
        except Exception as error:  # a damaged file: torch raises many types
            raise UserError(f"the weights of trial {trial.number} in {self.backend.location}/{listed[0]} are "
                            f"unreadable ({type(error).__name__}); rerun with --retrain") from None

    def remove_weights(self, trials: Iterable[FrozenTrial], unregister: Callable[[int, str], None]) -> None:
        """Remove the weights of ``trials``, and their dashboard entries (``unregister``)."""
        for trial in trials:
            if trial.number in self.removed:
                continue
            self.removed.add(trial.number)
            for artifact_id in weights_ids(trial):
                unregister(optuna_adapter.trial_id(trial), artifact_id)
                self.backend.remove(artifact_id)

    # --- the bound ------------------------------------------------------------------
    def sweep(self, read_references: Callable[[], optuna_adapter.References]) -> list[str]:
        """Delete the study's files that nothing points at and no running trial is still
        writing: what killed workers and taken-over trials left behind."""
        # Files first, references second: a file written after the listing is not judged
        # against references read before its writer started.
        candidates = [(key, found[1]) for key in self.backend.keys()
                      if (found := formats.writer(key)) and found[0] == self.token]
        references = read_references()
        removed = []
        for key, trial_id in candidates:
            folder, _, name = key.rpartition("/")
            name = name.removeprefix(".").removesuffix(".tmp")
            kept = references.checkpoints if folder == formats.CHECKPOINTS else references.listed
            if name in kept or trial_id in references.running:
                continue
            self.backend.remove(key)
            removed.append(key)
        return removed


def weights_ids(trial: FrozenTrial) -> list[str]:
    return [key.removeprefix(keys.ARTIFACTS_PREFIX) for key, value in trial.system_attrs.items()
            if key.startswith(keys.ARTIFACTS_PREFIX) and keys.WEIGHTS_SUFFIX in str(value)]
