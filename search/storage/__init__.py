"""The study storage: where every worker's trials meet.

Modules, innermost first: ``optuna_adapter`` (every private touch of Optuna), ``url``
(the storage URL, checked once), ``connection`` (engines, timeouts, transaction limits),
``failures`` (the one place that classifies database errors and retries), ``locks``,
``own_trials`` (a worker's running trials in memory), ``resilient`` (the Optuna storage
with a retry policy per method), ``reading`` (checks, then opens to read a study without
Optuna: status, best), ``opening`` (checks, then opens for everything else).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from search.storage.opening import open_storage
    from search.storage.reading import NoTablesYet, Reading, open_reading
    from search.storage.resilient import ResilientStorage
    from search.storage.url import describe, parse_url
    from search.storage.view import CutView

# Each name is loaded on first use: the read-only path (``reading``) must not load the
# Optuna-bound modules (``opening``, ``resilient``, ``view``) that a worker needs.
_HOMES = {"CutView": "view", "NoTablesYet": "reading", "open_storage": "opening", "ResilientStorage": "resilient",
          "describe": "url", "parse_url": "url", "Reading": "reading", "open_reading": "reading"}
__all__ = ["CutView", "NoTablesYet", "Reading", "ResilientStorage", "describe", "open_reading", "open_storage",
           "parse_url"]


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_HOMES[name]}"), name)
