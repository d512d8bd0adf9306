"""Hundreds of workers on one PostgreSQL with its default max_connections=100, through PgBouncer.

One run: a throwaway PostgreSQL server (``max_connections=100``) and a PgBouncer in
transaction pooling mode in front of it (``tests/support/pooler.py``, configured like the
compose stack's pooler: at most ``--server-connections`` server connections). Then
``--workers`` real worker processes (``search.worker.loop.Worker``, the real loop: claim,
heartbeats, sampling, reports with prune checks, tell) with a stand-in for training
(``bench/synthetic.py``: each epoch sleeps, as a GPU-bound trial leaves the CPU free)
share a budget of ``--trials``. Workers are forked from this process after the imports,
so 200 of them fit in memory and start in seconds.

Prints: finished trials against the budget (exact: not one more, not one less), trial
states, worker exit codes, how long until every worker had joined, connection errors
(every "lost the connection" line a worker logged, every transaction it retried after a
conflict with another, such as a deadlock, and every error exit), the peak number of
server connections (client backends in ``pg_stat_activity``, polled every 0.2 s).

    python -m bench.many_workers [--workers 200] [--trials 2000] [--epoch-seconds 0.2] [--quick]
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path

import optuna
import sqlalchemy

from bench.synthetic import EPOCHS, NoTraining
from search.storage import parse_url
from search.study.spec import StudyRequest
from search.worker.assembly import run_worker
from search.worker.config import WorkerConfig
from tests.support.pooler import PgBouncer
from tests.support.postgres import PostgresServer

STUDY = "many-workers"


def work(url: str, budget: int, epoch_seconds: float, log: Path, artifacts: Path) -> None:
    """The body of one forked worker process: a real worker, its lines in ``log``."""
    with open(log, "w", buffering=1) as out:
        def say(line: str) -> None:
            out.write(f"{time.time():.3f} {line}\n")
        try:
            run_worker(WorkerConfig(storage=parse_url(url), artifacts=str(artifacts)),
                       StudyRequest(name=STUDY, dataset="fashion_mnist", epochs=EPOCHS, n_trials=budget),
                       say=say, workload=NoTraining(epoch_seconds))
        except BaseException as error:  # noqa: BLE001 - reported through the exit code
            say(f"ERROR: {type(error).__name__}: {error}")
            out.flush()
            os._exit(1)
    os._exit(0)


class Peaks:
    """Polls the server's client backends (started after the fork: no thread is forked)."""

    def __init__(self, server: PostgresServer) -> None:
        self.engine = sqlalchemy.create_engine(server.url(), isolation_level="AUTOCOMMIT",
                                               poolclass=sqlalchemy.pool.StaticPool)
        self.server = 0
        self.done = threading.Event()
        self.thread = threading.Thread(target=self.poll, daemon=True)

    def poll(self) -> None:
        query = sqlalchemy.text("SELECT count(*) FILTER (WHERE backend_type = 'client backend') "
                                "FROM pg_stat_activity")
        with self.engine.connect() as connection:
            while not self.done.wait(0.2):
                self.server = max(self.server, connection.execute(query).scalar() - 1)  # less this one


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=200)
    parser.add_argument("--trials", type=int, default=2000)
    parser.add_argument("--epoch-seconds", type=float, default=2.0, help="stand-in training time per epoch")
    parser.add_argument("--stagger", type=float, default=0.1, help="seconds between worker starts")
    parser.add_argument("--server-connections", type=int, default=40, help="the pooler's server connections")
    parser.add_argument("--quick", action="store_true", help="a few workers and trials, to prove it runs (CI)")
    args = parser.parse_args()
    if args.quick:
        args.workers, args.trials, args.epoch_seconds, args.stagger = 4, 12, 0.05, 0.0
    work_dir = Path(tempfile.mkdtemp(prefix="hpsearch-many-"))
    server = PostgresServer()
    server.start()
    pooler = PgBouncer(server, server_connections=args.server_connections)
    pooler.start()
    # On a small machine the 200 workers saturate every core; the pooler is one process
    # that all of them wait on, so it goes first (as it would on a host of its own).
    subprocess.run(["renice", "-n", "-10", "-p", str(pooler.pid())], check=False, capture_output=True)
    try:
        max_connections = server.scalar(server.url(), "SHOW max_connections")
        url = pooler.url(server.new_database())
        started, started_at = time.monotonic(), time.time()
        children = {}
        for index in range(args.workers):
            log = work_dir / f"worker{index}.log"
            pid = os.fork()
            if pid == 0:
                work(url, args.trials, args.epoch_seconds, log, work_dir / "artifacts")
            children[pid] = log
            time.sleep(args.stagger)
        peaks = Peaks(server)
        peaks.thread.start()
        codes = collections.Counter()
        for _ in children:
            _, status = os.wait()
            codes[os.waitstatus_to_exitcode(status)] += 1
        elapsed = time.monotonic() - started
        peaks.done.set()
        peaks.thread.join()

        lines = [line.split(" ", 1) for log in children.values() for line in log.read_text().splitlines()]
        lost = [line for _, line in lines if "lost the connection" in line]
        conflicts = [line for _, line in lines if "conflicted with another" in line]
        errors = [line for _, line in lines if line.startswith("ERROR:")]
        joined = sorted(float(at) - started_at for at, line in lines if " joined study " in line)
        trials = optuna.load_study(study_name=STUDY, storage=server.url(url.rsplit("/", 1)[1])).get_trials(
            deepcopy=False)
        count = collections.Counter(trial.state.name for trial in trials)
        finished = sum(trial.state.is_finished() and trial.state.name != "FAIL" for trial in trials)
        retried = sum(trial.state.name == "FAIL" for trial in trials)
    finally:
        pooler.stop()
        server.stop()
    print(f"\n== {args.workers} workers, one PostgreSQL (max_connections={max_connections}) through PgBouncer "
          f"(transaction pooling, {args.server_connections} server connections), no training "
          f"({args.epoch_seconds} s per epoch stand-in), {elapsed:.0f} s")
    print(f"budget {args.trials}: finished {finished} "
          f"({count['COMPLETE']} complete, {count['PRUNED']} pruned), {retried} failed and retried, "
          f"{count['RUNNING']} running, {count['WAITING']} waiting left")
    print(f"worker exit codes: {dict(codes)}")
    if joined:
        print(f"joined: {len(joined)} workers, the last {joined[-1]:.0f} s after the first start "
              f"(starts staggered {args.stagger} s: the last started at {args.stagger * (args.workers - 1):.0f} s)")
    print(f"connection errors: {len(lost)} lost-connection lines, {len(conflicts)} transactions retried after a "
          f"conflict, {len(errors)} worker errors")
    for line in (lost + conflicts + errors)[:5]:
        print(f"  {line}")
    print(f"peak server connections: {peaks.server} of max_connections={max_connections} "
          f"(client backends other than this benchmark's probe)")
    print(f"throughput: {finished / elapsed:.1f} trials/s")
    ok = finished == args.trials and not lost and not conflicts and not errors and set(codes) == {0}
    print("PASS" if ok else "FAIL")
    shutil.rmtree(work_dir, ignore_errors=True)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore")
    main()
