"""The one place that turns database errors into this project's errors and decides what
is retried.

* ``is_transient`` says which errors a retry can fix (connection loss, a server restarting,
  and ``is_conflict``'s: a transaction rolled back for another, as a deadlock victim or
  after a lock timeout, on a connection that is fine); everything else (a full disk, a foreign schema, no
  permission) becomes one ``StorageError`` line naming the storage and the fix.
* ``RetryPolicy.retrying`` retries transient failures for up to the reconnect patience. A
  write whose reply was lost may or may not have committed: the caller passes a
  ``resolve`` that reads the outcome back (None: it did not happen) before anything is
  written again.
* ``Health`` tracks how long this process has seen the database without interruption;
  a worker declares other workers dead only after a whole grace period of that, so after
  an outage the live ones get their heartbeats in first.
"""

from __future__ import annotations

import logging
import sqlite3
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import psycopg2
import sqlalchemy
from sqlalchemy.engine import URL
from sqlalchemy.exc import DBAPIError, SQLAlchemyError, StatementError

from search.errors import DatabaseLost, StorageError
from search.storage.url import describe, is_sqlite

RECONNECT_PATIENCE_S = 300.0

# SQLSTATEs a retry can fix: the server is shutting down or starting, too many
# connections, a serialization failure, a deadlock, a lock wait that timed out.
TRANSIENT_SQLSTATES = {"57P01", "57P02", "57P03", "53300", "40001", "40P01", "55P03"}
CONFLICT_SQLSTATES = {"40001", "40P01", "55P03"}  # of those, the ones that leave the connection fine
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


def _optuna_wrapper() -> type | tuple[()]:
    """Optuna's wrapper of database errors, if Optuna is loaded: the commands that read
    without it (status, best) never meet one, and need not import Optuna to say so."""
    exceptions = sys.modules.get("optuna.exceptions")
    return exceptions.StorageInternalError if exceptions is not None else ()


def driver_error(error: BaseException) -> BaseException:
    """The exception under Optuna's and SQLAlchemy's wrappers: the DBAPI's, or one of
    ``foreign``'s."""
    while isinstance(error, _optuna_wrapper()) and error.__cause__ is not None:
        error = error.__cause__
    if isinstance(error, StatementError) and error.orig is not None:
        return error.orig
    return error


def foreign(error: BaseException) -> BaseException | None:
    """The exception that is no database error under the wrappers of one, if that is what
    ``error`` is: SQLAlchemy wraps whatever is raised while it prepares a statement, and
    a stop signal's ``WorkerStopped`` is raised wherever the main thread is. That exception,
    not a database failure, is what happened, and is raised as itself."""
    cause = driver_error(error)
    if cause is error or isinstance(cause, (SQLAlchemyError, psycopg2.Error, sqlite3.Error)):
        return None
    return cause


def is_database_error(error: BaseException) -> bool:
    return (isinstance(error, (_optuna_wrapper(), SQLAlchemyError, psycopg2.Error, sqlite3.Error))
            and foreign(error) is None)


def is_transient(error: BaseException) -> bool:
    """True for database failures a reconnect or a retry fixes; False for everything else."""
    if not is_database_error(error):
        return False
    if isinstance(error, sqlalchemy.exc.TimeoutError):
        return True  # no pooled connection came free in time
    wrapped = error
    while isinstance(wrapped, _optuna_wrapper()) and wrapped.__cause__ is not None:
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


def is_conflict(error: BaseException) -> bool:
    """True for a transaction the database rolled back because of another one (a deadlock,
    a serialization failure, a lock wait that timed out, SQLite's busy file): retried like
    a lost connection, but the database was reachable all along."""
    cause = driver_error(error)
    if isinstance(cause, psycopg2.Error):
        return cause.pgcode in CONFLICT_SQLSTATES
    return isinstance(cause, sqlite3.OperationalError) and "database is locked" in str(cause)


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
    transient database failure, a ``StorageError`` for any other; other errors unchanged
    (unwrapped, where a database error's wrapper carried one)."""
    if not is_database_error(error):
        return foreign(error) or error
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


class RetryPolicy:
    """One storage's URL, health and retry policy, shared by every thread of a worker."""

    def __init__(self, url: URL, patience: float = RECONNECT_PATIENCE_S,
                 notify: Callable[[str], None] = logger.warning) -> None:
        self.url = url
        self.patience = patience
        self.notify = notify
        self.health = Health()

    @property
    def is_sqlite(self) -> bool:
        return is_sqlite(self.url)

    def _recovered(self, lost: bool) -> None:
        self.health.ok()
        if lost:
            self.notify(f"reconnected to {describe(self.url)}")

    def retrying(self, call: Callable[[], T], resolve: Callable[[], Any] | None = None) -> T:
        """``call()``, retried while the failure is transient; other database errors become
        a ``StorageError``. After a transient failure ``resolve()`` (if given) reads back
        whether the failed call's write happened: anything but None is the result."""
        deadline: float | None = None
        delay = 0.2
        in_doubt = lost = False
        while True:
            try:
                if in_doubt and resolve is not None:
                    outcome = resolve()
                    if outcome is not None:
                        self._recovered(lost)
                        return outcome
                result = call()
                self._recovered(lost)
                return result
            except Exception as error:
                if not is_database_error(error):
                    cause = foreign(error)
                    if cause is None:
                        raise
                    raise cause from None
                if not is_transient(error):
                    raise storage_error(self.url, error) from error
                conflict = is_conflict(error)
                if not conflict:
                    self.health.lost()
                in_doubt = True
                now = time.monotonic()
                if not conflict and not lost:
                    lost = True
                    self.notify(f"lost the connection to {describe(self.url)} ({first_line(error)}); "
                                f"reconnecting for up to {self.patience:.0f} s")
                elif conflict and deadline is None:
                    self.notify(f"a transaction on {describe(self.url)} conflicted with another "
                                f"({first_line(error)}); retrying for up to {self.patience:.0f} s")
                if deadline is None:
                    deadline = now + self.patience
                elif now >= deadline:
                    raise DatabaseLost(
                        f"{describe(self.url)} unreachable for {self.patience:.0f} s ({first_line(error)}); "
                        f"a running trial is retried by another worker once the database is back: "
                        f"restart this worker then"
                    ) from None
                time.sleep(delay)
                delay = min(delay * 2, 5.0)

    def attempt(self, call: Callable[[], Any], what: str) -> bool:
        """``call()`` once, for a caller with its own rhythm (the heartbeat): True when it
        reached the database. A lost connection is only noted in the health; any other
        failure is also said, naming ``what``. Never raises."""
        try:
            call()
        except Exception as error:
            if is_transient(error):
                if not is_conflict(error):
                    self.health.lost()
            else:
                self.notify(f"{what} failed: {error}")
            return False
        self.health.ok()
        return True
