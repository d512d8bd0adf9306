"""What a short search reaches: the README's recipe, as a user runs it, on several seeds.

For each seed, in a directory of its own, with one CPU core (``OMP_NUM_THREADS=1``), the
README's two commands run as subprocesses, exactly:

    search run <RECIPE> --seed S          # a new study on an embedded SQLite file
    search best --export model.pt --retrain

and the bench reads back what they left: the study's trials (complete / pruned), the
best validation accuracy, the retrained model's test accuracy (from the exported file's
metadata), and the wall time of each step. ``--jobs`` seeds run at once (two by default:
one per core of the project's CI machine). Prints one row per seed, then the mean, the
minimum and the spread over seeds.

``--keep DIR`` keeps each seed's study, model and log (``bench/export_choice.py`` reads
the studies).

    python -m bench.search_quality [--seeds 0 1 2 3 4] [--jobs 2] [--keep DIR] [--quick]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# The README's recipe ("What a short search reaches"): 30 CPU-minutes for search and
# retraining together on one core of the CI machine.
RECIPE = ["--epochs", "40", "--timeout", "1380", "--n-trials", "1000"]
QUICK_RECIPE = ["--epochs", "1", "--timeout", "5", "--n-trials", "2"]


@dataclass
class SeedResult:
    seed: int
    search_s: float
    retrain_s: float
    complete: int
    pruned: int
    best_trial: int
    best_val: float
    test: float


def run(command: list[str], cwd: Path, log: Path) -> float:
    """Run ``search ...`` in ``cwd`` on one core; its output into ``log``; returns seconds."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("SEARCH_", "AWS_"))}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1")
    started = time.monotonic()
    with open(log, "ab") as output:
        done = subprocess.run([sys.executable, "-m", "search.cli", *command], cwd=cwd, env=env, stdout=output,
                              stderr=subprocess.STDOUT)
    if done.returncode != 0:
        raise RuntimeError(f"`search {' '.join(command)}` exited {done.returncode}; see {log}:\n"
                           + log.read_text(errors="replace")[-3000:])
    return time.monotonic() - started


def one_seed(seed: int, recipe: list[str], data: list[str], work: Path) -> SeedResult:
    directory = work / f"seed-{seed}"
    directory.mkdir(parents=True)
    log = directory / "log.txt"
    search_s = run(["run", *recipe, "--seed", str(seed), *data], directory, log)
    retrain_s = run(["best", "--export", "model.pt", "--retrain", *data], directory, log)
    import torch

    metadata = torch.load(directory / "model.pt", weights_only=True)["metadata"]
    states = trial_states(directory / "search.db")
    return SeedResult(seed=seed, search_s=search_s, retrain_s=retrain_s, complete=states.get("COMPLETE", 0),
                      pruned=states.get("PRUNED", 0), best_trial=int(metadata["trial_number"]),
                      best_val=float(metadata["validation_accuracy"]), test=float(metadata["test_accuracy"]))


def trial_states(database: Path) -> dict[str, int]:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    trials = optuna.load_study(study_name=None, storage=f"sqlite:///{database}").get_trials(deepcopy=False)
    return {state: sum(trial.state.name == state for trial in trials) for state in ("COMPLETE", "PRUNED", "FAIL")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--jobs", type=int, default=2, help="seeds searched at once, one core each")
    parser.add_argument("--data-dir", help="Fashion-MNIST's directory (default: the system copy)")
    parser.add_argument("--keep", type=Path, help="keep each seed's directory (study, model, log) here")
    parser.add_argument("--quick", action="store_true", help="one seed, two 1-epoch trials on generated data (CI)")
    args = parser.parse_args()
    recipe = QUICK_RECIPE if args.quick else RECIPE
    work = args.keep or Path(tempfile.mkdtemp(prefix="hpsearch-quality-"))
    data = ["--data-dir", args.data_dir] if args.data_dir else []
    if args.quick:
        sys.path.insert(0, str(REPO))
        from tests.support.datafiles import write_fashion_mnist

        args.seeds = [0]
        data = ["--data-dir", str(write_fashion_mnist(work / "data", n_train=600, n_test=100))]
    print(f"search run {' '.join(recipe)} --seed S, then search best --export model.pt --retrain; "
          f"{len(args.seeds)} seeds, {args.jobs} at a time, one core each", flush=True)
    started = time.monotonic()
    results: list[SeedResult] = []
    try:
        with ThreadPoolExecutor(args.jobs) as pool:
            for result in pool.map(lambda seed: one_seed(seed, recipe, data, work), args.seeds):
                results.append(result)
                print(f"seed {result.seed}: best val {result.best_val:.2%} (trial {result.best_trial}), "
                      f"test {result.test:.2%}", flush=True)
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)

    print(f"\n{'seed':>4} | {'search':>8} {'trials (complete / pruned)':>27} {'best val':>9} | "
          f"{'retrain':>8} {'test':>7}")
    for r in sorted(results, key=lambda r: r.seed):
        print(f"{r.seed:>4} | {r.search_s / 60:6.1f} m {r.complete + r.pruned:>12} ({r.complete:>3} / {r.pruned:>3})"
              f"      {r.best_val:8.2%} | {r.retrain_s / 60:6.1f} m {r.test:7.2%}")
    tests = [r.test for r in results]
    vals = [r.best_val for r in results]
    spread = statistics.stdev(tests) if len(tests) > 1 else math.nan
    print(f"\nmean over seeds: test {statistics.fmean(tests):.2%}, minimum {min(tests):.2%}, "
          f"spread {max(tests) - min(tests):.2%} (standard deviation {spread:.2%}); best val "
          f"{statistics.fmean(vals):.2%}, {statistics.fmean(vals) - statistics.fmean(tests):+.2%} above test; "
          f"{(time.monotonic() - started) / 60:.1f} min in all")
    print(json.dumps([asdict(r) for r in sorted(results, key=lambda r: r.seed)]))


if __name__ == "__main__":
    main()
