"""The artifact store: checkpoints and final weights (``store``), their names and payloads
(``formats``), files written whole (``files``), and where the bytes live (``directory``)."""

from search.artifacts.directory import ArtifactStoreError, Directory
from search.artifacts.store import ArtifactStore


def open_store(location: str, token: str | None = None) -> ArtifactStore:
    """The store at ``location`` (``--artifacts``): a directory."""
    return ArtifactStore(Directory(location), token)


__all__ = ["ArtifactStore", "ArtifactStoreError", "Directory", "open_store"]
