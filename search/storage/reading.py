"""Opening a storage to read one study without Optuna, for ``status`` and ``best``: the
same checks as ``opening`` (the server reachable in seconds, the schema Optuna's), then
reads through the adapter's ``records``. Importing Optuna (numpy, tqdm, its samplers)
would be a third of these one-second commands; the other commands, which hand trials to
Optuna, open the storage through ``opening``.
"""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path
from typing import Any

import sqlalchemy
from sqlalchemy.engine import URL

from search.errors import UserError
from search.storage import optuna_adapter
from search.storage.connection import engine_kwargs, install_reply_timeout, limit_transactions, single_connection_engine
from search.storage.failures import RetryPolicy, one_line_error
from search.storage.optuna_adapter.records import Progress, StudyRecord, read_progress, read_records, read_study, study_names
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


def check_readable(url: URL, kwargs: dict[str, Any]) -> None:
    """A storage that holds Optuna's tables, or one line saying why not."""
    if is_sqlite(url):
        sqlite_path(url, writable=False)
    state = check_reachable(url, kwargs)
    if state != "optuna":
        lacking = NoTablesYet if state == "blank" else UserError
        raise lacking(f"{describe(url)} holds no Optuna study storage (no tables); check --storage")


class Reading:
    """A storage opened to read: its engine (every transaction read-only) and retry policy."""

    def __init__(self, engine: sqlalchemy.Engine, policy: RetryPolicy) -> None:
        self.engine = engine
        self.policy = policy

    def _read(self, read: Any) -> Any:
        def attempt() -> Any:
            with self.engine.connect() as connection:
                return read(connection)
        return self.policy.retrying(attempt)

    def study_names(self) -> list[str]:
        return self._read(study_names)

    def study(self, name: str) -> StudyRecord | None:
        return self._read(lambda connection: read_study(connection, name))

    def progress(self, study: StudyRecord) -> Progress:
        return self._read(lambda connection: read_progress(connection, study.study_id))

    def results(self, study: StudyRecord) -> optuna_adapter.Results:
        from search.storage.optuna_adapter.results import Results

        return Results(self.engine, self.policy.retrying, study.study_id, build=read_records)

    def now(self) -> datetime:
        """The clock trials are timed by (the database's)."""
        return self.policy.retrying(lambda: optuna_adapter.database_now(self.engine))


def open_reading(url: URL | str) -> Reading:
    url = parse_url(url) if isinstance(url, str) else url
    install_reply_timeout()
    kwargs = engine_kwargs(url, read_only=True)
    check_readable(url, kwargs)
    return Reading(limit_transactions(sqlalchemy.create_engine(url, **kwargs), read_only=True), RetryPolicy(url))
