"""Do more workers find a good model sooner? Real training on Fashion-MNIST, one study.

For each seed, a study is searched by 1 worker and, separately, by 2 workers (``search
worker`` processes on one embedded SQLite study, one core each, ``OMP_NUM_THREADS=1``), with
the study's defaults (the shipped space, sampler and pruner) and ``--epochs``. The clock
starts when the workers are started (imports and loading the data count); a run ends when
a trial has finished with validation accuracy at or above ``--target`` (or at
``--minutes``). Two 1-worker runs go side by side; each 2-worker run goes alone.

The two runs of a seed are independent searches: the 2-worker run's workers are seeded
``SECOND + seed`` and ``SECOND + seed + 1``. With the same base seed its first worker would
propose exactly the 1-worker run's trials (a worker's sampler seed is the base seed plus its
index), so the pair would only measure whether the second worker beats the first: a speed-up
of exactly 1 more than half the time, whatever the service does.

Prints, per seed, the time each worker count took to the target and the speed-up, then
the median time of each worker count over seeds and their ratio, the speed-up (and the
ideal, 2x). A time to a first hit varies as much as its mean (a trial in six passing the
target, the next one to pass is a geometric draw): three seeds tell a service that loses
half its workers from one that loses none, not 1.7x from 1.9x.

Why 6-epoch trials by default: more workers can only make a target sooner by trying more
configurations at once, never by making one trial shorter. In the shipped space almost
every configuration passes 90.5 % in a 10-epoch trial (90.4-91.3 % for six drawn at
random), so at 10 epochs the first trial of either run reaches it and there is nothing
to search for; after 6 epochs about one in six does (89.5-90.5 %), so the target takes
a search of several trials, which is what extra workers are for.

    python -m bench.parallel_search [--seeds 0 1 2] [--target 0.905] [--epochs 6] [--minutes 20] [--quick]
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
POLL_S = 1.0
SECOND = 1000  # the 2-worker runs' base seeds: SECOND + seed (an independent search)


def reached(database: Path, target: float) -> bool:
    import sqlalchemy as sa

    if not database.exists():
        return False
    engine = sa.create_engine(f"sqlite:///{database}")
    try:
        with engine.connect() as connection:
            # The trials' own table (Optuna's schema): a finished trial at or above the target.
            found = connection.execute(sa.text(
                "SELECT 1 FROM trials JOIN trial_values USING (trial_id) WHERE trials.state = 'COMPLETE' "
                "AND trial_values.value >= :target LIMIT 1"), {"target": target}).first()
        return found is not None
    except sa.exc.OperationalError:  # the schema is not there yet
        return False
    finally:
        engine.dispose()


def search(workers: int, seed: int, args: argparse.Namespace, work: Path) -> float | None:
    """Seconds from starting ``workers`` workers to the first finished trial at the target
    (None: not within the budget)."""
    directory = work / f"seed{seed}-workers{workers}"
    directory.mkdir(parents=True)
    database = directory / "study.db"
    env = {key: value for key, value in os.environ.items() if not key.startswith(("SEARCH_", "AWS_"))}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=str(REPO))
    command = [sys.executable, "-m", "search.cli", "worker", "--storage", f"sqlite:///{database}",
               "--study", "parallel", "--objective", "fashion_mnist", "--epochs", str(args.epochs),
               "--n-trials", "100000", "--seed", str(seed if workers == 1 else SECOND + seed), "--artifacts", str(directory / "artifacts"),
               *(["--data-dir", args.data_dir] if args.data_dir else [])]
    started = time.monotonic()
    logs = [open(directory / f"worker{k}.log", "wb") for k in range(workers)]
    processes = [subprocess.Popen(command, cwd=directory, env=env, stdout=log, stderr=subprocess.STDOUT)
                 for log in logs]
    try:
        while time.monotonic() - started < args.minutes * 60:
            if reached(database, args.target):
                return time.monotonic() - started
            for process in processes:
                if process.poll() not in (None, 0):
                    raise RuntimeError(f"a worker exited {process.returncode}: see {directory}")
            time.sleep(POLL_S)
        return None
    finally:
        for process in processes:
            process.send_signal(signal.SIGTERM)
        for process in processes:
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
        for log in logs:
            log.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--target", type=float, default=0.905, help="validation accuracy to reach")
    parser.add_argument("--epochs", type=int, default=6, help="epochs per trial (the study's --epochs)")
    parser.add_argument("--minutes", type=float, default=20, help="a run's budget")
    parser.add_argument("--data-dir", help="Fashion-MNIST's directory (default: the system copy)")
    parser.add_argument("--quick", action="store_true", help="one seed, a target any trial reaches, generated data (CI)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="hpsearch-parallel-") as tmp:
        work = Path(tmp)
        if args.quick:
            sys.path.insert(0, str(REPO))
            from tests.support.datafiles import write_fashion_mnist

            args.seeds, args.target, args.epochs, args.minutes = [0], 0.0, 1, 3
            args.data_dir = str(write_fashion_mnist(work / "data", n_train=600, n_test=100))
        print(f"time to {args.target:.1%} validation accuracy, {args.epochs}-epoch trials, seeds "
              f"{' '.join(map(str, args.seeds))}, one core per worker", flush=True)
        started = time.monotonic()
        with ThreadPoolExecutor(2) as pool:  # two single-worker studies side by side
            single = dict(zip(args.seeds, pool.map(lambda seed: search(1, seed, args, work), args.seeds)))
        double = {seed: search(2, seed, args, work) for seed in args.seeds}

    def shown(seconds: float | None) -> str:
        return f"> {args.minutes:g} min" if seconds is None else f"{seconds / 60:.2f} min"

    budget = args.minutes * 60

    def capped(seconds: float | None) -> float:
        return budget if seconds is None else seconds  # a run that missed the target: a lower bound

    print(f"\n{'seed':>4} | {'1 worker':>10} {'2 workers':>10} | speed-up")
    speedups = []
    for seed in args.seeds:
        one, two = single[seed], double[seed]
        if two is not None:
            speedups.append(capped(one) / two)
        speedup = f"{speedups[-1]:.2f}x" if two is not None else "-"
        print(f"{seed:>4} | {shown(one):>10} {shown(two):>10} | {speedup}")
    one = statistics.median(capped(single[seed]) for seed in args.seeds)
    two = statistics.median(capped(double[seed]) for seed in args.seeds)
    print(f"\nmedian time to {args.target:.1%}: 1 worker {one / 60:.2f} min, 2 workers {two / 60:.2f} min; "
          f"median speed-up of 2 workers over 1: {one / two:.2f}x (ideal 2x; efficiency {one / two / 2:.2f}); "
          f"median of the seeds' own speed-ups {statistics.median(speedups) if speedups else float('nan'):.2f}x; "
          f"{(time.monotonic() - started) / 60:.1f} min in all")


if __name__ == "__main__":
    main()
