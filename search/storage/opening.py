"""Opening the study storage: the URL's target checked (reachable in seconds, the schema
Optuna's), once per process."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import sqlalchemy
from optuna.storages import RDBStorage
from sqlalchemy.engine import URL

from search.errors import UserError
from search.storage import optuna_adapter
from search.storage.connection import engine_kwargs, install_reply_timeout
from search.storage.failures import RECONNECT_PATIENCE_S, RetryPolicy, one_line_error
from search.storage.reading import NoTablesYet, check_readable, check_reachable, sqlite_path
from search.storage.resilient import ResilientStorage
from search.storage.tables import open_tables
from search.storage.url import is_sqlite, parse_url

__all__ = ["NoTablesYet", "open_storage", "rdb_storage", "reader"]  # NoTablesYet: reading's, named here too


def open_storage(url: URL | str, writable: bool = True, patience: float = RECONNECT_PATIENCE_S,
                 notify: Callable[[str], None] | None = None, deferred: bool = False,
                 reply_timeout: float | None = None) -> ResilientStorage:
    """Check the server and the schema, then open the storage.

    ``url``: as ``parse_url`` returns it (a string is parsed first). ``writable``: Optuna's
    tables are created if there are none yet, at once, or with ``deferred`` only by
    ``prepare`` (a worker checks everything on the storage it will use, then writes).
    Otherwise nothing is ever created, migrated or locked, connections cannot write, a
    storage with no Optuna tables is an error, and studies are read through the
    adapter's ``Reader`` (no ORM: a quick ``search status``). ``reply_timeout``: seconds a
    connection may go unanswered, for the whole process (None: as before, 30 s at first)."""
    url = parse_url(url) if isinstance(url, str) else url
    install_reply_timeout(reply_timeout)
    policy = RetryPolicy(url, patience) if notify is None else RetryPolicy(url, patience, notify)
    kwargs = engine_kwargs(url, read_only=not writable)
    storage = ResilientStorage(policy, kwargs, writable, rdb=None)
    if not writable:
        check_readable(url, kwargs)
        storage.attach(reader(url, kwargs))
    elif not (is_sqlite(url) and sqlite_path(url, writable) is None):  # a new file: nothing to read yet
        if check_reachable(url, kwargs) == "optuna":
            storage.attach(rdb_storage(url, kwargs))
    if writable and not deferred:
        storage.prepare()
    return storage


def reader(url: URL, kwargs: dict[str, Any]) -> optuna_adapter.Reader:
    """The adapter's read-only storage on tables that exist (checked by ``check_reachable``:
    the schema version too)."""
    return optuna_adapter.Reader(sqlalchemy.create_engine(url, **kwargs))


def rdb_storage(url: URL, kwargs: dict[str, Any]) -> RDBStorage:
    """Optuna's storage on tables that exist (checked by ``check_reachable``)."""
    try:
        return open_tables(url, kwargs)
    except Exception as error:
        raise one_line_error(url, error, lambda problem: UserError(f"cannot reach {problem}"),
                             "check that the server runs") from error
