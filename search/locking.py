"""Cross-process locks that make study set-up race-free.

PostgreSQL: a transaction-level advisory lock on a connection of its own, held for as
long as that transaction stays open. The server releases it when the holder dies, and
it works through a transaction-pooling PgBouncer too (the open transaction keeps its
server connection), where a session-level lock would not. If the lock's connection is
lost while the body runs, another worker may have held the lock at the same time: the
final check raises a connection error, and the caller redoes the (repeatable) body.
SQLite: an ``flock`` on a file beside the database (released by the kernel likewise).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
from collections.abc import Iterator
from pathlib import Path

import sqlalchemy
from sqlalchemy.engine import URL

from search.database import single_connection_engine


def lock_key(name: str) -> int:
    """A stable signed 64-bit key for ``pg_advisory_xact_lock``."""
    return int.from_bytes(hashlib.sha256(f"hpsearch:{name}".encode()).digest()[:8], "big", signed=True)


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    with open(path, "a+b") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextlib.contextmanager
def named_lock(url: URL, name: str) -> Iterator[None]:
    """Hold the lock ``name`` for the database at ``url``."""
    if url.get_backend_name() == "sqlite":
        database = Path(url.database).expanduser().resolve()
        with _file_lock(database.with_name(f"{database.name}.{name}.lock")):
            yield
        return
    engine = single_connection_engine(url)
    try:
        with engine.connect() as connection, connection.begin():
            connection.execute(sqlalchemy.text("SELECT pg_advisory_xact_lock(:key)"), {"key": lock_key(name)})
            yield
            connection.execute(sqlalchemy.text("SELECT 1"))  # still ours? (see the module docstring)
    finally:
        engine.dispose()


def schema_lock(url: URL) -> contextlib.AbstractContextManager[None]:
    return named_lock(url, "schema")
