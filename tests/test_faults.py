"""Fault injection against real workers and a real PostgreSQL server: every slow fault test.

Each test breaks something on purpose (kill -9 inside the claim, a commit whose reply is
lost, SIGSTOP past the grace period, a network partition, a server stop, a full disk)
and then checks the same end state: exactly the budget of finished trials, nothing
RUNNING or WAITING, every worker exited, no trial of a live worker failed, and nothing
in the artifact directory but the kept weights.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
import sqlalchemy
from optuna.trial import TrialState

from search import keys
from tests.support.postgres import PostgresServer
from tests.support.proxy import FaultProxy
from tests.support.workers import (REPLY_TIMEOUT, create_slow_study, logs, run_search, start_worker, wait_all,
                                   wait_until, worker_args)

# Heartbeat every second, presumed dead after 3: faults are seen quickly.
BEAT = 1.0
GRACE = 3.0
# An outage past the reply timeout the workers are given, the pool's silent reconnect after
# a failed pre-ping (a 5 s connect timeout) and the grace period: 15 s.
OUTAGE = 3 * REPLY_TIMEOUT


def assert_clean_end(url: str, study_name: str, budget: int, artifacts: Path,
                     crashed: int = 0) -> list[optuna.trial.FrozenTrial]:
    """The end state every fault must leave; ``crashed``: trials whose worker really died."""
    trials = optuna.load_study(study_name=study_name, storage=url).get_trials(deepcopy=False)
    current = [t for t in trials if keys.CONTINUED_BY not in t.system_attrs]
    assert len(current) == budget, [(t.number, t.state) for t in trials]
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in current), \
        [(t.number, t.state, t.user_attrs.get(keys.FAIL_REASON)) for t in current]
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert len(failed) == crashed, [(t.number, t.system_attrs.get(keys.FAIL_CAUSE)) for t in failed]
    successors = [t.system_attrs[keys.CONTINUED_BY] for t in failed]
    assert len(set(successors)) == len(successors)  # one continuation each, never two
    by_number = {t.number: t for t in trials}
    for trial in failed:
        retry = by_number[trial.system_attrs[keys.CONTINUED_BY]]
        assert trial.number in retry.system_attrs[keys.RETRY_HISTORY]
        assert trial.params.items() <= retry.params.items() and keys.CHECKPOINT not in trial.user_attrs

    listed = {key.removeprefix(keys.ARTIFACTS_PREFIX) for t in trials for key in t.system_attrs
              if key.startswith(keys.ARTIFACTS_PREFIX)}
    on_disk = {path.name for path in artifacts.iterdir() if path.is_file()}
    assert on_disk == listed, (on_disk, listed)
    assert not list((artifacts / "checkpoints").iterdir())
    for trial in trials:
        assert trial.user_attrs.get(keys.CHECKPOINT) is None, trial.number
    return trials


def running_with_checkpoint(url: str, study_name: str, pid: int | None = None) -> optuna.trial.FrozenTrial | None:
    trials = optuna.load_study(study_name=study_name, storage=url).get_trials(deepcopy=False)
    for trial in trials:
        worker = trial.user_attrs.get(keys.WORKER, "")
        if (trial.state == TrialState.RUNNING and (trial.user_attrs.get(keys.CHECKPOINT) or {}).get("epoch")
                and (pid is None or worker.endswith(f"/{pid}"))):
            return trial
    return None


@pytest.fixture
def proxy(postgres: PostgresServer) -> Iterator[FaultProxy]:
    proxy = FaultProxy(postgres.port)
    yield proxy
    proxy.close()


def through(proxy: FaultProxy, url: str) -> str:
    host, rest = url.rsplit("@", 1)
    return f"{host}@127.0.0.1:{proxy.port}/{rest.split('/', 1)[1]}"


def test_kill_9_between_claim_and_first_beat_is_retried(postgres, proxy, medium_fashion_dir, tmp_path):
    """The victim's host goes silent the instant its claim commits (the claim's reply gets
    through, nothing after it does), so it holds a RUNNING trial and never starts that
    trial's heartbeat; then it is killed."""
    url = postgres.new_database()
    create_slow_study(url, "claim", n_trials=2, epochs=2)
    proxy.partition_after_commit(keys.OWNER)  # the claim's transaction writes the owner token
    victim = start_worker(tmp_path / "victim.log", *worker_args(through(proxy, url), "claim", medium_fashion_dir,
                                                                tmp_path / "a", 2, 2, heartbeat=BEAT, grace=GRACE))
    wait_until(lambda: [t for t in optuna.load_study(study_name="claim", storage=url).get_trials()
                        if t.state == TrialState.RUNNING], timeout=120)
    assert proxy.cuts == 1 and not proxy.flowing.is_set()
    victim.kill()
    victim.wait()
    args = worker_args(url, "claim", medium_fashion_dir, tmp_path / "a", 2, 2, heartbeat=BEAT, grace=GRACE)
    survivor = start_worker(tmp_path / "survivor.log", *args)
    assert survivor.wait(timeout=300) == 0, logs([tmp_path / "survivor.log"])
    trials = assert_clean_end(url, "claim", 2, tmp_path / "a", crashed=1)
    assert trials[0].system_attrs[keys.FAIL_CAUSE] == "stale"
    assert "epoch 1/2" not in (tmp_path / "victim.log").read_text()  # it never trained


def test_lost_reply_to_the_claim_commit_is_read_back(postgres, proxy, medium_fashion_dir, tmp_path):
    url = postgres.new_database()
    create_slow_study(url, "claimreply", n_trials=2, epochs=2)
    proxy.cut_after_commit(keys.OWNER)  # the claim's transaction writes the owner token
    args = worker_args(through(proxy, url), "claimreply", medium_fashion_dir, tmp_path / "a", 2, 2,
                       heartbeat=BEAT, grace=GRACE)
    worker = start_worker(tmp_path / "w.log", *args)
    assert worker.wait(timeout=300) == 0, logs([tmp_path / "w.log"])
    assert proxy.cuts == 1
    assert "lost the connection" in (tmp_path / "w.log").read_text()
    trials = assert_clean_end(url, "claimreply", 2, tmp_path / "a")
    assert len(trials) == 2  # the in-doubt claim was found, not claimed again


def test_lost_reply_to_the_retry_creation_makes_one_retry(postgres, proxy, medium_fashion_dir, tmp_path):
    url = postgres.new_database()
    create_slow_study(url, "retryreply", n_trials=2, epochs=3)
    args = worker_args(url, "retryreply", medium_fashion_dir, tmp_path / "a", 2, 3, heartbeat=BEAT, grace=GRACE)
    victim = start_worker(tmp_path / "victim.log", *args)
    dead = wait_until(lambda: running_with_checkpoint(url, "retryreply"), timeout=120)
    victim.kill()
    victim.wait()
    proxy.cut_after_commit(keys.FAIL_CAUSE)  # written only by the fail+retry transaction
    survivor = start_worker(tmp_path / "survivor.log",
                            *worker_args(through(proxy, url), "retryreply", medium_fashion_dir, tmp_path / "a",
                                         2, 3, heartbeat=BEAT, grace=GRACE))
    assert survivor.wait(timeout=300) == 0, logs([tmp_path / "survivor.log"])
    assert proxy.cuts == 1
    trials = assert_clean_end(url, "retryreply", 2, tmp_path / "a", crashed=1)
    retries = [t for t in trials if t.system_attrs.get(keys.FAILED_TRIAL) == dead.number]
    assert len(retries) == 1 and retries[0].user_attrs[keys.RESUMED_FROM] >= 1


def test_sigstop_past_the_grace_period_then_sigcont(postgres, medium_fashion_dir, tmp_path):
    url = postgres.new_database()
    create_slow_study(url, "stop", n_trials=3, epochs=4)
    args = worker_args(url, "stop", medium_fashion_dir, tmp_path / "a", 3, 4, heartbeat=BEAT, grace=GRACE)
    paths = [tmp_path / "frozen.log", tmp_path / "other.log"]
    frozen, other = (start_worker(path, *args) for path in paths)
    victim = wait_until(lambda: running_with_checkpoint(url, "stop", frozen.pid), timeout=120)
    frozen.send_signal(signal.SIGSTOP)
    try:
        wait_until(lambda: optuna.load_study(study_name="stop", storage=url).trials[victim.number].state
                   == TrialState.FAIL, timeout=120)
    finally:
        frozen.send_signal(signal.SIGCONT)
    assert wait_all([frozen, other], timeout=300) == [0, 0], logs(paths)
    assert "taken over by a retry" in paths[0].read_text()
    trials = assert_clean_end(url, "stop", 3, tmp_path / "a", crashed=1)
    assert trials[victim.number].system_attrs[keys.FAIL_CAUSE] == "stale"


def test_a_partition_past_the_reply_timeout_fails_no_trial(postgres, proxy, medium_fashion_dir, tmp_path):
    url = postgres.new_database()
    create_slow_study(url, "partition", n_trials=3, epochs=3)
    args = worker_args(through(proxy, url), "partition", medium_fashion_dir, tmp_path / "a", 3, 3,
                       heartbeat=BEAT, grace=GRACE, extra=["--reply-timeout", str(REPLY_TIMEOUT)])
    paths = [tmp_path / "w0.log", tmp_path / "w1.log"]
    workers = [start_worker(path, *args) for path in paths]
    wait_until(lambda: running_with_checkpoint(url, "partition"), timeout=120)
    proxy.partition()
    time.sleep(OUTAGE)
    proxy.heal()
    assert wait_all(workers, timeout=400) == [0, 0], logs(paths)
    said = "".join(path.read_text() for path in paths)
    assert "lost the connection" in said and "reconnected" in said, said
    assert_clean_end(url, "partition", 3, tmp_path / "a")


def test_a_server_stop_past_the_grace_period_fails_no_trial(postgres, medium_fashion_dir, tmp_path):
    url = postgres.new_database()
    create_slow_study(url, "serverstop", n_trials=3, epochs=3)
    args = worker_args(url, "serverstop", medium_fashion_dir, tmp_path / "a", 3, 3, heartbeat=BEAT, grace=GRACE)
    paths = [tmp_path / "w0.log", tmp_path / "w1.log"]
    workers = [start_worker(path, *args) for path in paths]
    wait_until(lambda: running_with_checkpoint(url, "serverstop"), timeout=120)
    postgres.pg_ctl("stop")
    time.sleep(OUTAGE)
    postgres.pg_ctl("start")
    assert wait_all(workers, timeout=400) == [0, 0], logs(paths)
    assert "reconnected" in "".join(path.read_text() for path in paths)
    assert_clean_end(url, "serverstop", 3, tmp_path / "a")


def test_an_outage_past_the_patience_ends_workers_and_retries_each_trial_once(postgres, medium_fashion_dir,
                                                                             tmp_path):
    url = postgres.new_database()
    create_slow_study(url, "longoutage", n_trials=2, epochs=4)
    args = worker_args(url, "longoutage", medium_fashion_dir, tmp_path / "a", 2, 4, heartbeat=BEAT, grace=GRACE,
                       extra=["--db-patience", "5"])
    paths = [tmp_path / "w0.log", tmp_path / "w1.log"]
    workers = [start_worker(path, *args) for path in paths]
    wait_until(lambda: running_with_checkpoint(url, "longoutage"), timeout=120)
    running = optuna.load_study(study_name="longoutage", storage=url).get_trials(states=(TrialState.RUNNING,))
    postgres.pg_ctl("stop")
    try:
        codes = wait_all(workers, timeout=120)
    finally:
        postgres.pg_ctl("start")
    assert codes == [1, 1], logs(paths)
    for path in paths:  # one line each, naming the storage and what happens next
        assert "unreachable for 5 s" in path.read_text() and "restart this worker" in path.read_text()
    survivor = start_worker(tmp_path / "after.log", *args)
    assert survivor.wait(timeout=300) == 0, logs([tmp_path / "after.log"])
    trials = assert_clean_end(url, "longoutage", 2, tmp_path / "a", crashed=len(running))
    assert all(t.system_attrs.get(keys.RETRY_HISTORY, [None]) == [t.system_attrs.get(keys.FAILED_TRIAL)]
               for t in trials if t.state != TrialState.FAIL)  # one retry each, no more


@pytest.fixture
def small_tablespace(postgres: PostgresServer) -> Iterator[tuple[str, Path]]:
    """A database whose tables live on an 8 MB filesystem (its WAL does not): a full disk
    fails writes with SQLSTATE 53100 instead of stopping the server."""
    mount = postgres.root / "small"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m,mode=0700", "tmpfs", str(mount)], check=True)
    subprocess.run(["chown", "postgres:postgres", str(mount)], check=True)
    admin = sqlalchemy.create_engine(postgres.url(), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            connection.execute(sqlalchemy.text(f"CREATE TABLESPACE small LOCATION '{mount}'"))
            connection.execute(sqlalchemy.text("CREATE DATABASE fulldisk TABLESPACE small"))
        yield postgres.url("fulldisk"), mount
    finally:
        try:
            with admin.connect() as connection:
                connection.execute(sqlalchemy.text("DROP DATABASE IF EXISTS fulldisk WITH (FORCE)"))
                connection.execute(sqlalchemy.text("DROP TABLESPACE IF EXISTS small"))
        finally:
            admin.dispose()
            subprocess.run(["umount", "--lazy", str(mount)], check=True)


def fill(directory: Path) -> Path:
    filler = directory / "filler"
    with open(filler, "wb") as handle:
        try:
            while True:
                handle.write(b"\0" * (1 << 20))
                handle.flush()
        except OSError:
            pass
    return filler


def test_a_full_database_disk_is_one_line_then_the_study_finishes(small_tablespace, medium_fashion_dir, tmp_path):
    url, mount = small_tablespace
    optuna.storages.RDBStorage(url).engine.dispose()  # the schema, while there is room
    filler = fill(mount)
    args = worker_args(url, "full", medium_fashion_dir, tmp_path / "a", 2, 2, heartbeat=BEAT, grace=GRACE)
    started = time.monotonic()
    done = run_search("worker", *args, timeout=60)
    assert time.monotonic() - started < 20
    assert done.returncode == 2, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "No space left on device" in lines[0], done.stderr
    assert "free disk space on the database server" in lines[0]

    os.unlink(filler)
    done = run_search("worker", *args, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert_clean_end(url, "full", 2, tmp_path / "a")


def test_a_full_artifact_directory_requeues_the_trial_and_stops_with_one_line(postgres, medium_fashion_dir,
                                                                               tmp_path):
    url = postgres.new_database()
    create_slow_study(url, "fullart", n_trials=2, epochs=3)
    artifacts = tmp_path / "art"
    artifacts.mkdir()
    # Room for the start-up probe, not for one checkpoint of this model (~22 MB with Adam's state).
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(artifacts)], check=True)
    try:
        done = run_search("worker", *worker_args(url, "fullart", medium_fashion_dir, artifacts, 2, 3,
                                                 heartbeat=BEAT, grace=GRACE), timeout=300)
        assert done.returncode == 2, done.stdout + done.stderr
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and "No space left on device" in lines[0], done.stderr
        assert "free space in" in lines[0] and str(artifacts) in lines[0]
        assert "re-queued as trial" in done.stdout
        trials = optuna.load_study(study_name="fullart", storage=url).get_trials(deepcopy=False)
        assert [t.state for t in trials] == [TrialState.FAIL, TrialState.WAITING, TrialState.WAITING], (
            [(t.number, t.state, t.system_attrs) for t in trials], done.stdout)
        assert trials[0].system_attrs[keys.FAIL_CAUSE] == "stopped"
        assert not [p for p in artifacts.rglob("*") if p.is_file()]  # no partial file left behind
    finally:
        subprocess.run(["umount", "--lazy", str(artifacts)], check=False)


def test_an_object_store_gone_longer_than_the_patience_stops_the_worker_and_requeues(s3, postgres, medium_fashion_dir,
                                                                                   tmp_path):
    """The store refuses connections from just after the first checkpoint on: the next
    checkpoint is skipped with one warning, training goes on, and the final weights are
    retried for --db-patience; then the worker ends with one line (exit 1), its trial
    re-queued for another worker, as for a lost database."""
    url, bucket = postgres.new_database(), s3.new_bucket()
    create_slow_study(url, "gone", n_trials=1, epochs=3)
    gate = FaultProxy(s3.port)
    args = worker_args(url, "gone", medium_fashion_dir, f"s3://{bucket}/x", 1, 3, heartbeat=BEAT, grace=GRACE,
                       extra=["--db-patience", "5"])
    worker = start_worker(tmp_path / "w.log", *args, env=s3.env(endpoint=f"http://127.0.0.1:{gate.port}"))
    try:
        wait_until(lambda: running_with_checkpoint(url, "gone"), timeout=120)
        gate.close()  # connections refused from now on: the store is down
        assert worker.wait(timeout=180) == 1, logs([tmp_path / "w.log"])
    finally:
        gate.close()
    log = (tmp_path / "w.log").read_text()
    assert "checkpoint was not written (the artifact store is unavailable); training goes on" in log
    errors = [line for line in log.splitlines() if line.startswith("search: error: ")]
    assert len(errors) == 1 and "the artifact store was unavailable for 5 s" in errors[0], log
    assert "re-queued for another worker: restart this worker once the store is back" in errors[0]
    trials = optuna.load_study(study_name="gone", storage=url).get_trials()
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.WAITING]
    assert trials[0].system_attrs[keys.FAIL_CAUSE] == "stopped"
