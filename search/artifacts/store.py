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
business (``Directory``: a directory every worker sees; ``Bucket``: an S3 bucket).

A store that is unavailable for a while (an object store restarting, a network cut)
fails no trial: a checkpoint that cannot be written is skipped with one warning (the next
epoch writes one), deleting waits for the next sweep, and what must be read or written
(a resumed checkpoint, final weights) is retried for up to the patience; past it the
worker stops with ``StoreLost`` and its trial is re-queued, as for a lost database.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Protocol, TypeVar

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import FrozenTrial

from search import keys
from search.artifacts import formats
from search.artifacts.failures import StoreLost, StoreUnavailable
from search.artifacts.files import read_tensors, serialized
from search.errors import UserError
from search.storage import optuna_adapter

PATIENCE_S = 300.0  # as the database's reconnect patience (--db-patience sets both)
logger = logging.getLogger(__name__)
T = TypeVar("T")


class Backend(Protocol):
    """Where an ``ArtifactStore`` keeps its bytes, under string keys."""

    location: str  # as --artifacts names it
    optuna: Any  # an Optuna artifact store on the same bytes (optuna-dashboard reads it)

    def where(self) -> str:
        """The store, for messages."""

    def check(self, writable: bool = True) -> None:
        """Prove the store reachable (and writable) before anything is written anywhere."""

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
    def __init__(self, backend: Backend, token: str | None = None, patience: float = PATIENCE_S,
                 notify: Callable[[str], None] = logger.warning) -> None:
        self.backend = backend
        self.token = token  # the study's; None for a store that is only read
        self.patience = patience
        self.notify = notify
        self.removed: set[int] = set()  # trial numbers whose weights this process has removed
        self.skipping = False  # a checkpoint was skipped and none has been written since

    # --- availability ---------------------------------------------------------------
    def _patiently(self, call: Callable[[], T], what: str) -> T:
        """``call()``, repeated while the store is unavailable, for up to the patience."""
        deadline, delay = None, 0.5
        while True:
            try:
                result = call()
            except StoreUnavailable as error:
                now = time.monotonic()
                if deadline is None:
                    deadline = now + self.patience
                    self.notify(f"the artifact store is unavailable ({error}); retrying to {what} for up to "
                                f"{self.patience:.0f} s")
                elif now >= deadline:
                    raise StoreLost(f"the artifact store was unavailable for {self.patience:.0f} s ({error}); the "
                                    f"trial is re-queued for another worker: restart this worker once the store "
                                    f"is back") from None
                time.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            if deadline is not None:
                self.notify(f"reached the artifact store again ({what})")
            return result

    def _if_available(self, call: Callable[[], Any]) -> bool:
        """``call()`` once; False (and nothing said) if the store is unavailable: for what
        a later sweep does as well (deleting), or a later epoch (a checkpoint)."""
        try:
            call()
        except StoreUnavailable:
            return False
        return True

    # --- checkpoints ----------------------------------------------------------------
    def save_checkpoint(self, trial: optuna.Trial, state: dict[str, Any], epoch: int) -> None:
        name = formats.new_checkpoint_name(self.token, optuna_adapter.trial_id(trial), epoch)
        if not self._if_available(lambda: self.backend.write(formats.checkpoint_key(name), serialized(state))):
            if not self.skipping:
                self.notify(f"trial {trial.number}: the epoch-{epoch} checkpoint was not written (the artifact "
                            f"store is unavailable); training goes on, and the next epoch writes one")
            self.skipping = True
            return
        self.skipping = False
        previous = keys.Checkpoint.read(trial.user_attrs.get(keys.CHECKPOINT))
        try:
            trial.set_user_attr(keys.CHECKPOINT, keys.Checkpoint(name, epoch, trial.number).stored())
        except UpdateFinishedTrialError:
            self._if_available(lambda: self.backend.remove(formats.checkpoint_key(name)))  # the retry keeps its own
            raise
        if previous is not None:
            self._if_available(lambda: self.backend.remove(formats.checkpoint_key(previous.file)))

    def latest_checkpoint(self, trial: optuna.Trial) -> tuple[dict[str, Any], keys.Checkpoint] | None:
        """The trial's (inherited) latest checkpoint and its pointer, if it is readable."""
        pointer = keys.Checkpoint.read(trial.user_attrs.get(keys.CHECKPOINT))
        if pointer is None:
            return None
        try:
            data = self._patiently(lambda: self.backend.read(formats.checkpoint_key(pointer.file)),
                                   f"read the checkpoint of trial {trial.number}")
            return read_tensors(data), pointer
        except (OSError, RuntimeError, EOFError):
            return None  # lost or unreadable: train from scratch rather than fail the trial

    def discard_checkpoint(self, trial: optuna.Trial) -> None:
        """Clear the pointer, then delete its file (not if the trial was taken over)."""
        value = trial.user_attrs.get(keys.CHECKPOINT)
        if value:
            trial.set_user_attr(keys.CHECKPOINT, None)
            pointer = keys.Checkpoint.read(value)
            if pointer is not None:
                self._if_available(lambda: self.backend.remove(formats.checkpoint_key(pointer.file)))

    # --- weights --------------------------------------------------------------------
    def save_weights(self, trial: optuna.Trial, model: Any, hyperparameters: dict[str, Any]) -> str:
        owner = optuna_adapter.trial_id(trial)
        artifact_id = formats.new_weights_id(self.token, owner)
        data = serialized(formats.weights_payload(model, hyperparameters))
        self._patiently(lambda: self.backend.write(artifact_id, data), f"write the weights of trial {trial.number}")
        try:
            optuna_adapter.register_artifact(trial.storage, owner, artifact_id, formats.weights_filename(trial.number))
        except UpdateFinishedTrialError:
            self._if_available(lambda: self.backend.remove(artifact_id))
            raise
        return artifact_id

    def read_weights(self, trial: FrozenTrial) -> tuple[dict[str, Any], dict[str, Any]]:
        """The state dict and hyperparameters of a trial's stored weights."""
        listed = weights_ids(trial)
        if not listed:
            raise UserError(f"trial {trial.number} has no stored weights (only the best --keep-best trials keep "
                            f"theirs); rerun with --retrain to train them again")
        try:
            data = self.backend.read(listed[0])
        except FileNotFoundError:
            raise UserError(f"the weights of trial {trial.number} ({listed[0]}) are not in {self.backend.location} "
                            f"(another --artifacts directory?); rerun with --retrain") from None
        except StoreUnavailable as error:
            raise StoreLost(f"cannot read the weights of trial {trial.number}: the artifact store is unavailable "
                            f"({error}); try again once it is back, or rerun with --retrain") from None
        try:
            return formats.read_weights(read_tensors(data))
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
                self._if_available(lambda: self.backend.remove(artifact_id))  # else unlisted: swept later

    # --- the bound ------------------------------------------------------------------
    def sweep(self, read_references: Callable[[], optuna_adapter.References]) -> list[str]:
        """Delete the study's files that nothing points at and no running trial is still
        writing: what killed workers and taken-over trials left behind."""
        # Files first, references second: a file written after the listing is not judged
        # against references read before its writer started.
        try:
            candidates = [(key, found[1]) for key in self.backend.keys()
                          if (found := formats.writer(key)) and found[0] == self.token]
        except StoreUnavailable:
            return []  # the next sweep does it
        references = read_references()
        removed = []
        for key, trial_id in candidates:
            folder, _, name = key.rpartition("/")
            name = name.removeprefix(".").removesuffix(".tmp")
            kept = references.checkpoints if folder == formats.CHECKPOINTS else references.listed
            if name in kept or trial_id in references.running:
                continue
            if self._if_available(lambda: self.backend.remove(key)):
                removed.append(key)
        return removed


def weights_ids(trial: FrozenTrial) -> list[str]:
    return [key.removeprefix(keys.ARTIFACTS_PREFIX) for key, value in trial.system_attrs.items()
            if key.startswith(keys.ARTIFACTS_PREFIX) and keys.WEIGHTS_SUFFIX in str(value)]
