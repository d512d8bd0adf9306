"""The database is no single point of failure: workers given a several-host URL ride out
the primary's death and its standby's promotion, and lose no finished trial.

A primary and a synchronous streaming standby (``synchronous_standby_names = '*'``,
``synchronous_commit = on``: a commit is acknowledged once the standby has it), started
by the test. Workers get both, in libpq's form, with ``target_session_attrs=read-write``.
Mid-search the primary is killed (-9) and the standby promoted 3 s later.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
import sqlalchemy
from optuna.trial import TrialState

from search import keys
from search.storage import open_storage
from tests.support.postgres import PostgresServer
from tests.support.workers import (
    REPLY_TIMEOUT, create_slow_study, logs, run_search, search_env, start_worker, wait_all, wait_until, worker_args,
)

SYNCHRONOUS = "-c synchronous_standby_names='*' -c synchronous_commit=on"


@pytest.fixture
def pair() -> Iterator[tuple[PostgresServer, PostgresServer]]:
    primary, standby = PostgresServer(settings=SYNCHRONOUS), PostgresServer()
    primary.start()
    try:
        standby.start_standby_of(primary)
        yield primary, standby
    finally:
        standby.stop()
        primary.stop()


def new_database(primary: PostgresServer, standby: PostgresServer) -> str:
    """A fresh database on the primary, once the standby has replayed it (a synchronous
    commit is on the standby's disk, not yet necessarily visible there); its name."""
    database = primary.new_database().rsplit("/", 1)[1]
    engine = sqlalchemy.create_engine(standby.url(), poolclass=sqlalchemy.pool.NullPool)
    try:
        query = sqlalchemy.text("SELECT count(*) FROM pg_database WHERE datname = :name")
        def replayed() -> bool:
            with engine.connect() as connection:
                return connection.execute(query, {"name": database}).scalar() == 1
        wait_until(replayed, timeout=30)
    finally:
        engine.dispose()
    return database


def both(primary: PostgresServer, standby: PostgresServer, database: str) -> str:
    """The pair as libpq names it: the primary first, and only a writable session will do."""
    return (f"postgresql://postgres@127.0.0.1:{primary.port},127.0.0.1:{standby.port}/{database}"
            f"?target_session_attrs=read-write")


def logged_finished(text: str) -> set[int]:
    """The trials the workers said they finished."""
    return {int(number) for number in re.findall(r"trial (\d+) (?:complete|pruned)", text)}


def test_workers_ride_out_a_failover_and_lose_no_finished_trial(pair, medium_fashion_dir, tmp_path):
    primary, standby = pair
    database = new_database(primary, standby)
    direct = primary.url(database)
    create_slow_study(direct, "ha", n_trials=8, epochs=3)
    url = both(primary, standby, database)
    args = worker_args(url, "ha", medium_fashion_dir, tmp_path / "artifacts", 8, 3, heartbeat=1, grace=4)
    paths = [tmp_path / f"worker{k}.log" for k in range(3)]
    workers = [start_worker(path, *args) for path in paths]

    wait_until(lambda: len(logged_finished(logs(paths))) >= 2, timeout=300)
    primary.kill()
    killed = time.monotonic()
    time.sleep(3)
    standby.promote()
    assert wait_all(workers, timeout=600) == [0, 0, 0], logs(paths)
    said = logs(paths)
    assert "lost the connection to PostgreSQL at 127.0.0.1:" in said and "reconnected to" in said

    # Everything is in the new primary: every trial a worker logged as finished, finished;
    # exactly the budget; nothing left running or queued; no trial of a live worker failed.
    new_primary = standby.url(database)
    trials = optuna.load_study(study_name="ha", storage=new_primary).get_trials(deepcopy=False)
    by_number = {t.number: t for t in trials}
    assert all(by_number[number].state.is_finished() for number in logged_finished(said)), said
    current = [t for t in trials if keys.CONTINUED_BY not in t.system_attrs]
    assert len(current) == 8 and all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in current)
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING, TrialState.FAIL)], \
        [(t.number, t.state) for t in trials]
    # The same URL serves the read-only commands, and says which hosts it names.
    status = run_search("status", "--storage", url)
    assert status.returncode == 0 and "finished 8 " in status.stdout, status.stderr
    assert time.monotonic() - killed < 600


def test_a_url_naming_only_hosts_that_are_down_says_which(tmp_path):
    line = run_search("status", "--storage", "postgresql://u@127.0.0.1:9,127.0.0.1:10/db?target_session_attrs=read-write")
    assert line.returncode == 2
    assert "cannot reach PostgreSQL at 127.0.0.1:9,127.0.0.1:10 (database 'db')" in line.stderr, line.stderr


def test_sqlalchemys_form_of_the_pair_works_too_and_with_optunas_own_tools(pair, fashion_dir, tmp_path):
    primary, standby = pair
    database = new_database(primary, standby)
    # The standby is named first, and refuses to write: libpq goes on to the primary.
    url = (f"postgresql://postgres@/{database}?host=127.0.0.1:{standby.port}&host=127.0.0.1:{primary.port}"
           f"&target_session_attrs=read-write")
    storage = open_storage(url)
    try:
        with storage.transactions.connect() as connection:
            assert connection.execute(sqlalchemy.text("SELECT inet_server_port()")).scalar() == primary.port
    finally:
        storage.close()
    done = run_search("run", "--storage", url, "--study", "pair", "--data-dir", str(fashion_dir), "--n-trials", "1",
                      "--epochs", "1", "--device", "cpu", "--artifacts", str(tmp_path / "a"))
    assert done.returncode == 0, done.stderr
    studies = subprocess.run([Path(sys.executable).parent / "optuna", "studies", "--storage", url, "-f", "json"],
                             capture_output=True, text=True, timeout=120, env=search_env())
    assert studies.returncode == 0 and [s["name"] for s in json.loads(studies.stdout)] == ["pair"], studies.stderr


def finished_numbers(url: str) -> set[int]:
    engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
    try:
        with engine.connect() as connection:
            return set(connection.execute(sqlalchemy.text(
                "SELECT number FROM trials WHERE state IN ('COMPLETE', 'PRUNED')")).scalars())
    finally:
        engine.dispose()


def test_a_split_brain_loses_only_what_the_cut_off_primary_never_acknowledged(pair, medium_fashion_dir, tmp_path):
    """The standby is promoted while the old primary still runs (no fencing). The old
    primary, its synchronous standby gone, commits nothing it can acknowledge: workers
    still on it stall, their replies time out. Then the operator stops it (what they must
    do) and the workers finish on the new primary, at exactly the budget; a write the old
    primary made only locally is gone with it, and its slot runs again."""
    primary, standby = pair
    database = new_database(primary, standby)
    direct = primary.url(database)
    create_slow_study(direct, "split", n_trials=6, epochs=2)
    url = both(primary, standby, database)
    args = worker_args(url, "split", medium_fashion_dir, tmp_path / "artifacts", 6, 2, heartbeat=1, grace=4,
                       extra=["--db-patience", "600", "--reply-timeout", str(REPLY_TIMEOUT)])
    paths = [tmp_path / f"worker{k}.log" for k in range(2)]
    workers = [start_worker(path, *args) for path in paths]
    wait_until(lambda: len(logged_finished(logs(paths))) >= 2, timeout=300)
    standby.promote()  # the old primary runs on: a split brain
    promoted = finished_numbers(standby.url(database))
    time.sleep(2 * REPLY_TIMEOUT)  # past a reply timeout: workers on the old primary wait for a commit it cannot acknowledge
    assert finished_numbers(standby.url(database)) == promoted  # nothing written to the new primary meanwhile
    stalled = set(logged_finished(logs(paths)))
    primary.stop()  # the operator fences the old primary
    assert wait_all(workers, timeout=600) == [0, 0], logs(paths)
    trials = optuna.load_study(study_name="split", storage=standby.url(database)).get_trials(deepcopy=False)
    current = [t for t in trials if keys.CONTINUED_BY not in t.system_attrs]
    assert len(current) == 6 and all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in current)
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    assert promoted <= {t.number for t in trials if t.state.is_finished()}  # what both had is kept
    assert stalled >= promoted
