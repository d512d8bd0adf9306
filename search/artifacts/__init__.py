"""The artifact store: checkpoints and final weights (``store``), their names and payloads
(``formats``), files written whole (``files``), what can go wrong (``failures``), and
where the bytes live: a directory (``directory``) or an S3 bucket (``bucket``)."""

from __future__ import annotations

from collections.abc import Callable

from search.artifacts.bucket import READ_TIMEOUT_S, SCHEME, Bucket
from search.artifacts.directory import Directory
from search.artifacts.failures import ArtifactStoreError, StoreLost, StoreUnavailable
from search.artifacts.store import PATIENCE_S, ArtifactStore, Backend


def backend(location: str, read_timeout: float = READ_TIMEOUT_S) -> Backend:
    """Where ``--artifacts`` points: ``s3://BUCKET/PREFIX`` (a request unanswered for
    ``read_timeout`` seconds is a lost connection), else a directory."""
    return Bucket(location, read_timeout) if location.startswith(SCHEME) else Directory(location)


def open_store(location: str, token: str | None = None, patience: float = PATIENCE_S,
               notify: Callable[[str], None] | None = None) -> ArtifactStore:
    """The store at ``location``; one that is only read needs no ``token``."""
    found = backend(location)
    return ArtifactStore(found, token, patience) if notify is None else ArtifactStore(found, token, patience, notify)


__all__ = ["ArtifactStore", "ArtifactStoreError", "Backend", "Bucket", "Directory", "StoreLost", "StoreUnavailable",
           "backend", "open_store"]
