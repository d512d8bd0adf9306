"""What the service spends around one trial, as the study grows: this project against plain Optuna.

One run, one throwaway PostgreSQL server. Two studies grow side by side to 100, 1,000,
5,000 and 10,000 finished trials (the same synthetic history in both: params from the
real search space, 5 intermediate values, ~30 % pruned). At each size, ``--trials``
timed lifecycles per study, no training:

* this project: one turn of the real worker loop (``Worker.step``): stale check, claim
  (with its first heartbeat), history refresh, heartbeat thread, the real search
  space's ``suggest`` and the attrs a worker writes, 5 x (report + should_prune),
  clearing the checkpoint pointer, ``tell``, keep-best and the progress line;
* plain Optuna: ``optuna.load_study`` on ``get_storage(url)`` (Optuna's cached RDB
  storage), ``ask``, the same ``suggest``, 5 x (report + should_prune), ``tell``;

both with ``search.study.sampler.make_sampler`` / ``search.study.pruner.make_pruner`` settings (plain
Optuna's TPE as it ships: the worker's faster log Phi is in place only while its own sampler
runs). Prints median and p95 per size and the ratios the Scale issue asks for.

    python -m bench.service_overhead [--sizes 100 1000 5000 10000] [--trials 40] [--quick]
"""

from __future__ import annotations

import argparse
import math
import random
import shutil
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import optuna
from optuna.trial import TrialState

from bench.synthetic import EPOCHS, NoTraining, accuracy, report_and_prune
from objectives import space
from search.storage import parse_url
from search.study.pruner import make_pruner
from search.study.sampler import make_sampler
from search.study.spec import StudyRequest
from search.worker.assembly import assemble
from search.worker.config import WorkerConfig
from search.worker.loop import Worker
from tests.support.postgres import PostgresServer


def history(n: int, seed: int) -> list[optuna.trial.FrozenTrial]:
    """``n`` finished trials shaped like a real study's: sampled params, 5 epochs, some pruned."""
    rng = random.Random(seed)
    sampler_study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    made = []
    for _ in range(n):
        trial = sampler_study.ask()
        params = space.suggest(trial, SPACE)
        quality = accuracy(params, rng)
        pruned = rng.random() < 0.3
        steps = range(1, (2 if pruned else EPOCHS) + 1)
        values = {step: quality - 0.1 / step for step in steps}
        made.append(optuna.trial.create_trial(
            params=params, distributions=trial.distributions, intermediate_values=values,
            state=TrialState.PRUNED if pruned else TrialState.COMPLETE,
            value=None if pruned else values[EPOCHS]))
        sampler_study.tell(trial, 0.0)
    return made


STUDY = "overhead"
SPACE = space.load_space(None, "fashion_mnist")


def worker_for(url: str, work: Path, n_trials: int) -> Worker:
    """A worker joined to the study at ``url`` (creating it, as a real first worker does)."""
    return assemble(WorkerConfig(storage=parse_url(url), artifacts=str(work)),
                    StudyRequest(name=STUDY, dataset="fashion_mnist", epochs=EPOCHS, n_trials=n_trials),
                    say=lambda line: None, workload=NoTraining())


def project_lifecycle(worker: Worker) -> Callable[[], None]:
    """One turn of the worker loop: stale check, claim, history refresh, heartbeat thread,
    the objective, clearing the checkpoint pointer, tell, keep-best, the progress line."""
    def once() -> None:
        assert worker.step()
    return once


def plain_lifecycle(study: optuna.Study) -> Callable[[], None]:
    rng = random.Random(0)

    def once() -> None:
        trial = study.ask()
        final = accuracy(space.suggest(trial, SPACE), rng)
        pruned = report_and_prune(trial, final)
        study.tell(trial, None if pruned else final, state=TrialState.PRUNED if pruned else TrialState.COMPLETE)
    return once


def timed(lifecycle: Callable[[], None], n: int) -> list[float]:
    lifecycle()  # warm-up
    times = []
    for _ in range(n):
        started = time.perf_counter()
        lifecycle()
        times.append(time.perf_counter() - started)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 1000, 5000, 10000])
    parser.add_argument("--trials", type=int, default=40, help="timed lifecycles per size and study")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, to prove it runs (CI)")
    args = parser.parse_args()
    if args.quick:
        args.sizes, args.trials = [20, 60], 3
    started = time.perf_counter()
    server = PostgresServer()
    server.start()
    rows = []
    work = Path(tempfile.mkdtemp(prefix="hpsearch-overhead-"))
    try:
        # One master database grows to each size; both studies are copies of it
        # (CREATE DATABASE ... TEMPLATE), so both are timed on the same `size` trials.
        master = server.new_database()
        joined = worker_for(master, work, n_trials=1)
        joined.storage.close()
        made = history(max(args.sizes), seed=0)
        have = 0
        for size in args.sizes:
            rdb = optuna.storages.RDBStorage(master)
            optuna.load_study(study_name=STUDY, storage=rdb).add_trials(made[have:size])
            rdb.engine.dispose()  # a template database must have no connections
            have = size
            project_url, plain_url = server.copy_database(master), server.copy_database(master)
            worker = worker_for(project_url, work, n_trials=size + 10 * args.trials)
            plain = optuna.load_study(study_name=STUDY, storage=optuna.storages.get_storage(plain_url),
                                      sampler=make_sampler(0), pruner=make_pruner())
            ours = timed(project_lifecycle(worker), args.trials)
            theirs = timed(plain_lifecycle(plain), args.trials)
            worker.storage.close()
            rows.append((size, ours, theirs))
            print(f"  {size:>6} trials: project {1e3 * statistics.median(ours):7.1f} ms, "
                  f"plain Optuna {1e3 * statistics.median(theirs):7.1f} ms", flush=True)
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)

    def p95(values: list[float]) -> float:
        return sorted(values)[max(0, math.ceil(0.95 * len(values)) - 1)]

    print(f"\n== per-trial service overhead, PostgreSQL on localhost, {args.trials} lifecycles per cell, "
          f"no training ({time.perf_counter() - started:.0f} s in all)")
    print(f"{'trials in study':>15} | {'project median':>14} {'p95':>8} | {'plain Optuna median':>19} {'p95':>8} | "
          f"{'project / plain':>15}")
    for size, ours, theirs in rows:
        print(f"{size:>15,} | {1e3 * statistics.median(ours):11.1f} ms {1e3 * p95(ours):5.1f} ms | "
              f"{1e3 * statistics.median(theirs):16.1f} ms {1e3 * p95(theirs):5.1f} ms | "
              f"{statistics.median(ours) / statistics.median(theirs):14.2f}x")
    first, last = rows[0][1], rows[-1][1]
    print(f"\nproject at {rows[-1][0]:,} trials: {1e3 * statistics.median(last):.1f} ms median "
          f"(target <= 60 ms), {statistics.median(last) / statistics.median(first):.2f}x its figure at "
          f"{rows[0][0]:,} trials (target <= 1.5x)")


if __name__ == "__main__":
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore")
    main()
