"""Worker scaling on PostgreSQL: trials per minute with 1, 2 and 4 workers, in one run.

The same small study (identical trial configurations, pre-queued, so every run
trains the same work; ``--sampled`` lets the workers' TPE samplers pick instead) is run
by 1, 2 and 4 real ``search worker`` processes, each time on a fresh database of one
throwaway PostgreSQL server, on synthetic Fashion-MNIST on the CPU. Prints trials/min
by wall time (launch to the last worker's exit) and by the database's trial window
(first trial start to last trial completion, which leaves out interpreter start-up),
and the speed-up over one worker.

    python -m bench.worker_scaling [--workers 1 2 4] [--n-trials 36] [--epochs 3] [--threads 1] [--quick]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import optuna
from optuna.trial import TrialState

from objectives import space
from search import keys
from tests.support.datafiles import write_fashion_mnist
from tests.support.postgres import PostgresServer
from tests.support.workers import REPO, logs, search_env, wait_all, worker_args

STUDY = "scaling"
OBJECTIVE = "fashion_mnist"
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


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
        configurations.append(space.suggest(trial, space.load_space(None, OBJECTIVE)))
        study.tell(trial, 0.0)
    return configurations


def prepare_study(url: str, epochs: int, configurations: list[dict]) -> None:
    """Create the study as ``join_study`` would and queue the fixed configurations."""
    study = optuna.create_study(study_name=STUDY, storage=url, direction="maximize")
    study.set_user_attr(keys.DATASET, OBJECTIVE)
    study.set_user_attr(keys.EPOCHS, epochs)
    for params in configurations:
        study.enqueue_trial(params, skip_if_exists=False)


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

    trials = optuna.load_study(study_name=STUDY, storage=url).get_trials(deepcopy=False)
    done = [t for t in trials if t.state in FINISHED]
    window = (max(t.datetime_complete for t in done) - min(t.datetime_start for t in done)).total_seconds()
    states = {state.name: sum(t.state == state for t in trials) for state in TrialState}
    return ScalingResult(n_workers, wall, window, {k: v for k, v in states.items() if v},
                         sum(len(t.intermediate_values) for t in done))


def scaling(server: PostgresServer, args: argparse.Namespace, work: Path) -> None:
    """Runs and prints the scaling table."""
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
    parser.add_argument("--heartbeat-interval", type=float, default=2, help="workers' heartbeat seconds")
    parser.add_argument("--run-timeout", type=float, default=600, help="seconds allowed per scaling run")
    parser.add_argument("--quick", action="store_true", help="tiny runs of 1 and 2 workers, to prove it runs (CI)")
    args = parser.parse_args()
    if args.quick:
        args.workers, args.n_trials, args.epochs, args.images = [1, 2], 2, 1, 600
    if min(args.workers) < 1 or args.n_trials < 1 or args.epochs < 1 or args.threads < 1:
        parser.error("--workers, --n-trials, --epochs and --threads must be at least 1")

    started = time.perf_counter()
    server = PostgresServer()
    with tempfile.TemporaryDirectory(prefix="hpsearch-bench-") as tmp:
        try:
            server.start()
            scaling(server, args, Path(tmp))
        finally:
            server.stop()
    print(f"total {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    main()
