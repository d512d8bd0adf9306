"""Workers through a transaction-pooling PgBouncer: limits per transaction, locks, heartbeats.

The pool has fewer server connections than the workers hold client connections, so
consecutive transactions of one worker run on different server connections: anything
kept in a server session (a ``SET``, a session advisory lock) would be lost or leak.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import optuna
import pytest
import sqlalchemy
from optuna.trial import TrialState

from search.storage.locks import named_lock
from search.storage import open_storage
from tests.support.pooler import PgBouncer
from tests.support.postgres import PostgresServer
from tests.support.workers import (create_slow_study, kill_a_checkpointed_trials_worker, logs, start_worker, states,
                           wait_all, worker_args)


@pytest.fixture(scope="module")
def pooler(postgres: PostgresServer) -> Iterator[PgBouncer]:
    bouncer = PgBouncer(postgres, server_connections=3)
    bouncer.start()
    try:
        yield bouncer
    finally:
        bouncer.stop()


def test_every_transaction_gets_its_limits_and_read_only_stays_read_only(postgres, pooler):
    url = pooler.url(postgres.new_database())
    storage = open_storage(url)
    reader = open_storage(url, writable=False)
    try:
        for _ in range(6):  # transactions land on different server connections
            with storage.transactions.begin() as connection:
                shown = connection.exec_driver_sql("SHOW lock_timeout").scalar(), \
                    connection.exec_driver_sql("SHOW idle_in_transaction_session_timeout").scalar(), \
                    connection.exec_driver_sql("SHOW transaction_read_only").scalar()
                assert shown == ("15s", "1min", "off")  # the defaults: a 30 s reply timeout
        with reader.rdb.engine.begin() as connection:
            assert connection.exec_driver_sql("SHOW transaction_read_only").scalar() == "on"
            with pytest.raises(sqlalchemy.exc.InternalError, match="read-only transaction"):
                connection.exec_driver_sql("CREATE TABLE intruder (x int)")
    finally:
        storage.close()
        reader.close()


def test_the_set_up_lock_excludes_through_the_pooler(postgres, pooler):
    url = sqlalchemy.engine.make_url(pooler.url(postgres.new_database()))
    inside, overlaps = [], []

    def hold() -> None:
        with named_lock(url, "study:x"):
            inside.append(1)
            if len(inside) > 1:
                overlaps.append(len(inside))
            time.sleep(0.3)
            inside.pop()

    threads = [threading.Thread(target=hold) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not overlaps and not inside


def test_workers_through_the_pooler_finish_the_budget_and_resume_a_killed_workers_trial(
        postgres, pooler, medium_fashion_dir, tmp_path):
    url = pooler.url(postgres.new_database())
    create_slow_study(url, "pooled", n_trials=3, epochs=3)
    args = worker_args(url, "pooled", medium_fashion_dir, tmp_path / "artifacts", n_trials=3, epochs=3, heartbeat=1)
    logs_ = [tmp_path / f"worker{i}.log" for i in range(3)]
    workers = {process.pid: process for process in (start_worker(log, *args) for log in logs_)}

    victim = kill_a_checkpointed_trials_worker(url, "pooled", workers)
    assert wait_all(list(workers.values()), timeout=600) == [0, 0], logs(logs_)
    trials = optuna.load_study(study_name="pooled", storage=url).get_trials(deepcopy=False)
    retry = [t for t in trials if t.system_attrs.get("failed_trial") == victim.number]
    assert len(retry) == 1 and retry[0].state == TrialState.COMPLETE, logs(logs_)
    assert retry[0].user_attrs["resumed_from_epoch"] >= 1
    counts = states(url, "pooled")
    assert counts[TrialState.COMPLETE] + counts[TrialState.PRUNED] == 3
    assert counts[TrialState.RUNNING] == counts[TrialState.WAITING] == 0
    assert "lost the connection" not in logs(logs_) and "conflicted with another" not in logs(logs_)


@pytest.mark.parametrize("tables", ["new", "existing"])
def test_many_workers_open_the_storage_at_once_through_a_pool_of_two_server_connections(postgres, tables):
    """Opening never holds one transaction while it waits for a second server connection:
    Optuna's own start-up check does (a session reads the version, then another connection
    reads alembic's), so N workers starting at once behind a pool of N server connections
    would each hold one and wait for another until the reply timeout."""
    bouncer = PgBouncer(postgres, server_connections=2)
    bouncer.start()
    try:
        url = bouncer.url(postgres.new_database())
        if tables == "existing":
            open_storage(url).close()
        start = threading.Barrier(6)
        took, errors = [], []

        def open_one() -> None:
            start.wait()
            began = time.monotonic()
            try:
                open_storage(url).close()
            except Exception as error:  # noqa: BLE001 - reported below
                errors.append(repr(error))
            took.append(time.monotonic() - began)

        threads = [threading.Thread(target=open_one) for _ in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        assert not errors, errors
        assert len(took) == 6 and max(took) < 15, took  # far below the 30 s reply timeout
    finally:
        bouncer.stop()
