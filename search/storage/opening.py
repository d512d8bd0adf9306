"""Opening the study storage: the URL's target checked (reachable in seconds, the schema
Optuna's), once per process."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import sqlalchemy
from optuna.storages import RDBStorage
from sqlalchemy.engine import URL

from search.errors import UserError
from search.storage import optuna_adapter
from search.storage.connection import engine_kwargs, install_reply_timeout, single_connection_engine
from search.storage.failures import RECONNECT_PATIENCE_S, RetryPolicy, one_line_error
from search.storage.resilient import ResilientStorage
from search.storage.url import describe, is_sqlite, parse_url


class NoTablesYet(UserError):
    """A database with no tables at all: a new one, whose first worker has not started yet."""


def sqlite_path(url: URL, writable: bool) -> Path | None:
    """The SQLite file, checked: None if it does not exist yet (and may be created)."""
    path = Path(url.database).expanduser()
    if path.is_dir():
        raise UserError(f"{describe(url)} is a directory; give a file path such as {path / 'search.db'}")
    if path.exists():
        if writable and not (os.access(path, os.W_OK) and os.access(path.resolve().parent, os.W_OK)):
            raise UserError(f"{describe(url)} is read-only (or its directory is); make it writable, or "
                            f"copy it somewhere writable to add trials")
        return path
    directory = path.resolve().parent
    if not writable:
        raise UserError(f"no SQLite file {path}; check --storage (search run or search worker creates it)")
    if not directory.is_dir():
        raise UserError(f"cannot create {describe(url)}: directory {directory} does not exist; create it or "
                        f"pass another --storage path")
    if not os.access(directory, os.W_OK):
        raise UserError(f"cannot create {describe(url)}: directory {directory} is not writable; "
                        f"pass another --storage path")
    return None


def check_reachable(url: URL, kwargs: dict[str, Any]) -> str:
    """Connect once (failing in seconds, naming host and port) and inspect the schema:
    ``optuna_adapter.schema_state``'s answer."""
    engine = single_connection_engine(url, kwargs)
    try:
        return optuna_adapter.schema_state(engine, describe(url))
    except Exception as error:
        raise one_line_error(url, error, lambda problem: UserError(f"cannot reach {problem}"),
                             "check that the server runs and the --storage URL (or SEARCH_STORAGE) is right") from None
    finally:
        engine.dispose()


def open_storage(url: URL | str, writable: bool = True, patience: float = RECONNECT_PATIENCE_S,
                 notify: Callable[[str], None] | None = None, deferred: bool = False) -> ResilientStorage:
    """Check the server and the schema, then open the storage.

    ``url``: as ``parse_url`` returns it (a string is parsed first). ``writable``: Optuna's
    tables are created if there are none yet, at once, or with ``deferred`` only by
    ``prepare`` (a worker checks everything on the storage it will use, then writes).
    Otherwise nothing is ever created, migrated or locked, connections cannot write, a
    storage with no Optuna tables is an error, and studies are read through the
    adapter's ``Reader`` (no ORM: a quick ``search status``)."""
    url = parse_url(url) if isinstance(url, str) else url
    install_reply_timeout()
    policy = RetryPolicy(url, patience) if notify is None else RetryPolicy(url, patience, notify)
    kwargs = engine_kwargs(url, read_only=not writable)
    storage = ResilientStorage(policy, kwargs, writable, rdb=None)
    if not (is_sqlite(url) and sqlite_path(url, writable) is None):  # a new file: nothing to read yet
        state = check_reachable(url, kwargs)
        if state == "optuna":
            storage.attach(rdb_storage(url, kwargs) if writable else reader(url, kwargs))
        elif not writable:
            lacking = NoTablesYet if state == "blank" else UserError
            raise lacking(f"{describe(url)} holds no Optuna study storage (no tables); check --storage")
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
        return RDBStorage(url.render_as_string(hide_password=False), engine_kwargs=kwargs,
                          skip_table_creation=True)
    except Exception as error:
        raise one_line_error(url, error, lambda problem: UserError(f"cannot reach {problem}"),
                             "check that the server runs") from error
