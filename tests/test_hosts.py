"""Many hosts that share nothing but the database and an object store, with faults at the
packet level: every slow multi-host test.

Hosts are network namespaces on one bridge (``tests.support.hosts``): PostgreSQL on one,
an S3-compatible store (moto's server) on another, three worker hosts with a private
directory each (their artifacts go to the bucket). One fault per test: a worker host cut
silently past the grace period, then back; a lossy link and a slow one; the database host
cut past the workers' reply timeout; the store host cut as long; a worker host lost with its disk; clocks ten
minutes apart. After each: exactly the budget of finished slots, nothing RUNNING or
WAITING, no trial of a live, connected worker failed, every worker exited 0, the bucket
within its bound, and every trial ends after it starts.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from search import keys
from tests.support.datafiles import write_fashion_mnist
from tests.support.hosts import Host, Network
from tests.support.postgres import PostgresServer
from tests.support.s3 import S3Server
from tests.support.workers import (REPLY_TIMEOUT, REPO, create_slow_study, logs, run_search, search_env, wait_all,
                                   wait_until)

BEAT, GRACE = 1.0, 4.0
# A server host's cut outlasts the workers' reply timeout (and the grace period): their
# connections time out, as every socket limit does, and they reconnect once it heals.
WORKERS = ("w1", "w2", "w3")


class Cluster:
    def __init__(self, network: Network, database: PostgresServer, store: S3Server) -> None:
        self.network, self.database, self.store = network, database, store

    def host(self, name: str) -> Host:
        return self.network.hosts[name]

    def worker(self, host: str, url: str, bucket: str, study: str, n_trials: int, epochs: int, data_dir: Path,
               env: dict[str, str] | None = None, storage: str | None = None) -> subprocess.Popen[bytes]:
        where = self.host(host)
        where.directory.mkdir(exist_ok=True)
        (where.directory / "tmp").mkdir(exist_ok=True)
        command = where.command(sys.executable, "-m", "search.cli", "worker", "--storage", storage or url,
                                "--study", study, "--data-dir", str(data_dir), "--artifacts", f"s3://{bucket}/{study}",
                                "--n-trials", str(n_trials), "--epochs", str(epochs), "--heartbeat-interval",
                                str(BEAT), "--grace-period", str(GRACE), "--device", "cpu", "--keep-best", "2",
                                "--reply-timeout", str(REPLY_TIMEOUT))
        log = open(where.directory / f"{study}.log", "wb")
        return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=where.directory,
                                env={**search_env(), **where.env(), **self.store.env(), **(env or {})})

    def said(self, study: str) -> str:
        """Every worker's whole log of ``study``."""
        return "\n".join(path.read_text(errors="replace") for name in WORKERS
                         if (path := self.host(name).directory / f"{study}.log").exists())

    def logs(self, study: str) -> str:
        return logs([self.host(name).directory / f"{study}.log" for name in WORKERS
                     if (self.host(name).directory / f"{study}.log").exists()])


@pytest.fixture(scope="module")
def hosts_fashion_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Half the medium set: three workers share two cores here, so an epoch takes two or
    three seconds, long enough for a fault to land mid-trial and short enough for the
    suite's bound (every fault of the issue in under six minutes)."""
    return write_fashion_mnist(tmp_path_factory.mktemp("fashion-hosts"), n_train=4800, n_test=300)


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    with Network() as network:
        db, s3 = network.add("db"), network.add("s3")
        for name in WORKERS:
            network.add(name)
        database = PostgresServer(host=db.address, within=db.command())
        store = S3Server(host=s3.address)
        database.start()
        try:
            store.start(prefix=s3.command())
            yield Cluster(network, database, store)
        finally:
            store.stop()
            database.stop()


def assert_clean_end(cluster: Cluster, url: str, study: str, bucket: str, budget: int,
                     crashed: int = 0) -> list[optuna.trial.FrozenTrial]:
    trials = optuna.load_study(study_name=study, storage=url).get_trials(deepcopy=False)
    current = [t for t in trials if keys.CONTINUED_BY not in t.system_attrs]
    assert len(current) == budget and all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in current), \
        [(t.number, t.state, t.user_attrs.get(keys.FAIL_REASON)) for t in trials]
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert len(failed) == crashed, [(t.number, t.system_attrs.get(keys.FAIL_CAUSE)) for t in failed]
    assert len({t.system_attrs[keys.CONTINUED_BY] for t in failed}) == len(failed)  # one continuation each
    for trial in trials:
        assert trial.user_attrs.get(keys.CHECKPOINT) is None
        assert trial.datetime_complete >= trial.datetime_start, (trial.number, trial.datetime_start,
                                                                trial.datetime_complete)
    listed = {key.removeprefix(keys.ARTIFACTS_PREFIX) for t in trials for key in t.system_attrs
              if key.startswith(keys.ARTIFACTS_PREFIX)}
    stored = cluster.store.objects(bucket, f"{study}/")
    assert set(stored) == listed and len(listed) <= 2, (stored, listed)  # the bound: the best 2, no checkpoint
    return trials


def running_with_checkpoint(url: str, study: str) -> optuna.trial.FrozenTrial | None:
    for trial in optuna.load_study(study_name=study, storage=url).get_trials(deepcopy=False,
                                                                             states=(TrialState.RUNNING,)):
        if (trial.user_attrs.get(keys.CHECKPOINT) or {}).get("epoch"):
            return trial
    return None


def on_host(trial: optuna.trial.FrozenTrial, workers: dict[str, subprocess.Popen[bytes]]) -> str:
    """The host whose worker runs ``trial`` (a worker's label is ``hostname/pid``, and
    ``ip netns exec`` execs it: its pid is the process's)."""
    pid = int(trial.user_attrs[keys.WORKER].rsplit("/", 1)[1])
    return next(name for name, process in workers.items() if process.pid == pid)


def start(cluster: Cluster, name: str, budget: int, epochs: int, data_dir: Path,
          env: dict[str, dict[str, str]] | None = None) -> tuple[str, str, dict[str, subprocess.Popen[bytes]]]:
    url, bucket = cluster.database.new_database(), cluster.store.new_bucket()
    create_slow_study(url, name, n_trials=budget, epochs=epochs)
    workers = {host: cluster.worker(host, url, bucket, name, budget, epochs, data_dir, (env or {}).get(host))
               for host in WORKERS}
    return url, bucket, workers


def finish(cluster: Cluster, name: str, workers: dict[str, subprocess.Popen[bytes]], timeout: float = 300) -> None:
    assert wait_all(list(workers.values()), timeout=timeout) == [0] * len(workers), cluster.logs(name)


def test_a_worker_host_cut_past_the_grace_period_is_retried_elsewhere_and_takes_new_work(cluster, hosts_fashion_dir):
    url, bucket, workers = start(cluster, "cut", budget=4, epochs=4, data_dir=hosts_fashion_dir)
    victim = wait_until(lambda: running_with_checkpoint(url, "cut"), timeout=180)
    host = cluster.host(on_host(victim, workers))
    host.cut()
    wait_until(lambda: optuna.load_study(study_name="cut", storage=url).trials[victim.number].state
               == TrialState.FAIL, timeout=60)
    time.sleep(2)
    host.heal()
    finish(cluster, "cut", workers)
    trials = assert_clean_end(cluster, url, "cut", bucket, budget=4, crashed=1)
    retry = next(t for t in trials if t.system_attrs.get(keys.FAILED_TRIAL) == victim.number)
    assert retry.user_attrs[keys.RESUMED_FROM] >= 1  # from the checkpoint the cut host wrote to the bucket
    log = (host.directory / "cut.log").read_text()
    assert f"trial {victim.number} was taken over by a retry after missed heartbeats; dropping it" in log


def test_a_lossy_link_and_a_slow_link_finish_the_search(cluster, hosts_fashion_dir):
    db = cluster.database
    slow = cluster.host("w2")
    proxy = subprocess.Popen(slow.command(sys.executable, "-m", "tests.support.proxy", "6432",
                                          f"{db.host}:{db.port}", "--delay", "0.02"),
                             env={**search_env(), "PYTHONPATH": str(REPO)}, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    try:
        cluster.host("w1").lossy(5)
        url, bucket = db.new_database(), cluster.store.new_bucket()
        create_slow_study(url, "links", n_trials=4, epochs=3)
        through = url.replace(f"{db.host}:{db.port}", "127.0.0.1:6432")
        workers = {name: cluster.worker(name, url, bucket, "links", 4, 3, hosts_fashion_dir,
                                        storage=through if name == "w2" else None) for name in WORKERS}
        finish(cluster, "links", workers)
        assert_clean_end(cluster, url, "links", bucket, budget=4)
    finally:
        cluster.host("w1").heal()
        proxy.kill()


@pytest.mark.parametrize("down", ["db", "s3"])
def test_the_database_or_the_store_host_cut_past_the_reply_timeout_fails_no_trial(cluster, hosts_fashion_dir, down):
    name = f"down-{down}"
    # A cut lands after a first checkpoint and holds until a worker has given up on a
    # reply (a fixed length races the client's own retries, which can absorb a short
    # one unseen) and one reply timeout more: every trial still running waits it out
    # (its next report needs the database, its weights the store), then the rest finish.
    noticed = ("lost the connection",) if down == "db" else ("checkpoint was not written",
                                                             "the artifact store is unavailable")
    url, bucket, workers = start(cluster, name, budget=4, epochs=3, data_dir=hosts_fashion_dir)
    wait_until(lambda: running_with_checkpoint(url, name), timeout=180)
    cluster.host(down).cut()
    try:
        wait_until(lambda: any(line in cluster.said(name) for line in noticed), timeout=120)
        time.sleep(REPLY_TIMEOUT)
    finally:
        cluster.host(down).heal()
    finish(cluster, name, workers, timeout=420)
    assert_clean_end(cluster, url, name, bucket, budget=4)
    if down == "db":
        assert "reconnected" in cluster.said(name), cluster.logs(name)


def test_a_lost_worker_host_is_resumed_on_another_from_the_buckets_checkpoint(cluster, hosts_fashion_dir):
    url, bucket, workers = start(cluster, "lost", budget=4, epochs=4, data_dir=hosts_fashion_dir)
    victim = wait_until(lambda: running_with_checkpoint(url, "lost"), timeout=180)
    name = on_host(victim, workers)
    cluster.host(name).lose()
    workers.pop(name).wait()
    finish(cluster, "lost", workers)
    trials = assert_clean_end(cluster, url, "lost", bucket, budget=4, crashed=1)
    retry = next(t for t in trials if t.system_attrs.get(keys.FAILED_TRIAL) == victim.number)
    assert retry.user_attrs[keys.RESUMED_FROM] >= 1
    assert not cluster.host(name).directory.exists()


def test_hosts_whose_clocks_are_ten_minutes_off_time_every_trial_by_one_clock(cluster, hosts_fashion_dir):
    skews = {"w1": cluster.network.skewed_env(600), "w2": cluster.network.skewed_env(-600)}
    url, bucket, workers = start(cluster, "clocks", budget=4, epochs=3, data_dir=hosts_fashion_dir, env=skews)
    victim = wait_until(lambda: running_with_checkpoint(url, "clocks"), timeout=180)
    name = on_host(victim, workers)  # its trial is failed, and retried, by a host with another clock
    cluster.host(name).lose()
    workers.pop(name).wait()
    finish(cluster, "clocks", workers)
    assert_clean_end(cluster, url, "clocks", bucket, budget=4, crashed=1)  # every trial ends after it starts
    for host in ("w1", "w2"):
        status = subprocess.run(cluster.host(host).command(sys.executable, "-m", "search.cli", "status", "--storage",
                                                           url), capture_output=True, text=True,
                                env={**search_env(), **skews[host]}, timeout=120)
        assert status.returncode == 0, status.stderr
    best = run_search("best", "--storage", url, "--json", env=skews["w2"])
    assert best.returncode == 0 and '"duration_s": -' not in best.stdout, best.stdout
