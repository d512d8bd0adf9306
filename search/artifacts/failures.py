"""What can go wrong with the artifact store, in this project's terms (each backend turns
its own failures into these)."""

from __future__ import annotations

from search.errors import SearchError, UserError


class ArtifactStoreError(UserError):
    """The store refuses (full, read-only, no such bucket, bad credentials): a person must
    fix something first."""


class StoreUnavailable(Exception):
    """The store did not answer, or answered that it is overloaded: waiting may fix it."""


class StoreLost(SearchError):
    """The store stayed unavailable for longer than the worker's patience."""
