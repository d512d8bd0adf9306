"""An artifact store in a directory every worker sees (a local disk for one host, a shared
volume for many): weights on top, checkpoints below. Optuna's ``FileSystemArtifactStore``
reads the same layout for optuna-dashboard."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from optuna.artifacts import FileSystemArtifactStore

from search.artifacts.failures import ArtifactStoreError
from search.artifacts.files import write_atomically
from search.artifacts.formats import CHECKPOINTS


class Directory:
    """The backend of an ``ArtifactStore``: keys are paths under ``root``."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.root = Path(path)
        self.location = str(self.root)
        self.optuna = FileSystemArtifactStore(str(self.root))  # what optuna-dashboard reads

    def where(self) -> str:
        return f"the artifact directory {self.root}"

    def check(self, writable: bool = True) -> None:
        """Prove the directory writable (or creatable) before anything is written anywhere;
        ``create`` makes it once the study is joined. Reading needs nothing checked: a
        missing file is said when it is asked for."""
        if not writable:
            return
        if self.root.exists() and not self.root.is_dir():
            raise ArtifactStoreError(f"cannot create the artifact directory {self.root}: it is a file; "
                                     f"pass --artifacts with a directory")
        existing = self.root
        while not existing.exists():
            existing = existing.parent
        if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
            raise ArtifactStoreError(f"cannot create the artifact directory {self.root}: {existing} is not "
                                     f"writable; pass --artifacts with a writable directory")
        if self.root.is_dir():
            probe = f".probe-{os.getpid()}"
            self.write(probe, b"")
            self.remove(probe)

    def create(self) -> None:
        try:
            (self.root / CHECKPOINTS).mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise ArtifactStoreError(f"cannot create the artifact directory {self.root / CHECKPOINTS}: "
                                     f"{error.strerror}; pass --artifacts with a writable directory") from None

    def write(self, key: str, data: bytes | memoryview) -> None:
        """The file ``key``, whole or not at all; a failure is one clear line."""
        path = self.root / key
        try:
            write_atomically(path, data)
        except OSError as error:
            raise ArtifactStoreError(f"cannot write {path}: {error.strerror}; free space in (or fix the "
                                     f"permissions of) the artifact directory {path.parent}") from None

    def read(self, key: str) -> bytes:
        """The file's bytes; FileNotFoundError if there is none."""
        return (self.root / key).read_bytes()

    def remove(self, key: str) -> None:
        (self.root / key).unlink(missing_ok=True)

    def keys(self) -> Iterator[str]:
        """Every file, half-written ones included, as a key."""
        for folder, prefix in ((self.root, ""), (self.root / CHECKPOINTS, f"{CHECKPOINTS}/")):
            if folder.is_dir():
                yield from (prefix + path.name for path in folder.iterdir() if path.is_file())
