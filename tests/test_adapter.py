"""The Optuna adapter's slot transitions and the storage's retry policy, on SQLite and PostgreSQL."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import replace

import optuna
import pytest
import sqlalchemy
from optuna.trial import TrialState

from search import keys
from search.storage import optuna_adapter
from search.errors import StorageError
from search.study.summary import trial_summary
from search.storage import ResilientStorage, open_storage
from search.study.join import join_study, study_lock
from search.study.spec import StudySpec
from tests.support.proxy import FaultProxy
from tests.support.workers import search_env

SPEC = StudySpec("slots", "fashion_mnist", 3)


@pytest.fixture(params=["sqlite", "postgresql"])
def storage(request, tmp_path, postgres) -> Iterator[ResilientStorage]:
    url = f"sqlite:///{tmp_path / 's.db'}" if request.param == "sqlite" else postgres.new_database()
    opened = open_storage(url, patience=20)
    yield opened
    opened.close()


def joined(storage: ResilientStorage, budget: int) -> tuple[optuna.Study, optuna_adapter.Slots]:
    study, _, _ = join_study(storage, replace(SPEC, n_trials=budget))
    return study, storage.slots(study)


def fetch(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    return study.get_trials(deepcopy=False)


def test_claim_makes_a_running_trial_with_its_heartbeat_and_owner(storage):
    study, slots = joined(storage, 2)
    first = slots.claim("host/1")
    trial = storage.rdb.get_trial(first)
    assert trial.state == TrialState.RUNNING and trial.datetime_start is not None
    assert trial.system_attrs[keys.OWNER].startswith("host/1#")
    with storage.transactions.connect() as connection:
        beats = connection.execute(sqlalchemy.text(f"SELECT count(*) FROM trial_heartbeats WHERE trial_id = {first}"))
        assert beats.scalar() == 1
    assert slots.claim("host/2") is not None
    assert slots.claim("host/3") is None  # the budget is 2
    assert slots.progress() == optuna_adapter.Progress(budget=2, complete=0, pruned=0, failed=0, running=2, waiting=0)


def test_concurrent_claims_create_exactly_the_budget(storage):
    study, slots = joined(storage, 25)
    claimed: list[int] = []

    def claimer(name: str) -> None:
        while (trial_id := slots.claim(name)) is not None:
            claimed.append(trial_id)

    threads = [threading.Thread(target=claimer, args=(f"t{k}",)) for k in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(claimed) == len(set(claimed)) == 25
    trials = fetch(study)
    assert sorted(t.number for t in trials) == list(range(25))


def test_joins_take_distinct_indexes_and_only_set_up_takes_the_lock(storage):
    joined(storage, 5)
    indexes: list[int] = []

    def join() -> None:
        indexes.append(join_study(storage, replace(SPEC, n_trials=5))[1])

    # While another process holds the study's set-up lock, joins that set nothing up go
    # through (each takes the next index in one statement); a budget raise waits for it.
    other = open_storage(storage.policy.url.render_as_string(hide_password=False))
    with study_lock(other, SPEC.name):
        threads = [threading.Thread(target=join) for _ in range(8)]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 30
        for thread in threads:
            thread.join(timeout=max(0.0, deadline - time.monotonic()))
        assert len(indexes) == 8
        raising = threading.Thread(target=join_study, args=(storage, replace(SPEC, n_trials=6)))
        raising.start()
        raising.join(timeout=3)
        assert raising.is_alive()
    other.close()
    raising.join(timeout=30)
    assert not raising.is_alive()
    assert sorted(indexes) == list(range(1, 9))  # the first join was index 0
    assert storage.get_study_system_attrs(optuna_adapter.study_id(joined(storage, 6)[0]))[keys.WORKERS] == 11


def test_the_summary_of_a_retried_trial_counts_every_attempt(storage):
    study, slots = joined(storage, 1)
    first = optuna_adapter.open_trial(study, slots.claim("w"))
    first.report(0.5, 1)
    time.sleep(0.3)
    slots.requeue(optuna_adapter.trial_id(first), "stale")
    retry = optuna_adapter.open_trial(study, slots.claim("w"))
    time.sleep(0.2)
    study.tell(retry, 0.9)
    trials = {trial.number: trial for trial in fetch(study)}
    summary = trial_summary(study, trials[retry.number])
    assert summary["attempts"] == 2
    assert summary["duration_s"] == pytest.approx(sum(t.duration.total_seconds() for t in trials.values()))
    assert summary["duration_s"] > trials[retry.number].duration.total_seconds() + 0.25


def test_requeue_moves_the_slot_to_one_retry_and_is_safe_to_repeat(storage):
    study, slots = joined(storage, 1)
    trial = optuna_adapter.open_trial(study, slots.claim("w"))
    trial.suggest_float("x", 0, 1)
    trial.report(0.5, 1)
    trial.set_user_attr(keys.SEED, 7)
    trial.set_user_attr(keys.CHECKPOINT, {"file": "c.pt", "epoch": 1, "trial": trial.number})
    successor = slots.requeue(optuna_adapter.trial_id(trial), "stale")
    assert slots.requeue(optuna_adapter.trial_id(trial), "stale") is None
    failed, retry = fetch(study)
    assert failed.state == TrialState.FAIL and retry.state == TrialState.WAITING and retry.number == successor
    assert failed.system_attrs[keys.CONTINUED_BY] == successor and failed.system_attrs[keys.FAIL_CAUSE] == "stale"
    assert keys.CHECKPOINT not in failed.user_attrs  # the pointer moved, it was not copied
    assert retry.user_attrs == {keys.SEED: 7, keys.CHECKPOINT: {"file": "c.pt", "epoch": 1, "trial": 0}}
    assert retry.params == failed.params and retry.intermediate_values == {1: 0.5}
    assert optuna.storages.RetryHeartbeatStaleTrialCallback.retried_trial_number(retry) == 0
    assert retry.system_attrs[keys.RETRY_HISTORY] == [0] and retry.system_attrs[keys.CRASHES] == 1
    progress = slots.progress()
    assert (progress.waiting, progress.finished, progress.done) == (1, 0, False)
    assert slots.claim("w2") == optuna_adapter.trial_id(retry)


def test_a_slot_that_crashes_too_often_starts_over_as_a_fresh_trial(storage):
    study, slots = joined(storage, 1)
    for _ in range(optuna_adapter.MAX_CRASHES):
        trial = optuna_adapter.open_trial(study, slots.claim("w"))
        trial.suggest_float("x", 0, 1)
        slots.requeue(optuna_adapter.trial_id(trial), "stopped")  # a stop is no crash
        slots.requeue(optuna_adapter.trial_id(trial), "stale")  # no-op: already failed
    trials = fetch(study)
    assert trials[-1].system_attrs[keys.CRASHES] == 0 and trials[-1].params == trials[0].params
    for _ in range(optuna_adapter.MAX_CRASHES + 1):
        slots.requeue(slots.claim("w"), "stale")
    *_, last_retry, fresh = fetch(study)
    assert last_retry.system_attrs[keys.CRASHES] == optuna_adapter.MAX_CRASHES
    assert fresh.state == TrialState.WAITING and fresh.params == {} and fresh.user_attrs == {}
    assert fresh.system_attrs == {keys.REPLACES: last_retry.number}
    assert slots.progress().budget == 1 and slots.progress().waiting == 1


def test_the_budget_holds_across_requeues_and_a_study_without_the_counter(storage):
    study, slots = joined(storage, 3)
    first = slots.claim("w")
    assert slots.claim("w") is not None
    slots.requeue(first, "stale")
    retry = slots.claim("w")  # the retry, not a new slot
    slots.requeue(retry, "stopped")
    assert slots.claim("w") not in (None, first, retry)  # the retry of the retry
    assert slots.claim("w") is not None  # the third slot
    assert slots.claim("w") is None
    # A study from before the counter: the next claim counts continued trials once.
    with storage.transactions.begin() as connection:
        connection.execute(sqlalchemy.text(f"DELETE FROM study_system_attributes WHERE key = '{keys.CONTINUED_COUNT}'"))
    assert slots.claim("w") is None
    study.set_user_attr(keys.BUDGET, 4)
    assert slots.claim("w") is not None and slots.claim("w") is None
    assert slots.progress().running == 4


def test_requeue_stale_spares_a_trial_with_a_fresh_heartbeat(storage):
    study, slots = joined(storage, 2)
    alive, dead = slots.claim("alive"), slots.claim("dead")
    time.sleep(2.2)
    storage.record_heartbeat(alive)
    assert slots.requeue_stale(grace_s=1.0) == [storage.rdb.get_trial(dead).number]
    assert storage.rdb.get_trial(alive).state == TrialState.RUNNING


def test_unregistered_weights_leave_the_artifact_list(storage):
    study, slots = joined(storage, 1)
    trial_id = slots.claim("w")
    optuna_adapter.register_artifact(storage, trial_id, "abc-1", "trial-0-weights.pt")
    frozen = storage.rdb.get_trial(trial_id)
    assert [meta.artifact_id for meta in optuna.artifacts.get_all_artifact_meta(frozen, storage=storage.rdb)] == ["abc-1"]
    storage.set_trial_state_values(trial_id, TrialState.COMPLETE, [0.5])
    slots.unregister_artifact(trial_id, "abc-1")
    assert optuna.artifacts.get_all_artifact_meta(storage.rdb.get_trial(trial_id), storage=storage.rdb) == []


def test_lost_reply_to_finishing_a_trial_is_read_back(postgres):
    url = postgres.new_database()
    proxy = FaultProxy(postgres.port)
    storage = open_storage(url.replace(f":{postgres.port}/", f":{proxy.port}/"), patience=20)
    try:
        study, slots = joined(storage, 1)
        trial_id = slots.claim("w")
        proxy.cut_after_commit("INSERT INTO trial_values")
        assert storage.set_trial_state_values(trial_id, TrialState.COMPLETE, [0.25]) is True
        assert proxy.cuts == 1
        assert storage.rdb.get_trial(trial_id).value == 0.25
    finally:
        storage.close()
        proxy.close()


def test_a_silent_server_gets_30_s_by_default_and_what_reply_timeout_says(postgres, monkeypatch):
    """The fault tests give their workers --reply-timeout 5 to be quick; the real defaults,
    and every limit that scales with the reply timeout, are asserted here."""
    from search.artifacts import backend
    from search.storage.connection import install_reply_timeout

    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    url = postgres.new_database()
    expected = {None: ("30000", "30", "10", "15s", "1min", 30), 7: ("7000", "7", "2", "3500ms", "14s", 7)}
    try:
        for given, (user_timeout, idle, interval, lock, idle_in_transaction, read) in expected.items():
            storage = open_storage(url, reply_timeout=given)
            try:
                with storage.transactions.begin() as connection:
                    dsn = connection.connection.dbapi_connection.get_dsn_parameters()
                    shown = (connection.exec_driver_sql("SHOW lock_timeout").scalar(),
                             connection.exec_driver_sql("SHOW idle_in_transaction_session_timeout").scalar())
                assert (dsn["tcp_user_timeout"], dsn["keepalives_idle"], dsn["keepalives_interval"]) == \
                    (user_timeout, idle, interval)
                assert shown == (lock, idle_in_transaction)
            finally:
                storage.close()
            found = backend("s3://bucket/prefix") if given is None else backend("s3://bucket/prefix", given)
            assert found.client.meta.config.read_timeout == read
        help_text = subprocess.run([sys.executable, "-m", "search.cli", "worker", "--help"], capture_output=True,
                                   text=True, env=search_env(), timeout=60).stdout
        assert "(default 30) [SEARCH_REPLY_TIMEOUT]" in " ".join(help_text.split())
    finally:
        install_reply_timeout(30)  # process-wide: as every other test expects it


def test_a_database_error_that_is_no_connection_loss_is_one_line_at_once(postgres):
    url = postgres.new_database()
    storage = open_storage(url, patience=60)
    try:
        study, slots = joined(storage, 1)
        trial_id = slots.claim("w")
        with storage.transactions.begin() as connection:
            connection.execute(sqlalchemy.text("ALTER TABLE trial_user_attributes RENAME COLUMN value_json TO v"))
        started = time.monotonic()
        with pytest.raises(StorageError) as raised:
            storage.set_trial_user_attr(trial_id, "k", 1)
        assert time.monotonic() - started < 10
        message = str(raised.value)
        assert message.startswith("PostgreSQL at 127.0.0.1:") and "value_json" in message
        assert "use a separate database" in message and "\n" not in message
    finally:
        storage.close()


def test_a_session_reused_after_its_connection_died_counts_as_connection_loss():
    """Optuna retries a failed query on the same session (``_get_trials``); what SQLAlchemy
    raises then is transient exactly when the first failure was."""
    import psycopg2

    from search.storage.failures import is_transient

    lost = sqlalchemy.exc.OperationalError("SELECT 1", {}, psycopg2.OperationalError("server closed the connection"),
                                           connection_invalidated=True)
    broken = sqlalchemy.exc.ProgrammingError("SELECT x", {}, psycopg2.ProgrammingError("column x does not exist"))
    for cause, expected in ((lost, True), (broken, False)):
        try:
            try:
                raise cause
            except sqlalchemy.exc.DBAPIError:
                raise sqlalchemy.exc.PendingRollbackError("Can't reconnect until invalid transaction is rolled back")
        except sqlalchemy.exc.PendingRollbackError as error:
            wrapped = optuna.exceptions.StorageInternalError("commit failed")
            wrapped.__cause__ = error
            assert is_transient(wrapped) is expected


def _finishing(storage: ResilientStorage, trial_id: int) -> sqlalchemy.Connection:
    """A worker's finish, halfway: its trial row locked and its value written, the state
    change (an update of ``trials``) still to come; the transaction is left open."""
    connection = storage.transactions.connect()
    connection.begin()
    connection.execute(sqlalchemy.text("SELECT state FROM trials WHERE trial_id = :t FOR UPDATE"), {"t": trial_id})
    connection.execute(sqlalchemy.text("INSERT INTO trial_values (trial_id, objective, value, value_type) "
                                       "VALUES (:t, 0, 0.5, 'FINITE')"), {"t": trial_id})
    return connection


def _start(url: str) -> subprocess.Popen:
    """What a new worker process does first: open the storage, ready to write."""
    return subprocess.Popen([sys.executable, "-c", "import sys; from search.storage import open_storage; "
                             "open_storage(sys.argv[1], patience=20).close()", url], env=search_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_workers_starting_together_take_no_lock_on_the_study_the_first_one_runs(postgres):
    """Workers started at the same instant on an empty database: the first creates the
    tables and indexes and starts a trial while the others, queued on the schema lock,
    still come to create them. Those find the indexes there and lock nothing (a CREATE
    INDEX IF NOT EXISTS locks its table before it looks: it waited for the first worker's
    open transaction, and deadlocked with its finish)."""
    url = postgres.new_database()
    storage = open_storage(url, patience=20)
    try:
        study, slots = joined(storage, 1)
        writing = _finishing(storage, slots.claim("w"))
        late = threading.Thread(target=optuna_adapter.create_indexes, args=(storage.rdb.engine,), daemon=True)
        try:
            late.start()
            late.join(10)
            assert not late.is_alive(), "a late start waited on the running trial's transaction"
        finally:
            writing.commit()
            writing.close()
            late.join(30)
    finally:
        storage.close()


def test_indexes_added_to_a_running_study_never_deadlock_with_a_finishing_trial(postgres):
    """Optuna's tables without this project's indexes (made by Optuna or an older version)
    while a worker finishes a trial: the start that adds them waits for that worker's
    transaction, and never holds one table's lock while it waits for another's (which the
    finish, writing ``trial_values`` then ``trials``, met as a deadlock)."""
    url = postgres.new_database()
    storage = open_storage(url, patience=20)
    try:
        study, slots = joined(storage, 1)
        trial_id = slots.claim("w")
        with storage.transactions.begin() as connection:
            connection.execute(sqlalchemy.text("DROP INDEX hpsearch_trials_number, hpsearch_values_best"))
        writing = _finishing(storage, trial_id)
        started = _start(url)
        try:
            waiting = sqlalchemy.text("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                                      "AND query LIKE 'CREATE INDEX%trial_values%'")
            deadline = time.monotonic() + 30
            with storage.rdb.engine.connect() as watching:
                while watching.execute(waiting).scalar() == 0:
                    assert time.monotonic() < deadline and started.poll() is None, "the start never met the lock"
                    time.sleep(0.1)
                    watching.rollback()
            writing.execute(sqlalchemy.text("UPDATE trials SET state = 'COMPLETE' WHERE trial_id = :t"),
                            {"t": trial_id})
            writing.commit()
        finally:
            writing.close()
            output, _ = started.communicate(timeout=30)
        assert started.returncode == 0, output
        assert optuna_adapter.has_indexes(storage.rdb.engine)
        assert storage.rdb.get_trial(trial_id).state == TrialState.COMPLETE
    finally:
        storage.close()


def test_a_deadlock_victim_is_retried_as_a_conflict_not_a_lost_connection(postgres):
    """A transaction the server rolls back as a deadlock's victim runs again; the worker
    says it met a conflict (not a lost connection), and its health (which times how long it
    has reached the database, before it may declare other workers dead) stays unbroken."""
    from search.storage.failures import RetryPolicy
    from search.storage.url import parse_url

    url = postgres.new_database()
    engine = sqlalchemy.create_engine(url)
    said: list[str] = []
    policy = RetryPolicy(parse_url(url), patience=20, notify=said.append)
    with engine.begin() as connection:
        connection.execute(sqlalchemy.text("CREATE TABLE pair (id int PRIMARY KEY, v int)"))
        connection.execute(sqlalchemy.text("INSERT INTO pair VALUES (1, 0), (2, 0)"))
    holds_two, call_holds_one = threading.Event(), threading.Event()

    def other() -> None:  # takes 2, then 1
        with engine.begin() as connection:
            connection.execute(sqlalchemy.text("UPDATE pair SET v = v + 1 WHERE id = 2"))
            holds_two.set()
            call_holds_one.wait(10)
            connection.execute(sqlalchemy.text("UPDATE pair SET v = v + 1 WHERE id = 1"))

    attempts = []

    def call() -> int:  # takes 1, then 2; checks for a deadlock first, so it is the victim
        attempts.append(1)
        with engine.begin() as connection:
            connection.execute(sqlalchemy.text("SET LOCAL deadlock_timeout = '100ms'"))
            connection.execute(sqlalchemy.text("UPDATE pair SET v = v + 10 WHERE id = 1"))
            if len(attempts) == 1:
                call_holds_one.set()
                time.sleep(0.3)  # the other transaction now waits for row 1
            connection.execute(sqlalchemy.text("UPDATE pair SET v = v + 10 WHERE id = 2"))
        return len(attempts)

    thread = threading.Thread(target=other)
    thread.start()
    try:
        assert holds_two.wait(10)
        assert policy.retrying(call) == 2
    finally:
        thread.join(20)
    assert policy.health.connected_for() > 0.3
    assert len(said) == 1 and "conflicted with another (deadlock detected); retrying" in said[0], said
    with engine.connect() as connection:
        assert connection.execute(sqlalchemy.text("SELECT v FROM pair ORDER BY id")).scalars().all() == [11, 11]
    engine.dispose()


def test_a_stop_signal_while_a_statement_is_prepared_stops_the_worker_as_anywhere(tmp_path):
    """SIGTERM raises ``WorkerStopped`` wherever the main thread is; SQLAlchemy wraps what is
    raised while it prepares a statement as a database error. The stop goes on as itself (the
    worker re-queues its trial and exits 143), never as a database error that blames the
    server's log (seen: a worker stopped by SIGTERM on SQLite exited 1 with
    "SQLite file ...: (WorkerStopped) SIGTERM; see the database server's log")."""
    import os
    import signal

    from search.storage.failures import RetryPolicy, one_line_error
    from search.storage.url import parse_url
    from search.worker.signals import StopSignals, WorkerStopped

    class Signalled(sqlalchemy.types.TypeDecorator):  # the signal arrives as the value is bound
        impl = sqlalchemy.Integer
        cache_ok = True

        def process_bind_param(self, value, dialect):
            os.kill(os.getpid(), signal.SIGTERM)
            return value

    url = f"sqlite:///{tmp_path / 'study.db'}"
    engine = sqlalchemy.create_engine(url)
    statement = sqlalchemy.select(sqlalchemy.bindparam("v", 1, type_=Signalled()))

    def call() -> int:
        with engine.connect() as connection:
            return connection.execute(statement).scalar()

    policy = RetryPolicy(parse_url(url), patience=5)
    try:
        with StopSignals().installed():
            with pytest.raises(WorkerStopped) as stopped:
                policy.retrying(call)
            assert stopped.value.signum == signal.SIGTERM
            with pytest.raises(sqlalchemy.exc.StatementError) as wrapped:
                call()
            said = one_line_error(policy.url, wrapped.value, StorageError, "retry")
            assert isinstance(said, WorkerStopped), said
    finally:
        engine.dispose()
