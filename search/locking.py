"""Cross-process locks that make study set-up race-free.

PostgreSQL: a session advisory lock (released by the server if the holder dies).
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

from search.storage import single_connection_engine


def lock_key(name: str) -> int:
    """A stable signed 64-bit key for ``pg_advisory_lock``."""
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
def _advisory_lock(engine: sqlalchemy.Engine, name: str) -> Iterator[None]:
    with engine.connect() as connection:
        connection.execute(sqlalchemy.text("SELECT pg_advisory_lock(:key)"), {"key": lock_key(name)})
        try:
            yield
        finally:
            connection.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:key)"), {"key": lock_key(name)})
            connection.commit()


@contextlib.contextmanager
def named_lock(url: URL, name: str, engine: sqlalchemy.Engine | None = None) -> Iterator[None]:
    """Hold the lock ``name`` for the database at ``url`` (using ``engine``'s pool if given)."""
    if url.get_backend_name() == "sqlite":
        database = Path(url.database).expanduser().resolve()
        with _file_lock(database.with_name(f"{database.name}.{name}.lock")):
            yield
        return
    own_engine = engine is None
    if engine is None:
        engine = single_connection_engine(url)
    try:
        with _advisory_lock(engine, name):
            yield
    finally:
        if own_engine:
            engine.dispose()


def schema_lock(url: URL) -> contextlib.AbstractContextManager[None]:
    return named_lock(url, "schema")
