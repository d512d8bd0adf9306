"""Worker scaling on PostgreSQL, and the storage overhead of one trial, measured in one run.

Part 1: the same small study (identical trial configurations, pre-queued, so every run
trains the same work; ``--sampled`` lets the workers' TPE samplers pick instead) is run
by 1, 2 and 4 real ``search worker`` processes, each time on a fresh database of one
throwaway PostgreSQL server, on synthetic Fashion-MNIST on the CPU. Prints trials/min
by wall time (launch to the last worker's exit) and by the database's trial window
(first trial start to last trial completion, which leaves out interpreter start-up),
and the speed-up over one worker.

Part 2: the storage operations of one trial's lifecycle as the worker runs them (stale
check, claim, user attrs, heartbeat, report + should_prune per epoch, tell, keep-best
and best-trial reads), with no training, on PostgreSQL (``search.storage.open_storage``:
the real pool, pre-ping and reconnect wrapper) versus ``optuna.storages.InMemoryStorage``.

    python bench/worker_scaling.py [--workers 1 2 4] [--n-trials 36] [--epochs 3] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import optuna
from optuna.storages import InMemoryStorage, fail_stale_trials
from optuna.storages._heartbeat import BaseHeartbeat
from optuna.trial import TrialState

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from objectives import space  # noqa: E402
from search.artifacts import keep_best_weights, open_artifact_store  # noqa: E402
from search.storage import open_storage  # noqa: E402
from search.study import (EPOCHS_ATTR, OBJECTIVE_ATTR, StudySpec, claim_queued_trial,  # noqa: E402
                          join_study, make_pruner, make_sampler, top_up_budget)
from search.worker import tell  # noqa: E402
from tests.datafiles import write_fashion_mnist  # noqa: E402
from tests.postgres import PostgresServer  # noqa: E402
from tests.workers import logs, search_env, wait_all, worker_args  # noqa: E402

STUDY = "scaling"
OBJECTIVE = "fashion_mnist"
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


# ---------------------------------------------------------------- part 1: worker scaling

@dataclass
class ScalingResult:
    workers: int
    wall_s: float
    window_s: float
    states: dict[str, int]
    epochs: int

    @property
    def finished(self) -> int:
        return sum(self.states.get(s.name, 0) for s in FINISHED)

    def per_min(self, seconds: float) -> float:
        return 60.0 * self.finished / seconds


def fixed_configurations(n_trials: int, seed: int) -> list[dict]:
    """The same ``n_trials`` points of the search space for every run (random, seeded)."""
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    configurations = []
    for _ in range(n_trials):
        trial = study.ask()
        configurations.append(space.suggest(trial))
        study.tell(trial, 0.0)
    return configurations


def prepare_study(url: str, epochs: int, configurations: list[dict]) -> None:
    """Create the study as ``join_study`` would and queue the fixed configurations."""
    storage = open_storage(url)
    try:
        study = optuna.create_study(study_name=STUDY, storage=storage, direction="maximize")
        study.set_user_attr(OBJECTIVE_ATTR, OBJECTIVE)
        study.set_user_attr(EPOCHS_ATTR, epochs)
        for params in configurations:
            study.enqueue_trial(params, skip_if_exists=False)
    finally:
        storage.engine.dispose()


def run_workers(server: PostgresServer, n_workers: int, args: argparse.Namespace, data_dir: Path,
                work: Path, configurations: list[dict] | None) -> ScalingResult:
    url = server.new_database()
    if configurations is not None:
        prepare_study(url, args.epochs, configurations)
    env = search_env()
    env.update(OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    command = [sys.executable, "-m", "search.cli", "worker",
               *worker_args(url, STUDY, data_dir, work / f"artifacts-{n_workers}", args.n_trials,
                            args.epochs, heartbeat=args.heartbeat_interval)]
    log_paths = [work / f"workers{n_workers}-{k}.log" for k in range(n_workers)]
    handles = [open(path, "wb") for path in log_paths]
    started = time.perf_counter()
    processes = [subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, env=env, cwd=REPO)
                 for handle in handles]
    try:
        codes = wait_all(processes, timeout=args.run_timeout)
    finally:
        wall = time.perf_counter() - started
        for handle in handles:
            handle.close()
    if any(codes):
        raise RuntimeError(f"{n_workers} workers exited with {codes}:\n{logs(log_paths)}")

    storage = open_storage(url)
    try:
        trials = optuna.load_study(study_name=STUDY, storage=storage).get_trials(deepcopy=False)
    finally:
        storage.engine.dispose()
    done = [t for t in trials if t.state in FINISHED]
    window = (max(t.datetime_complete for t in done) - min(t.datetime_start for t in done)).total_seconds()
    states = {state.name: sum(t.state == state for t in trials) for state in TrialState}
    return ScalingResult(n_workers, wall, window, {k: v for k, v in states.items() if v},
                         sum(len(t.intermediate_values) for t in done))


def scaling(server: PostgresServer, args: argparse.Namespace, work: Path) -> float:
    """Runs and prints the scaling table; returns the baseline run's seconds per trial."""
    data_dir = write_fashion_mnist(work / "data", n_train=args.images, n_test=max(100, args.images // 10))
    configurations = None if args.sampled else fixed_configurations(args.n_trials, args.seed)
    cores = os.cpu_count() or 1
    print(f"== worker scaling: {args.n_trials} trials x {args.epochs} epochs, {args.images:,} synthetic "
          f"images ({round(args.images * 0.9):,}-ish train), --device cpu, OMP_NUM_THREADS={args.threads} "
          f"per worker, {'TPE-sampled' if args.sampled else 'identical pre-queued'} configurations, "
          f"{cores} CPU cores")
    results = []
    for n_workers in args.workers:
        load_before = os.getloadavg()[0]
        result = run_workers(server, n_workers, args, data_dir, work, configurations)
        results.append(result)
        print(f"   ran {n_workers} worker(s) in {result.wall_s:.1f} s (1-min load average {load_before:.1f} "
              f"before, {os.getloadavg()[0]:.1f} after; the workers themselves add ~{min(n_workers, cores)})",
              flush=True)
    base = results[0]
    print()
    print(f"{'workers':>7} | {'wall s':>7} {'trials/min':>10} {'speed-up':>8} | "
          f"{'window s':>8} {'trials/min':>10} {'speed-up':>8} | {'epochs':>6} {'epochs/min':>10} | states")
    for r in results:
        print(f"{r.workers:>7} | {r.wall_s:7.1f} {r.per_min(r.wall_s):10.1f} "
              f"{r.per_min(r.wall_s) / base.per_min(base.wall_s):7.2f}x | "
              f"{r.window_s:8.1f} {r.per_min(r.window_s):10.1f} "
              f"{r.per_min(r.window_s) / base.per_min(base.window_s):7.2f}x | "
              f"{r.epochs:>6} {60 * r.epochs / r.window_s:10.1f} | "
              + " ".join(f"{k.lower()} {v}" for k, v in sorted(r.states.items())))
    ideal = ", ".join(f"{min(n * args.threads, cores) / min(base.workers * args.threads, cores):.0f}x"
                      for n in args.workers)
    print(f"\n   wall: launch to the last worker's exit (includes interpreter/torch start-up and the final\n"
          f"   idle poll); window: first trial start to last trial completion, from the database.\n"
          f"   This machine has {cores} CPU cores (shared with the PostgreSQL server), so the ideal speed-up\n"
          f"   caps at {cores}x beyond {cores} worker(s): with --threads {args.threads} the ideal for "
          f"{' / '.join(map(str, args.workers))} workers is {ideal}.\n"
          f"   Pruning depends on the order trials finish, so the epochs trained can differ a little\n"
          f"   between runs (epochs/min normalises for that).\n")
    return base.window_s / base.finished


# ------------------------------------------------------- part 2: per-trial storage overhead

def trial_lifecycle(study: optuna.Study, n_reports: int, store) -> TrialState:
    """The storage operations of one trial as ``run_worker``/``run_trial`` do them, minus training."""
    fail_stale_trials(study)
    trial = claim_queued_trial(study)
    if trial is None:
        raise RuntimeError("no queued trial left")
    trial.set_user_attr("worker", "bench/0")
    trial.set_user_attr("device", "cpu")
    if trial.user_attrs.get("seed") is None:  # objectives.objective.trial_seed
        trial.set_user_attr("seed", trial.number)
    if isinstance(study._storage, BaseHeartbeat):
        study._storage.record_heartbeat(trial._trial_id)  # the heartbeat thread's first beat
    value = 0.0
    for step in range(1, n_reports + 1):
        # Deterministic values, so both storages see the same pruning decisions.
        value = 0.5 + 0.4 * ((trial.number * 37) % 100) / 100 * step / n_reports
        trial.report(value, step)
        if trial.should_prune():
            tell(study, trial, TrialState.PRUNED)
            return TrialState.PRUNED
    tell(study, trial, TrialState.COMPLETE, value)
    keep_best_weights(study, store, keep_best=5)
    _ = study.best_value, study.best_trial  # the worker's "best so far" line
    return TrialState.COMPLETE


def time_lifecycles(study: optuna.Study, args: argparse.Namespace, store) -> list[tuple[str, float]]:
    """(final state, seconds) of each timed trial."""
    for _ in range(args.overhead_warmup):
        trial_lifecycle(study, args.overhead_reports, store)
    timed = []
    for _ in range(args.overhead_trials):
        started = time.perf_counter()
        state = trial_lifecycle(study, args.overhead_reports, store)
        timed.append((state.name.lower(), time.perf_counter() - started))
    return timed


def overhead(server: PostgresServer, args: argparse.Namespace, work: Path, trial_s: float | None) -> None:
    total = args.overhead_warmup + args.overhead_trials
    store = open_artifact_store(str(work / "overhead-artifacts"))

    storage = open_storage(server.new_database(), heartbeat_interval=args.heartbeat_interval)
    try:
        postgres_study, _ = join_study(storage, StudySpec("overhead", OBJECTIVE, args.overhead_reports), total, 0)
        postgres = time_lifecycles(postgres_study, args, store)
    finally:
        storage.engine.dispose()

    memory_study = optuna.create_study(storage=InMemoryStorage(), direction="maximize",
                                       sampler=make_sampler(0), pruner=make_pruner())
    top_up_budget(memory_study, total)
    memory = time_lifecycles(memory_study, args, store)
    if [state for state, _ in postgres] != [state for state, _ in memory]:
        raise RuntimeError("the two storages made different pruning decisions")

    states = {state: sum(s == state for s, _ in postgres) for state in ("complete", "pruned")}
    print(f"== per-trial storage overhead: {args.overhead_trials} trials per storage (after "
          f"{args.overhead_warmup} warm-up), {args.overhead_reports} reports each unless pruned "
          f"({states['complete']} complete, {states['pruned']} pruned, same for both), no training")
    print("   lifecycle (one function for both): stale check, claim, 3 user attrs, heartbeat (PostgreSQL\n"
          "   only; InMemoryStorage has none), report + should_prune per step, tell, keep-best and\n"
          "   best-trial reads after a completed trial\n")
    print(f"{'storage':>22} | {'mean ms':>8} {'median ms':>9} {'p90 ms':>7} {'max ms':>7} | "
          f"{'complete ms':>11} {'pruned ms':>9}")

    def mean_of(timed: list[tuple[str, float]], state: str) -> str:
        values = [seconds for s, seconds in timed if s == state]
        return f"{1e3 * statistics.mean(values):.2f}" if values else "-"

    for name, timed in (("PostgreSQL (localhost)", postgres), ("InMemoryStorage", memory)):
        ordered = sorted(seconds for _, seconds in timed)
        print(f"{name:>22} | {1e3 * statistics.mean(ordered):8.2f} {1e3 * statistics.median(ordered):9.2f} "
              f"{1e3 * ordered[int(0.9 * (len(ordered) - 1))]:7.2f} {1e3 * ordered[-1]:7.2f} | "
              f"{mean_of(timed, 'complete'):>11} {mean_of(timed, 'pruned'):>9}")
    pg_mean = statistics.mean(seconds for _, seconds in postgres)
    memory_mean = statistics.mean(seconds for _, seconds in memory)
    print(f"\n   PostgreSQL costs {1e3 * (pg_mean - memory_mean):.1f} ms more per trial than InMemoryStorage "
          f"({pg_mean / memory_mean:.0f}x).")
    if trial_s is not None:
        print(f"   The 1-worker scaling run spent {trial_s:.2f} s per trial (window / trials), so the "
              f"PostgreSQL storage\n   work is about {100 * pg_mean / trial_s:.1f}% of a trial's time there"
              + (f" (it reported {args.epochs} values per trial, not {args.overhead_reports})."
                 if args.epochs != args.overhead_reports else "."))
    print()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4],
                        help="worker counts to compare; the first is the baseline (default %(default)s)")
    parser.add_argument("--n-trials", type=int, default=36, help="trial budget per run (default %(default)s)")
    parser.add_argument("--epochs", type=int, default=3, help="epochs per trial (default %(default)s)")
    parser.add_argument("--images", type=int, default=8000,
                        help="synthetic training images (10%% become validation) (default %(default)s)")
    parser.add_argument("--threads", type=int, default=1,
                        help="OMP_NUM_THREADS per worker process (default %(default)s)")
    parser.add_argument("--sampled", action="store_true",
                        help="let the workers' TPE samplers choose configurations instead of pre-queueing "
                             "the same ones for every run (more run-to-run variance)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the fixed configurations")
    parser.add_argument("--heartbeat-interval", type=int, default=2, help="workers' heartbeat seconds")
    parser.add_argument("--run-timeout", type=float, default=600, help="seconds allowed per scaling run")
    parser.add_argument("--overhead-trials", type=int, default=50, help="timed trials per storage")
    parser.add_argument("--overhead-warmup", type=int, default=5, help="untimed trials first")
    parser.add_argument("--overhead-reports", type=int, default=None,
                        help="intermediate values reported per trial (default: --epochs)")
    parser.add_argument("--skip-scaling", action="store_true", help="only measure the storage overhead")
    args = parser.parse_args()
    if min(args.workers) < 1 or args.n_trials < 1 or args.epochs < 1 or args.threads < 1:
        parser.error("--workers, --n-trials, --epochs and --threads must be at least 1")
    if args.overhead_reports is None:
        args.overhead_reports = args.epochs
    if args.overhead_trials < 1 or args.overhead_reports < 1 or args.overhead_warmup < 0:
        parser.error("--overhead-trials and --overhead-reports must be at least 1")

    started = time.perf_counter()
    server = PostgresServer()
    with tempfile.TemporaryDirectory(prefix="hpsearch-bench-") as tmp:
        try:
            server.start()
            trial_s = None if args.skip_scaling else scaling(server, args, Path(tmp))
            overhead(server, args, Path(tmp), trial_s)
        finally:
            server.stop()
    print(f"total {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    main()
