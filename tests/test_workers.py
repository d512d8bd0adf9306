"""Many real worker processes on one PostgreSQL study: budget, fault tolerance, reconnects."""

from __future__ import annotations

import signal
import time

import optuna
from optuna.trial import TrialState

from search import keys
from tests.support.workers import (create_slow_study, kill_a_checkpointed_trials_worker, logs, start_worker, states,
                           system_attrs, wait_all, wait_until, worker_args)


def test_four_workers_started_at_once_finish_exactly_the_budget_within_the_disk_bound(postgres, fashion_dir,
                                                                                      tmp_path):
    url = postgres.new_database()
    artifacts = tmp_path / "artifacts"
    args = worker_args(url, "race", fashion_dir, artifacts, n_trials=10, epochs=2, extra=["--keep-best", "2"])
    logs_ = [tmp_path / f"worker{i}.log" for i in range(4)]
    workers = [start_worker(log, *args) for log in logs_]
    # The bound, sampled while they run: the best 2 weights (plus, for an instant, one per
    # worker that just finished a trial) and at most 2 checkpoints per running trial (a
    # new one is written before the old one goes).
    rdb = optuna.storages.RDBStorage(url)
    samples = 0
    while any(worker.poll() is None for worker in workers):
        checkpoints = list((artifacts / "checkpoints").glob("*")) if artifacts.is_dir() else []
        weights = [path for path in artifacts.glob("*") if path.is_file()] if artifacts.is_dir() else []
        try:
            running = len(rdb.get_all_trials(rdb.get_study_id_from_name("race"), states=(TrialState.RUNNING,)))
        except KeyError:
            running = 0
        assert len(weights) <= 2 + len(workers), weights
        assert len(checkpoints) <= 2 * max(running, len(workers)), (checkpoints, running)
        samples += 1
        time.sleep(0.1)
    rdb.engine.dispose()
    assert [worker.wait() for worker in workers] == [0, 0, 0, 0], logs(logs_)
    assert samples > 10
    listed = {key.removeprefix(keys.ARTIFACTS_PREFIX) for t in optuna.load_study(study_name="race", storage=url).trials
              for key in t.system_attrs if key.startswith(keys.ARTIFACTS_PREFIX)}
    assert {path.name for path in artifacts.iterdir() if path.is_file()} == listed and len(listed) == 2
    assert not list((artifacts / "checkpoints").iterdir())

    assert [s.study_name for s in optuna.get_all_study_summaries(url)] == ["race"]
    counts = states(url, "race")
    assert counts[TrialState.COMPLETE] + counts[TrialState.PRUNED] == 10, counts
    assert counts[TrialState.RUNNING] == counts[TrialState.WAITING] == counts[TrialState.FAIL] == 0
    study = optuna.load_study(study_name="race", storage=url)
    assert system_attrs(url, "race")[keys.WORKERS] == 4
    # Distinct sampler seeds: no two trials drew identical hyperparameters.
    params = [tuple(sorted(t.params.items())) for t in study.trials]
    assert len(set(params)) == len(params)


def test_killed_worker_trial_is_retried_and_resumes_from_its_checkpoint(postgres, medium_fashion_dir, tmp_path):
    url = postgres.new_database()
    create_slow_study(url, "kill", n_trials=3, epochs=3)
    args = worker_args(url, "kill", medium_fashion_dir, tmp_path / "artifacts", n_trials=3, epochs=3, heartbeat=1)
    logs_ = [tmp_path / f"worker{i}.log" for i in range(2)]
    workers = {}
    for log in logs_:
        process = start_worker(log, *args)
        workers[process.pid] = process

    victim = kill_a_checkpointed_trials_worker(url, "kill", workers)
    survivors = list(workers.values())
    assert wait_all(survivors, timeout=600) == [0], logs(logs_)

    study = optuna.load_study(study_name="kill", storage=url)
    trials = study.get_trials(deepcopy=False)
    assert trials[victim.number].state == TrialState.FAIL
    retries = [t for t in trials if t.system_attrs.get("failed_trial") == victim.number]
    assert len(retries) == 1, logs(logs_)
    retry = retries[0]
    assert retry.state == TrialState.COMPLETE
    assert retry.user_attrs["resumed_from_epoch"] >= 1
    assert retry.params == victim.params
    assert sorted(retry.intermediate_values) == [1, 2, 3]
    # The log names the trial that wrote the checkpoint (the killed one), not the retry.
    resumed = f"trial {retry.number}: resumed from the epoch-{retry.user_attrs['resumed_from_epoch']} " \
              f"checkpoint written by trial {victim.number}"
    assert resumed in "".join(log.read_text() for log in logs_), logs(logs_)
    counts = states(url, "kill")
    assert counts[TrialState.COMPLETE] + counts[TrialState.PRUNED] == 3
    assert counts[TrialState.RUNNING] == counts[TrialState.WAITING] == 0


def test_workers_survive_a_postgresql_restart(postgres, medium_fashion_dir, tmp_path):
    url = postgres.new_database()
    create_slow_study(url, "restart", n_trials=4, epochs=3)
    args = worker_args(url, "restart", medium_fashion_dir, tmp_path / "artifacts", n_trials=4, epochs=3, heartbeat=2)
    logs_ = [tmp_path / f"worker{i}.log" for i in range(2)]
    workers = [start_worker(log, *args) for log in logs_]

    def some_epoch_reported():
        study = optuna.load_study(study_name="restart", storage=url)
        return any(t.intermediate_values for t in study.get_trials(deepcopy=False))

    wait_until(some_epoch_reported, timeout=300)
    postgres.restart()
    restarted_at = time.monotonic()
    assert wait_all(workers, timeout=600) == [0, 0], logs(logs_)
    assert time.monotonic() > restarted_at
    counts = states(url, "restart")
    assert counts[TrialState.COMPLETE] + counts[TrialState.PRUNED] == 4, (counts, logs(logs_))
    assert counts[TrialState.RUNNING] == counts[TrialState.WAITING] == 0


def test_each_worker_holds_at_most_two_connections(postgres, fashion_dir, tmp_path):
    url = postgres.new_database()
    n_workers = 6
    args = worker_args(url, "pool", fashion_dir, tmp_path / "artifacts", n_trials=12, epochs=2)
    logs_ = [tmp_path / f"worker{i}.log" for i in range(n_workers)]
    workers = [start_worker(log, *args) for log in logs_]
    database = url.rsplit("/", 1)[1]
    query = ("SELECT application_name, count(*) FROM pg_stat_activity "
             f"WHERE datname = '{database}' AND state IS NOT NULL GROUP BY application_name")
    peak: dict[str, int] = {}
    peak_total = 0
    while any(worker.poll() is None for worker in workers):
        rows = postgres.rows(postgres.url(), query)
        for name, count in rows:
            peak[name] = max(peak.get(name, 0), count)
        peak_total = max(peak_total, sum(count for _, count in rows))
        time.sleep(0.05)
    assert [worker.returncode for worker in workers] == [0] * n_workers, logs(logs_)
    assert {f"hpsearch/{worker.pid}" for worker in workers} <= set(peak), peak
    # Two pooled connections per worker (trial loop + heartbeat), plus the schema lock's
    # one held by a single worker at a time: 32 workers stay under 2 * 32 + 1 = 65 of
    # PostgreSQL's default 100.
    assert max(peak.values()) <= 3, peak
    assert peak_total <= 2 * n_workers + 1, (peak_total, peak)


def test_sigterm_requeues_the_trial_and_the_next_worker_resumes_it(postgres, medium_fashion_dir, tmp_path):
    url = postgres.new_database()
    create_slow_study(url, "term", n_trials=1, epochs=3)
    args = worker_args(url, "term", medium_fashion_dir, tmp_path / "artifacts", n_trials=1, epochs=3, heartbeat=5)
    first = start_worker(tmp_path / "first.log", *args)

    def checkpointed():
        trials = optuna.load_study(study_name="term", storage=url).get_trials(deepcopy=False)
        return trials[0].user_attrs.get("checkpoint", {}).get("epoch", 0) >= 1

    wait_until(checkpointed, timeout=300)
    first.send_signal(signal.SIGTERM)
    assert first.wait(timeout=60) == 143, logs([tmp_path / "first.log"])
    trials = optuna.load_study(study_name="term", storage=url).get_trials(deepcopy=False)
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.WAITING]

    second = start_worker(tmp_path / "second.log", *args)
    assert second.wait(timeout=300) == 0, logs([tmp_path / "second.log"])
    retry = optuna.load_study(study_name="term", storage=url).get_trials(deepcopy=False)[1]
    assert retry.state == TrialState.COMPLETE and retry.user_attrs["resumed_from_epoch"] >= 1
