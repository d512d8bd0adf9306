"""The database connection: URL checks, connection settings, and the one place that turns
database errors into this project's errors.

* A PostgreSQL connection that stops answering (a network partition leaves the socket
  open and silent) raises ``ReplyTimeout`` after ``REPLY_TIMEOUT_S`` instead of hanging:
  libpq has no read timeout, so a psycopg2 wait callback polls the socket with one.
* ``is_transient`` says which errors a retry can fix (connection loss, a server restarting,
  lock timeouts, deadlocks); everything else (a full disk, a foreign schema, no
  permission) becomes one ``StorageError`` line naming the storage and the fix.
* ``Database.retrying`` retries transient failures for up to the reconnect patience. A
  write whose reply was lost may or may not have committed: the caller passes a
  ``resolve`` that reads the outcome back before anything is written again.
* Every PostgreSQL transaction starts with its limits (``limit_transactions``: lock
  timeout, idle-in-transaction timeout, read-only where asked) as ``SET LOCAL``, not as
  session settings: behind a transaction-pooling PgBouncer each transaction may run on
  another server connection, and PgBouncer refuses or drops the ``options`` startup
  parameter. The same code then runs direct and pooled.
* ``Health`` tracks how long this process has seen the database without interruption;
  a worker declares other workers dead only after a whole grace period of that, so after
  an outage the live ones get their heartbeats in first.
"""

from __future__ import annotations

import logging
import os
import select
import sqlite3
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import psycopg2
import psycopg2.extensions
import sqlalchemy
from optuna.exceptions import StorageInternalError
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, SQLAlchemyError

from search.errors import DatabaseLost, StorageError, UserError

CONNECT_TIMEOUT_S = 5
REPLY_TIMEOUT_S = 30.0  # longer than LOCK_TIMEOUT_S: a lock wait is not a lost server
LOCK_TIMEOUT_S = 15
IDLE_IN_TRANSACTION_S = 60  # the server ends a transaction whose client went silent
RECONNECT_PATIENCE_S = 300.0
POOL_SIZE = 2  # the trial loop and its heartbeat thread

# SQLSTATEs a retry can fix: the server is shutting down or starting, too many
# connections, a serialization failure, a deadlock, a lock wait that timed out.
TRANSIENT_SQLSTATES = {"57P01", "57P02", "57P03", "53300", "40001", "40P01", "55P03"}
FIXES = {  # SQLSTATE (or its class) -> what the user should do
    "53100": "free disk space on the database server",
    "53": "give the database server more resources",
    "25006": "the database is read-only; point --storage at a writable one",
    "42501": "grant this database user the needed privileges (CREATE on the schema), or use another user",
    "42": "the database holds tables that are not Optuna's (or another Optuna version's); use a separate database",
    "28": "check the user name and password in the storage URL",
    "3D": "create the database first, or fix its name in the storage URL",
}
SQLITE_FIXES = {
    "database or disk is full": "free disk space where the SQLite file lives",
    "readonly": "make the SQLite file and its directory writable, or use another path",
    "no such": "the file holds tables that are not Optuna's; use another file",
    "file is not a database": "the file is not an SQLite database; use another path",
    "unable to open": "check the path and its permissions",
}

logger = logging.getLogger(__name__)
T = TypeVar("T")
UNKNOWN: Any = object()  # what a ``resolve`` returns when the write did not happen


URL_FORMS = "use sqlite:///PATH.db or postgresql://USER:PASSWORD@HOST:PORT/DATABASE"
# libpq's connection keywords: what psycopg2 passes on from a URL's query string.
LIBPQ_OPTIONS = {
    "sslmode", "sslrootcert", "sslcert", "sslkey", "sslpassword", "sslcrl", "sslcompression",
    "sslsni", "requirepeer", "ssl_min_protocol_version", "ssl_max_protocol_version", "gssencmode",
    "krbsrvname", "gsslib", "channel_binding", "connect_timeout", "application_name", "options",
    "target_session_attrs", "passfile", "service", "keepalives", "keepalives_idle",
    "keepalives_interval", "keepalives_count", "tcp_user_timeout", "client_encoding", "host", "hostaddr",
    "load_balance_hosts", "require_auth",
}


def parse_url(url: str) -> URL:
    """The storage URL, checked without connecting: its form, backend, driver, port, options."""
    shown = describe_text(url)
    try:
        parsed = make_url(url)
        parsed.port  # noqa: B018 - a port that is not a number raises here
    except (ArgumentError, ValueError):
        raise UserError(f"malformed storage URL {shown!r}; {URL_FORMS}") from None
    backend = parsed.get_backend_name()
    if backend not in ("sqlite", "postgresql"):
        raise UserError(f"unsupported storage URL {shown!r}; {URL_FORMS}")
    if backend == "sqlite":
        if parsed.drivername != "sqlite":
            raise UserError(f"storage URL {shown!r}: driver {parsed.drivername!r} is not supported; use sqlite:///PATH.db")
        if not parsed.database or parsed.database == ":memory:" or parsed.database.startswith("file::memory:"):
            raise UserError(f"storage URL {shown!r} names no database file (an in-memory database vanishes "
                            f"when the command ends, and other workers cannot see it); use sqlite:///PATH.db")
        if parsed.query:
            raise UserError(f"storage URL {shown!r}: SQLite URLs take no options here "
                            f"({', '.join(parsed.query)}); use sqlite:///PATH.db")
        return parsed
    # SQLAlchemy 2.1 maps plain postgresql:// to psycopg 3; this project ships psycopg2.
    if parsed.drivername not in ("postgresql", "postgresql+psycopg2"):
        raise UserError(f"storage URL {shown!r}: driver {parsed.drivername.partition('+')[2]!r} is not "
                        f"installed with this project; use postgresql:// (psycopg2)")
    unknown = sorted(set(parsed.query) - LIBPQ_OPTIONS)
    if unknown:
        raise UserError(f"storage URL {shown!r}: {', '.join(unknown)} is not a PostgreSQL connection option; "
                        f"remove it (options: sslmode, connect_timeout, application_name, ...)")
    return parsed.set(drivername="postgresql+psycopg2")


def describe_text(url: str) -> str:
    """A URL as typed, with any password masked, for messages about malformed ones."""
    scheme, sep, rest = url.partition("://")
    credentials, at, location = rest.rpartition("@")
    if not (sep and at and ":" in credentials):
        return url
    return f"{scheme}://{credentials.split(':', 1)[0]}:***@{location}"


def describe(url: URL) -> str:
    """The URL without its password, for messages."""
    if url.get_backend_name() == "sqlite":
        return f"SQLite file {url.database}"
    return f"PostgreSQL at {url.host or 'localhost'}:{url.port or 5432} (database {url.database!r})"


# --- connections ------------------------------------------------------------------

class ReplyTimeout(psycopg2.OperationalError):
    """The server did not answer within REPLY_TIMEOUT_S (e.g. a network partition)."""


_CONNECTED = (psycopg2.extensions.STATUS_READY, psycopg2.extensions.STATUS_BEGIN,
              psycopg2.extensions.STATUS_PREPARED)


def _wait_with_timeout(connection: Any) -> None:
    """psycopg2 wait callback: like psycopg2.extras.wait_select, with a deadline (libpq's own
    connect_timeout does not apply once a wait callback drives the connection)."""
    limit = REPLY_TIMEOUT_S if connection.status in _CONNECTED else CONNECT_TIMEOUT_S
    deadline = time.monotonic() + limit
    while True:
        state = connection.poll()
        if state == psycopg2.extensions.POLL_OK:
            return
        left = deadline - time.monotonic()
        if left <= 0:
            what = "reply from" if limit == REPLY_TIMEOUT_S else "connection to"
            raise ReplyTimeout(f"no {what} the database server within {limit:.0f} s")
        if state == psycopg2.extensions.POLL_READ:
            select.select([connection.fileno()], [], [], left)
        else:
            select.select([], [connection.fileno()], [], left)


def _mark_reply_timeout_as_disconnect(context: Any) -> None:
    # The pool must discard a connection that timed out mid-reply rather than reuse it.
    if isinstance(context.original_exception, ReplyTimeout):
        context.is_disconnect = True


def install_reply_timeout() -> None:
    """Process-wide: every psycopg2 connection waits at most REPLY_TIMEOUT_S for a reply."""
    psycopg2.extensions.set_wait_callback(_wait_with_timeout)
    if not sqlalchemy.event.contains(sqlalchemy.engine.Engine, "handle_error", _mark_reply_timeout_as_disconnect):
        sqlalchemy.event.listen(sqlalchemy.engine.Engine, "handle_error", _mark_reply_timeout_as_disconnect)


def postgres_connect_args() -> dict[str, Any]:
    return {
        "connect_timeout": CONNECT_TIMEOUT_S,
        # application_name shows each worker's connections in pg_stat_activity.
        "application_name": f"hpsearch/{os.getpid()}",
        "keepalives_idle": 30,
    }


def limit_transactions(engine: sqlalchemy.Engine, read_only: bool = False) -> sqlalchemy.Engine:
    """Start every transaction on ``engine`` with its limits (see the module docstring)."""
    if engine.dialect.name != "postgresql":
        return engine
    limits = ("SET TRANSACTION READ ONLY; " if read_only else "") + (
        f"SET LOCAL lock_timeout = {LOCK_TIMEOUT_S * 1000}; "
        f"SET LOCAL idle_in_transaction_session_timeout = {IDLE_IN_TRANSACTION_S * 1000}")

    @sqlalchemy.event.listens_for(engine, "begin")
    def _limits(connection: sqlalchemy.Connection) -> None:
        connection.exec_driver_sql(limits)
    return engine


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
        "connect_args": postgres_connect_args(),
    }


def single_connection_engine(url: URL) -> sqlalchemy.Engine:
    """An engine without a pool, for short one-off connections (checks, locks)."""
    if url.get_backend_name() == "sqlite":
        return sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool, connect_args={"timeout": 60})
    return limit_transactions(sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool,
                                                       connect_args=postgres_connect_args()))


# --- errors -----------------------------------------------------------------------

def driver_error(error: BaseException) -> BaseException:
    """The DBAPI exception under Optuna's and SQLAlchemy's wrappers."""
    while isinstance(error, StorageInternalError) and error.__cause__ is not None:
        error = error.__cause__
    if isinstance(error, DBAPIError) and error.orig is not None:
        return error.orig
    return error


def is_database_error(error: BaseException) -> bool:
    return isinstance(error, (StorageInternalError, SQLAlchemyError, psycopg2.Error, sqlite3.Error))


def is_transient(error: BaseException) -> bool:
    """True for failures a reconnect or a retry fixes; False for everything else."""
    if isinstance(error, sqlalchemy.exc.TimeoutError):
        return True  # no pooled connection came free in time
    wrapped = error
    while isinstance(wrapped, StorageInternalError) and wrapped.__cause__ is not None:
        wrapped = wrapped.__cause__
    if isinstance(wrapped, DBAPIError) and wrapped.connection_invalidated:
        return True
    if isinstance(wrapped, sqlalchemy.exc.PendingRollbackError):
        # Raised when a session is used again after its connection died mid-transaction
        # (Optuna's _get_trials retries a failed query on the same session): transient
        # exactly when what broke the transaction was.
        return wrapped.__context__ is not None and is_transient(wrapped.__context__)
    cause = driver_error(error)
    if isinstance(cause, psycopg2.Error):
        if cause.pgcode:
            return cause.pgcode.startswith("08") or cause.pgcode in TRANSIENT_SQLSTATES
        # No SQLSTATE: the connection itself failed (refused, closed, timed out).
        return isinstance(cause, (psycopg2.OperationalError, psycopg2.InterfaceError))
    if isinstance(cause, sqlite3.OperationalError):
        return "database is locked" in str(cause)
    return False


def first_line(error: BaseException) -> str:
    text = str(driver_error(error)).strip()
    return text.splitlines()[0] if text else type(error).__name__


def storage_error(url: URL, error: BaseException) -> StorageError:
    """One line: which storage, what the server said, what to do."""
    cause = driver_error(error)
    fix = "see the database server's log"
    if isinstance(cause, psycopg2.Error) and cause.pgcode:
        fix = FIXES.get(cause.pgcode) or FIXES.get(cause.pgcode[:2], fix)
    elif isinstance(cause, sqlite3.Error):
        fix = next((text for needle, text in SQLITE_FIXES.items() if needle in str(cause)), fix)
    return StorageError(f"{describe(url)}: {first_line(error)}; {fix}")


def one_line_error(url: URL, error: BaseException, lost: Callable[[str], Exception], action: str) -> BaseException:
    """What to raise for ``error``: ``lost`` (given the problem and ``action``) for a
    transient database failure, a ``StorageError`` for any other; other errors unchanged."""
    if not is_database_error(error):
        return error
    if is_transient(error):
        return lost(f"{describe(url)} ({first_line(error)}); {action}")
    return storage_error(url, error)


class Health:
    """How long this process has reached the database without a connection failure."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._since: float | None = time.monotonic()

    def ok(self) -> None:
        with self._lock:
            if self._since is None:
                self._since = time.monotonic()

    def lost(self) -> None:
        with self._lock:
            self._since = None

    def connected_for(self) -> float:
        with self._lock:
            return 0.0 if self._since is None else time.monotonic() - self._since


class Database:
    """One storage's URL, health and retry policy, shared by every thread of a worker."""

    def __init__(self, url: URL, patience: float = RECONNECT_PATIENCE_S,
                 notify: Callable[[str], None] = logger.warning) -> None:
        self.url = url
        self.patience = patience
        self.notify = notify
        self.health = Health()

    @property
    def is_sqlite(self) -> bool:
        return self.url.get_backend_name() == "sqlite"

    def _recovered(self, deadline: float | None) -> None:
        self.health.ok()
        if deadline is not None:
            self.notify(f"reconnected to {describe(self.url)}")

    def retrying(self, call: Callable[[], T], resolve: Callable[[], Any] | None = None) -> T:
        """``call()``, retried while the failure is transient; other database errors become
        a ``StorageError``. After a transient failure ``resolve()`` (if given) reads back
        whether the failed call's write happened: anything but UNKNOWN is the result."""
        deadline: float | None = None
        delay = 0.2
        in_doubt = False
        while True:
            try:
                if in_doubt and resolve is not None:
                    outcome = resolve()
                    if outcome is not UNKNOWN:
                        self._recovered(deadline)
                        return outcome
                result = call()
                self._recovered(deadline)
                return result
            except Exception as error:
                if not is_database_error(error):
                    raise
                if not is_transient(error):
                    raise storage_error(self.url, error) from error
                self.health.lost()
                in_doubt = True
                now = time.monotonic()
                if deadline is None:
                    deadline = now + self.patience
                    self.notify(f"lost the connection to {describe(self.url)} ({first_line(error)}); "
                                f"reconnecting for up to {self.patience:.0f} s")
                elif now >= deadline:
                    raise DatabaseLost(
                        f"{describe(self.url)} unreachable for {self.patience:.0f} s ({first_line(error)}); "
                        f"a running trial is retried by another worker once the database is back: "
                        f"restart this worker then"
                    ) from None
                time.sleep(delay)
                delay = min(delay * 2, 5.0)
