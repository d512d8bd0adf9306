"""Opening the study storage: URL checks, a bounded connection pool, reconnects.

The default is an embedded SQLite file (no server). PostgreSQL URLs get a small pool
with pre-ping (two connections per worker: the trial loop and its heartbeat thread, so
32 workers stay well under PostgreSQL's default 100), a short connect timeout so an
unreachable server fails fast, and ``ReconnectingRDBStorage``, which retries an
operation whose connection dropped (a server restart) until the server is back.
"""

from __future__ import annotations

import functools
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import optuna
import sqlalchemy
from optuna.exceptions import StorageInternalError
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, OperationalError

from search.errors import UserError

DEFAULT_STORAGE = "sqlite:///search.db"
CONNECT_TIMEOUT_S = 5
RECONNECT_TIMEOUT_S = 180.0
POOL_SIZE = 2
MAX_RETRIES_PER_TRIAL = 3

logger = logging.getLogger(__name__)
F = TypeVar("F", bound=Callable[..., Any])


def parse_url(url: str) -> URL:
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise UserError(
            f"malformed storage URL {url!r}; use sqlite:///PATH.db or "
            f"postgresql://USER:PASSWORD@HOST:PORT/DATABASE"
        ) from None
    if parsed.get_backend_name() not in ("sqlite", "postgresql"):
        raise UserError(
            f"unsupported storage URL {url!r}; use sqlite:///PATH.db or postgresql://USER:PASSWORD@HOST:PORT/DATABASE"
        )
    if parsed.get_backend_name() == "sqlite" and not parsed.database:
        raise UserError(f"storage URL {url!r} has no database file; use sqlite:///PATH.db")
    if parsed.drivername == "postgresql":
        # SQLAlchemy 2.1 maps plain postgresql:// to psycopg 3; this project ships psycopg2.
        parsed = parsed.set(drivername="postgresql+psycopg2")
    if parsed.get_backend_name() == "postgresql":
        try:
            parsed.get_dialect()
        except Exception as error:  # NoSuchModuleError for a bad driver name
            raise UserError(f"storage URL {url!r}: {error}; use postgresql+psycopg2://...") from None
    return parsed


def describe(url: URL) -> str:
    """The URL without its password, for messages."""
    if url.get_backend_name() == "sqlite":
        return f"SQLite file {url.database}"
    return f"PostgreSQL at {url.host or 'localhost'}:{url.port or 5432} (database {url.database!r})"


def postgres_connect_args() -> dict[str, Any]:
    # application_name shows each worker's connections in pg_stat_activity.
    return {"connect_timeout": CONNECT_TIMEOUT_S, "application_name": f"hpsearch/{os.getpid()}"}


def single_connection_engine(url: URL) -> sqlalchemy.Engine:
    """An engine without a pool, for short one-off connections (checks, locks)."""
    return sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool, connect_args=postgres_connect_args())


def engine_kwargs(url: URL) -> dict[str, Any]:
    if url.get_backend_name() == "sqlite":
        # Several local workers share the file: wait for its write lock instead of failing.
        return {"connect_args": {"timeout": 60}}
    return {
        "pool_size": POOL_SIZE,
        "max_overflow": 0,
        "pool_timeout": 60,
        "pool_pre_ping": True,
        "pool_recycle": 600,
        "connect_args": {**postgres_connect_args(), "keepalives_idle": 30},
    }


def check_reachable(url: URL) -> None:
    """Fail in seconds, naming host and port, when the database cannot be reached."""
    if url.get_backend_name() == "sqlite":
        directory = Path(url.database).expanduser().resolve().parent
        if not directory.is_dir():
            raise UserError(f"cannot create {describe(url)}: directory {directory} does not exist")
        return
    engine = single_connection_engine(url)
    try:
        with engine.connect():
            pass
    except OperationalError as error:
        reason = str(error.orig).strip().splitlines()[0] if error.orig else str(error)
        raise UserError(
            f"cannot reach {describe(url)}: {reason}; check that the server runs and the "
            f"--storage URL (or SEARCH_STORAGE) is right"
        ) from None
    finally:
        engine.dispose()


def is_connection_loss(error: BaseException) -> bool:
    cause = error.__cause__ if isinstance(error, StorageInternalError) else error
    if isinstance(cause, DBAPIError) and cause.connection_invalidated:
        return True
    return isinstance(cause, OperationalError)


def reconnecting(method: F) -> F:
    @functools.wraps(method)
    def wrapper(self: RDBStorage, *args: Any, **kwargs: Any) -> Any:
        deadline = time.monotonic() + RECONNECT_TIMEOUT_S
        delay = 0.5
        while True:
            try:
                return method(self, *args, **kwargs)
            except (StorageInternalError, OperationalError, DBAPIError) as error:
                if not is_connection_loss(error) or time.monotonic() > deadline:
                    raise
                logger.warning("database connection lost in %s; retrying in %.1f s", method.__name__, delay)
                time.sleep(delay)
                delay = min(delay * 2, 10.0)

    return wrapper  # type: ignore[return-value]


class ReconnectingRDBStorage(RDBStorage):
    """``RDBStorage`` whose operations survive a database restart by retrying."""


for _name, _method in list(vars(optuna.storages.BaseStorage).items()):
    if callable(_method) and not _name.startswith("__") and hasattr(RDBStorage, _name):
        setattr(ReconnectingRDBStorage, _name, reconnecting(getattr(RDBStorage, _name)))
for _name in ("record_heartbeat", "_get_stale_trial_ids"):
    setattr(ReconnectingRDBStorage, _name, reconnecting(getattr(RDBStorage, _name)))


def open_storage(url_text: str, heartbeat_interval: int | None = None) -> ReconnectingRDBStorage:
    """Check the URL and the server, then open the storage (creating tables race-free)."""
    from search.locking import schema_lock

    url = parse_url(url_text)
    check_reachable(url)
    heartbeat: dict[str, Any] = {}
    if heartbeat_interval is not None:
        heartbeat = {
            "heartbeat_interval": heartbeat_interval,
            "grace_period": 3 * heartbeat_interval,
            "heartbeat_stale_trial_callback": RetryHeartbeatStaleTrialCallback(
                max_retry=MAX_RETRIES_PER_TRIAL, inherit_intermediate_values=True
            ),
        }
    # Workers started at the same instant would race to create the tables.
    with schema_lock(url):
        return ReconnectingRDBStorage(url.render_as_string(hide_password=False),
                                      engine_kwargs=engine_kwargs(url), **heartbeat)
