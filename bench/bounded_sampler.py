"""Does the bounded sampler search as well as Optuna's TPE on the whole history? Real Fashion-MNIST.

The worker's ``BoundedSampler`` fits TPE on at most ~100 finished trials (the best, the
latest, a uniform sample) plus the running ones; unbounded TPE fits every trial. This
runs both on real Fashion-MNIST, side by side, for several seeds: the real worker
(``search.worker.loop.Worker``: claims, the history, the median pruner, tell) on an embedded
SQLite study, the real objective (``objectives.objective.make_objective``: the real search space,
model and trainer), one worker per study. Only the sampler differs: the unbounded run
swaps in ``make_sampler`` with Optuna's default ``gamma`` after joining. Both use the
same sampler seed and the same per-trial training seeds, so the two runs are identical
until the bound starts to drop trials from TPE's view (after about 50 finished).

Trials are kept cheap so that enough of them finish for the bound to matter: the first
``--train-size`` training images, ``--epochs`` epochs, on the CPU; validation accuracy on
the whole 5,000-image validation split. The studies run ``--jobs`` at a time, each in a
process of its own with one thread.

Prints, per seed, the best validation accuracy after each checkpoint count of trials for
both samplers, then the mean difference (bounded - unbounded) with its standard error
over seeds, against the seed-to-seed spread.

    python -m bench.bounded_sampler [--seeds 0 1 2] [--trials 200] [--train-size 3000] [--epochs 2] [--jobs CPUS]
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import multiprocessing
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import optuna
import torch

from objectives.data import Dataset, Split
from objectives.datasets import load_dataset
from objectives.objective import ObjectiveSettings, make_objective
from search.storage import parse_url
from search.study.sampler import make_sampler, worker_seed
from search.study.spec import StudyRequest, StudySpec
from search.worker.assembly import assemble
from search.worker.config import WorkerConfig
from search.worker.workload import Joined

STUDY = "quality"


class SubsetTraining:
    """The worker's ``Workload``: the real objective on a fixed subset of the training split,
    without checkpoints or saved weights (nothing here is exported)."""

    device = "cpu"
    precision = "float32"

    def __init__(self, dataset: Dataset, epochs: int, seed: int) -> None:
        self.dataset = dataset
        self.settings = ObjectiveSettings(epochs, torch.device("cpu"), seed)

    def check(self, spec: StudySpec) -> None:
        return None

    def objective(self, joined: Joined):
        return make_objective(self.dataset, self.settings)


def search(sampler: str, dataset: Dataset, seed: int, trials: int, epochs: int) -> tuple[list[float], list[dict]]:
    """Run one study: the best value after each finished trial, and each trial's params.
    ``sampler``: "bounded" (the worker's own) or "unbounded" (Optuna's TPE fitted on every
    trial of the study, swapped in after joining)."""
    directory = Path(tempfile.mkdtemp(prefix="hpsearch-quality-"))
    try:
        config = WorkerConfig(storage=parse_url(f"sqlite:///{directory / 'study.db'}"),
                              artifacts=str(directory / "artifacts"), device="cpu", seed=seed, keep_best=1)
        request = StudyRequest(name=STUDY, dataset="fashion_mnist", epochs=epochs, n_trials=trials)
        worker = assemble(config, request, say=lambda line: None, workload=SubsetTraining(dataset, epochs, seed))
        if sampler == "unbounded":
            worker.study.sampler = make_sampler(worker_seed(seed, worker.index))
        study = worker.run()
        finished = sorted((trial for trial in study.get_trials(deepcopy=False) if trial.state.is_finished()
                           and trial.state.name != "FAIL"), key=lambda trial: trial.number)
        best, curve = -math.inf, []
        for trial in finished:
            if trial.state.name == "COMPLETE":
                best = max(best, trial.value)
            curve.append(best)
        worker.storage.close()
        return curve, [trial.params for trial in finished]
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def subset(dataset: Dataset, size: int) -> Dataset:
    train = dataset.train
    return dataclasses.replace(dataset, train=Split(train.features[:size], train.labels[:size]))


WORKERS = ("bounded", "unbounded")


def run(job: tuple[str, int, argparse.Namespace]) -> tuple[str, int, list[float], list[dict], float]:
    """One study, in a process of its own."""
    name, seed, args = job
    torch.set_num_threads(1)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    started = time.monotonic()
    dataset = subset(load_dataset("fashion_mnist", None), args.train_size)
    curve, chosen = search(name, dataset, seed, args.trials, args.epochs)
    return name, seed, curve, chosen, time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument("--train-size", type=int, default=3_000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--jobs", type=int, default=os.cpu_count(), help="studies run at once")
    parser.add_argument("--quick", action="store_true", help="one seed, a few tiny trials, to prove it runs (CI)")
    args = parser.parse_args()
    if args.quick:
        args.seeds, args.trials, args.train_size, args.epochs, args.jobs = [0], 4, 300, 1, 2
    dataset = load_dataset("fashion_mnist", None)
    marks = sorted({min(args.trials, mark) for mark in (50, 100, 150, 200, 300, 500)} | {args.trials})
    started = time.monotonic()
    results: dict[str, dict[int, list[float]]] = {"bounded": {}, "unbounded": {}}
    params: dict[str, dict[int, list[dict]]] = {"bounded": {}, "unbounded": {}}
    runs = [(name, seed, args) for seed in args.seeds for name in WORKERS]
    # One study per process and one thread per study: the runs are independent and small
    # models train about as fast on one core as on two.
    with multiprocessing.get_context("spawn").Pool(args.jobs) as pool:
        for name, seed, curve, chosen, seconds in pool.imap_unordered(run, runs):
            results[name][seed], params[name][seed] = curve, chosen
            print(f"seed {seed} {name:9}: best {curve[-1]:.4f} after {args.trials} trials ({seconds:.0f} s)",
                  flush=True)

    print(f"\n== Fashion-MNIST, first {args.train_size} training images, {args.epochs} epochs per trial, "
          f"validation on {len(dataset.validation)} images, {args.trials} trials per study, one worker, "
          f"{args.jobs} studies at a time, "
          f"{time.monotonic() - started:.0f} s in all")
    print("best validation accuracy after N trials, bounded / unbounded TPE")
    print("seed  " + "  ".join(f"{f'N={mark}':>15}" for mark in marks))
    for seed in args.seeds:
        cells = [f"{results['bounded'][seed][mark - 1]:.4f}/{results['unbounded'][seed][mark - 1]:.4f}"
                 for mark in marks]
        print(f"{seed:>4}  " + "  ".join(f"{cell:>15}" for cell in cells))
    shared = [first_difference(params["bounded"][seed], params["unbounded"][seed]) for seed in args.seeds]
    print(f"(the two runs of a seed sample the same params for their first {min(shared)}-{max(shared)} trials: "
          f"until the bound leaves trials out of TPE's view)")
    print("\nmean over seeds, bounded - unbounded (standard error), and the seed-to-seed spread of unbounded")
    verdicts = []
    for mark in marks:
        bounded = [results["bounded"][seed][mark - 1] for seed in args.seeds]
        unbounded = [results["unbounded"][seed][mark - 1] for seed in args.seeds]
        differences = [b - u for b, u in zip(bounded, unbounded)]
        mean = statistics.fmean(differences)
        error = statistics.stdev(differences) / math.sqrt(len(differences)) if len(differences) > 1 else math.nan
        spread = statistics.stdev(unbounded) if len(unbounded) > 1 else math.nan
        # "Within noise": not worse by more than two standard errors of the paired difference
        # nor by more than the spread between seeds of the reference itself.
        within = mean >= -max(2 * error, spread) if not math.isnan(error) else mean >= 0
        verdicts.append(within)
        print(f"  N={mark:<4} bounded {statistics.fmean(bounded):.4f}  unbounded {statistics.fmean(unbounded):.4f}  "
              f"difference {mean:+.4f} (SE {error:.4f})  seed spread {spread:.4f}  "
              f"{'within noise' if within else 'WORSE'}")
    print("PASS" if all(verdicts) else "FAIL")
    sys.exit(0 if all(verdicts) else 1)


def first_difference(a: list, b: list) -> int:
    """How many leading items two lists share."""
    for index, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return index
    return min(len(a), len(b))


if __name__ == "__main__":
    main()
