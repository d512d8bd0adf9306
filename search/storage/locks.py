"""Cross-process locks that make study set-up race-free.

PostgreSQL: a transaction-level advisory lock on a connection of its own, held for as
long as that transaction stays open. The server releases it when the holder dies, and
it works through a transaction-pooling PgBouncer too (the open transaction keeps its
server connection), where a session-level lock would not. Waiters poll with
``pg_try_advisory_xact_lock`` between short transactions instead of blocking: behind a
pooler, hundreds of blocked waiters would hold every server connection while the holder
waits for one to finish its work. If the lock's connection is
lost while the body runs, another worker may have held the lock at the same time: the
final check raises a connection error, and the caller redoes the (repeatable) body.
SQLite: an ``flock`` on a file in the temporary directory named after the database's
path (released by the kernel likewise; SQLite serves processes of one machine, which
share that directory), so nothing is ever created beside the database.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import random
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import sqlalchemy
from sqlalchemy.engine import URL

from search.storage.connection import single_connection_engine

LOCK_DIR = Path(tempfile.gettempdir()) / "hpsearch-locks"


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
def named_lock(url: URL, name: str, engine: sqlalchemy.Engine | None = None) -> Iterator[None]:
    """Hold the lock ``name`` for the database at ``url``, on a connection from ``engine``'s
    pool if given (a worker's two pooled connections then suffice), else on one of its own."""
    if url.get_backend_name() == "sqlite":
        database = str(Path(url.database).expanduser().resolve())
        # Hashed: a study name may hold characters a file name cannot ("/").
        digest = hashlib.sha256(f"{database}\0{name}".encode()).hexdigest()[:24]
        if not LOCK_DIR.is_dir():
            LOCK_DIR.mkdir(exist_ok=True)
            LOCK_DIR.chmod(0o1777)  # shared by every user's workers, like /tmp itself
        with _file_lock(LOCK_DIR / f"{digest}.lock"):
            yield
        return
    own = engine is None
    engine = single_connection_engine(url) if engine is None else engine
    try:
        with engine.connect() as connection:
            delay = 0.02
            while True:
                transaction = connection.begin()
                if connection.execute(sqlalchemy.text("SELECT pg_try_advisory_xact_lock(:key)"),
                                      {"key": lock_key(name)}).scalar():
                    break
                transaction.rollback()  # gives the server connection back while waiting
                time.sleep(delay * random.uniform(0.5, 1.5))
                delay = min(delay * 2, 1.0)
            with transaction:
                yield
                connection.execute(sqlalchemy.text("SELECT 1"))  # still ours? (see the module docstring)
    finally:
        if own:
            engine.dispose()


def schema_lock(url: URL) -> contextlib.AbstractContextManager[None]:
    return named_lock(url, "schema")
