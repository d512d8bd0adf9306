"""Time to accuracy: a whole search with this project vs the textbook recipe, on real
Fashion-MNIST, with the same wall-clock budget each.

* **textbook**: the recipe of Optuna's and PyTorch's tutorials (``bench/textbook.py``):
  torchvision ``FashionMNIST`` with ``transforms.v2``, ``random_split`` 55,000/5,000,
  ``DataLoader`` batch 32 (training and validation), a 784-n-n-10 ReLU MLP, SGD (learning
  rate and momentum searched, like n), ``TPESampler(seed=42)``, ``MedianPruner(5, 0, 1)``,
  ``study.optimize(timeout=...)``, reporting validation accuracy every epoch.
* **this project**: ``search run`` with its defaults (the shipped search space, TPE, the
  median pruner) on an embedded SQLite study, the same epochs per trial.

Each runs in its own process, one after the other (never side by side), with torch's
default threads; the clock starts when its process is started, so imports and loading the
data count. At the budget it is stopped; only trials that finished within it count.
Prints, for each: the best validation accuracy of a finished trial at 2, 4 and 8 minutes
(scaled to ``--minutes``), the time to the first finished trial at 88, 89 and 90 %,
trials completed and pruned, and the ratios.

    python -m bench.search_efficiency [--minutes 8] [--epochs 10] [--data-dir DIR]
"""

from __future__ import annotations

import argparse
import datetime
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import optuna
from optuna.trial import TrialState

from bench import textbook
from objectives.datasets import fashion_mnist

REPO = Path(__file__).resolve().parents[1]  # the children run from a temporary directory

THRESHOLDS = (0.88, 0.89, 0.90)
GRACE_S = 15  # for a stopped search to write its last state


def textbook_search(raw_root: Path, storage: str, budget: float, epochs: int) -> None:
    """The tutorial's Optuna search, run in a child process (``--textbook-child``)."""
    import torch

    device = torch.device("cpu")
    train, validation = torch.utils.data.random_split(textbook.training_images(raw_root), [55_000, 5_000],
                                                      generator=torch.Generator().manual_seed(42))
    validation_loader = torch.utils.data.DataLoader(validation, batch_size=32)

    def objective(trial: optuna.Trial) -> float:
        n_units = trial.suggest_int("n_units", 32, 512, log=True)
        learning_rate = trial.suggest_float("learning_rate", 1e-3, 1e-1, log=True)
        momentum = trial.suggest_float("momentum", 0.0, 0.99)
        model = textbook.mlp([n_units, n_units]).to(device)
        optimizer = torch.optim.SGD(model.parameters(), lr=learning_rate, momentum=momentum)
        loader = torch.utils.data.DataLoader(train, batch_size=32, shuffle=True)
        accuracy = 0.0
        for epoch in range(epochs):
            textbook.train_epoch(model, loader, optimizer, device)
            accuracy = textbook.evaluate(model, validation_loader, device)
            trial.report(accuracy, epoch)
            if trial.should_prune():
                raise optuna.TrialPruned()
        return accuracy

    study = optuna.create_study(study_name="textbook", storage=storage, direction="maximize",
                                sampler=optuna.samplers.TPESampler(seed=42),
                                pruner=optuna.pruners.MedianPruner(5, 0, 1))
    study.optimize(objective, timeout=budget)


def run_for(command: list[str], budget: float, log: Path) -> datetime.datetime:
    """Start ``command``, stop it at the budget (SIGTERM, then SIGKILL); return its start time."""
    started = datetime.datetime.now()
    with open(log, "w") as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, cwd=log.parent,
                                   env={**os.environ, "PYTHONPATH": str(REPO)})
        try:
            process.wait(timeout=budget)
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=GRACE_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
    return started


def within_budget(storage: str, study: str, started: datetime.datetime,
                  budget: float) -> list[tuple[float, TrialState, float | None]]:
    """(seconds from start, state, value) of each trial that finished within the budget."""
    finished = []
    for trial in optuna.load_study(study_name=study, storage=storage).get_trials(deepcopy=False):
        if trial.state in (TrialState.COMPLETE, TrialState.PRUNED) and trial.datetime_complete is not None:
            seconds = (trial.datetime_complete - started).total_seconds()
            if seconds <= budget:
                finished.append((seconds, trial.state, trial.value))
    return sorted(finished, key=lambda row: row[0])


def best_by(finished: list[tuple[float, TrialState, float | None]], seconds: float) -> float | None:
    values = [value for at, state, value in finished if state == TrialState.COMPLETE and at <= seconds]
    return max(values, default=None)


def time_to(finished: list[tuple[float, TrialState, float | None]], threshold: float) -> float | None:
    return next((at for at, state, value in finished if state == TrialState.COMPLETE and value >= threshold), None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=8.0, help="wall budget of each search")
    parser.add_argument("--epochs", type=int, default=10, help="epochs per trial, both searches")
    parser.add_argument("--data-dir", type=Path, default=fashion_mnist.SYSTEM_DIR)
    parser.add_argument("--textbook-child", nargs=3, metavar=("RAW_ROOT", "STORAGE", "BUDGET"),
                        help=argparse.SUPPRESS)
    parser.add_argument("--quick", action="store_true", help="15 s each and one epoch, to prove it runs (CI)")
    args = parser.parse_args()
    if args.quick:
        args.minutes, args.epochs = 0.25, 1
    if args.textbook_child:
        raw_root, storage, budget = args.textbook_child
        textbook_search(Path(raw_root), storage, float(budget), args.epochs)
        return

    budget = args.minutes * 60
    marks = [budget / 4, budget / 2, budget]
    with tempfile.TemporaryDirectory(prefix="hpsearch-efficiency-") as tmp:
        work = Path(tmp)
        raw_root = textbook.extract_for_torchvision(fashion_mnist.find_files(args.data_dir)["train_images"].parent,
                                                    work / "torchvision")
        sides = {}
        textbook_db = f"sqlite:///{work / 'textbook.db'}"
        print(f"textbook recipe: {args.minutes:g} minutes ...", flush=True)
        started = run_for([sys.executable, "-m", "bench.search_efficiency", "--epochs", str(args.epochs),
                           "--textbook-child", str(raw_root), textbook_db, str(budget)], budget, work / "textbook.log")
        sides["textbook"] = within_budget(textbook_db, "textbook", started, budget)
        ours_db = f"sqlite:///{work / 'ours.db'}"
        print(f"this project (search run): {args.minutes:g} minutes ...", flush=True)
        started = run_for([sys.executable, "-m", "search.cli", "run", "--storage", ours_db, "--study", "ours",
                           "--artifacts", str(work / "artifacts"), "--data-dir", str(args.data_dir),
                           "--epochs", str(args.epochs), "--n-trials", "100000", "--timeout", str(budget),
                           "--device", "cpu"], budget, work / "ours.log")
        sides["ours"] = within_budget(ours_db, "ours", started, budget)

    def minutes(seconds: float | None) -> str:
        return f"> {budget / 60:g} min" if seconds is None else f"{seconds / 60:.2f} min"

    def percent(value: float | None) -> str:
        return "-" if value is None else f"{value:.2%}"

    textbook_rows, our_rows = sides["textbook"], sides["ours"]
    print(f"\nreal Fashion-MNIST, {args.epochs} epochs per trial, {args.minutes:g} minutes each, "
          f"{os.cpu_count()} CPU cores, no GPU")
    print(f"{'':32} {'textbook':>14} {'this project':>14}   ratio")
    for mark in marks:
        ours, theirs = best_by(our_rows, mark), best_by(textbook_rows, mark)
        gain = f"{(ours - theirs) * 100:+.2f} pp" if ours is not None and theirs is not None else ""
        print(f"{'best val acc at ' + minutes(mark):32} {percent(theirs):>14} {percent(ours):>14}   {gain}")
    for threshold in THRESHOLDS:
        ours, theirs = time_to(our_rows, threshold), time_to(textbook_rows, threshold)
        if ours is None:
            ratio = ""
        elif theirs is None:
            ratio = f"> {budget / ours:.1f}x sooner"
        else:
            ratio = f"{theirs / ours:.1f}x sooner"
        print(f"{'time to ' + format(threshold, '.0%'):32} {minutes(theirs):>14} {minutes(ours):>14}   {ratio}")
    for name, state in (("trials completed", TrialState.COMPLETE), ("trials pruned", TrialState.PRUNED)):
        counts = [sum(row[1] == state for row in rows) for rows in (textbook_rows, our_rows)]
        print(f"{name:32} {counts[0]:>14} {counts[1]:>14}")


if __name__ == "__main__":
    main()
