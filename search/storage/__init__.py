"""The study storage: where every worker's trials meet.

Modules, innermost first: ``optuna_adapter`` (every private touch of Optuna), ``url``
(the storage URL, checked once), ``connection`` (engines, timeouts, transaction limits),
``failures`` (the one place that classifies database errors and retries), ``locks``,
``own_trials`` (a worker's running trials in memory), ``resilient`` (the Optuna storage
with a retry policy per method), ``opening`` (checks, then opens).
"""

from search.storage.opening import NoTablesYet, open_storage
from search.storage.resilient import ResilientStorage
from search.storage.url import describe, parse_url
from search.storage.view import CutView

__all__ = ["CutView", "NoTablesYet", "ResilientStorage", "describe", "open_storage", "parse_url"]
