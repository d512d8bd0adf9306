"""Optuna's ``RDBStorage``, opened (on tables that exist) or created, never holding one
server connection while it waits for another.

Optuna's start-up holds a session's transaction open while it reads alembic's version on
a second pooled connection (``check_table_schema_compatibility``, and ``_init_alembic`` on
new tables). Behind a transaction-pooling PgBouncer with N server connections, N workers
starting at once each held one and waited for another until the reply timeout (measured:
6 workers, a pool of 2, every one failed after 30 s). So:

* opening skips Optuna's check: ``optuna_adapter.schema_state`` has already checked the
  schema version, in one transaction, before anything opens;
* creating runs Optuna's start-up on an engine of one connection (``StaticPool``: every
  checkout is that connection, so the nested reads share it), then disposes of it; the
  storage the worker uses is opened afresh.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy
from optuna.storages import RDBStorage
from sqlalchemy.engine import URL

from search.storage import optuna_adapter
from search.storage.url import is_sqlite


def open_tables(url: URL, kwargs: dict[str, Any]) -> RDBStorage:
    """Optuna's storage on tables whose schema ``schema_state`` has checked."""
    return RDBStorage(url.render_as_string(hide_password=False), engine_kwargs=kwargs,
                      skip_table_creation=True, skip_compatibility_check=True)


def create_tables(url: URL, kwargs: dict[str, Any]) -> None:
    """Optuna's tables and this project's indexes where missing (the caller holds the
    schema lock), on one server connection."""
    one = {"poolclass": sqlalchemy.pool.StaticPool}
    one.update({key: kwargs[key] for key in ("connect_args", "creator") if key in kwargs})
    rdb = RDBStorage(url.render_as_string(hide_password=False), engine_kwargs=kwargs if is_sqlite(url) else one)
    try:
        optuna_adapter.create_indexes(rdb.engine)
    finally:
        rdb.engine.dispose()
