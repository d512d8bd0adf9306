"""Connections to the database: engines, their timeouts and every transaction's limits.

* A PostgreSQL connection that stops answering (a network partition leaves the socket
  open and silent) raises ``ReplyTimeout`` after the reply timeout (``--reply-timeout``,
  ``REPLY_TIMEOUT_S`` by default) instead of hanging: libpq has no read timeout, so a
  psycopg2 wait callback polls the socket with one. The socket's own limits (TCP
  keepalives, ``tcp_user_timeout``) and the transaction limits scale with it.
* Every PostgreSQL transaction starts with its limits (``limit_transactions``: lock
  timeout, idle-in-transaction timeout, read-only where asked) as ``SET LOCAL``, not as
  session settings: behind a transaction-pooling PgBouncer each transaction may run on
  another server connection, and PgBouncer refuses or drops the ``options`` startup
  parameter. The same code then runs direct and pooled.
* SQLite is opened read-only by the commands that only read (it works on a read-only
  mount and creates no journal), and this project's own transactions on it take the
  write lock at BEGIN (``transaction_engine``).
"""

from __future__ import annotations

import os
import select
import sqlite3
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psycopg2
import psycopg2.extensions
import sqlalchemy
from sqlalchemy.engine import URL

from search.storage.url import is_sqlite

CONNECT_TIMEOUT_S = 5
REPLY_TIMEOUT_S = 30.0  # the default of --reply-timeout
POOL_SIZE = 2  # the trial loop and its heartbeat thread

# Process-wide, as the wait callback is: set once by install_reply_timeout, before any engine.
_reply_timeout = REPLY_TIMEOUT_S


def reply_timeout() -> float:
    return _reply_timeout


def lock_timeout() -> float:
    """Half the reply timeout, at most 15 s: a lock wait must end before the reply timeout
    would take it for a lost server."""
    return min(15.0, _reply_timeout / 2)


def idle_in_transaction_timeout() -> float:
    """The server ends a transaction whose client went silent after twice the reply timeout
    (by then the client has given that connection up)."""
    return 2 * _reply_timeout


class ReplyTimeout(psycopg2.OperationalError):
    """The server did not answer within REPLY_TIMEOUT_S (e.g. a network partition)."""


_CONNECTED = (psycopg2.extensions.STATUS_READY, psycopg2.extensions.STATUS_BEGIN,
              psycopg2.extensions.STATUS_PREPARED)


def _wait_with_timeout(connection: Any) -> None:
    """psycopg2 wait callback: like psycopg2.extras.wait_select, with a deadline (libpq's own
    connect_timeout does not apply once a wait callback drives the connection)."""
    connected = connection.status in _CONNECTED
    limit = _reply_timeout if connected else CONNECT_TIMEOUT_S
    deadline = time.monotonic() + limit
    while True:
        state = connection.poll()
        if state == psycopg2.extensions.POLL_OK:
            return
        left = deadline - time.monotonic()
        if left <= 0:
            what = "reply from" if connected else "connection to"
            raise ReplyTimeout(f"no {what} the database server within {limit:g} s")
        if state == psycopg2.extensions.POLL_READ:
            select.select([connection.fileno()], [], [], left)
        else:
            select.select([], [connection.fileno()], [], left)


def _mark_reply_timeout_as_disconnect(context: Any) -> None:
    # The pool must discard a connection that timed out mid-reply rather than reuse it.
    if isinstance(context.original_exception, ReplyTimeout):
        context.is_disconnect = True


def install_reply_timeout(seconds: float | None = None) -> None:
    """Process-wide: every psycopg2 connection waits at most ``seconds`` for a reply (None:
    as set before, else REPLY_TIMEOUT_S)."""
    global _reply_timeout
    if seconds is not None:
        _reply_timeout = seconds
    psycopg2.extensions.set_wait_callback(_wait_with_timeout)
    if not sqlalchemy.event.contains(sqlalchemy.engine.Engine, "handle_error", _mark_reply_timeout_as_disconnect):
        sqlalchemy.event.listen(sqlalchemy.engine.Engine, "handle_error", _mark_reply_timeout_as_disconnect)


def postgres_connect_args() -> dict[str, Any]:
    return {
        "connect_timeout": CONNECT_TIMEOUT_S,
        # application_name shows each worker's connections in pg_stat_activity.
        "application_name": f"hpsearch/{os.getpid()}",
        # A peer that vanished without a word (a host cut off, a firewall dropping packets)
        # is noticed by the socket too, not only by a reply's timeout: an idle pooled
        # connection after twice the reply timeout of unanswered keepalives (30 + 3 x 10 s
        # by default), and one whose sent bytes go unacknowledged after the reply timeout.
        "keepalives_idle": max(1, round(_reply_timeout)),
        "keepalives_interval": max(1, round(_reply_timeout / 3)),
        "keepalives_count": 3,
        "tcp_user_timeout": round(_reply_timeout * 1000),
    }


def limit_transactions(engine: sqlalchemy.Engine, read_only: bool = False) -> sqlalchemy.Engine:
    """Start every transaction on ``engine`` with its limits (see the module docstring)."""
    if engine.dialect.name != "postgresql":
        return engine
    limits = ("SET TRANSACTION READ ONLY; " if read_only else "") + (
        f"SET LOCAL lock_timeout = {round(lock_timeout() * 1000)}; "
        f"SET LOCAL idle_in_transaction_session_timeout = {round(idle_in_transaction_timeout() * 1000)}")

    @sqlalchemy.event.listens_for(engine, "begin")
    def _limits(connection: sqlalchemy.Connection) -> None:
        connection.exec_driver_sql(limits)
    return engine


def engine_kwargs(url: URL, read_only: bool = False) -> dict[str, Any]:
    """What Optuna's ``RDBStorage`` (and every engine here) is created with."""
    if is_sqlite(url):
        # Several local workers share the file: wait for its write lock instead of failing.
        kwargs: dict[str, Any] = {"connect_args": {"timeout": 60}}
        if read_only:
            location = f"file:{quote(str(Path(url.database).expanduser().resolve()))}?mode=ro"
            kwargs["creator"] = lambda: sqlite3.connect(location, uri=True, timeout=60, check_same_thread=False)
        return kwargs
    return {
        "pool_size": POOL_SIZE,
        "max_overflow": 0,
        "pool_timeout": 60,
        "pool_pre_ping": True,
        "pool_recycle": 600,
        "connect_args": postgres_connect_args(),
    }


def single_connection_engine(url: URL, kwargs: dict[str, Any] | None = None) -> sqlalchemy.Engine:
    """An engine without a pool, for short one-off connections (checks, locks)."""
    kwargs = engine_kwargs(url) if kwargs is None else kwargs
    engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool,
                                      **{key: kwargs[key] for key in ("connect_args", "creator") if key in kwargs})
    return engine if is_sqlite(url) else limit_transactions(engine)


def transaction_engine(rdb_engine: sqlalchemy.Engine, url: URL) -> sqlalchemy.Engine:
    """The engine for this project's own transactions (claims, requeues, a trial's writes):
    Optuna's pool on PostgreSQL (no extra connections); on SQLite one whose transactions
    take the write lock at BEGIN, so a read-then-write transaction cannot deadlock
    against another."""
    if not is_sqlite(url):
        return rdb_engine
    engine = sqlalchemy.create_engine(url, **engine_kwargs(url))

    @sqlalchemy.event.listens_for(engine, "connect")
    def _autocommit_driver(dbapi_connection: Any, record: Any) -> None:
        dbapi_connection.isolation_level = None  # let the "begin" hook below issue BEGIN

    @sqlalchemy.event.listens_for(engine, "begin")
    def _begin_immediate(connection: sqlalchemy.Connection) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    return engine
