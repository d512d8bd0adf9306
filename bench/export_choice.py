"""Which trial should a search export? Measured on the test set, after the searches.

The best validation accuracy of many close trials on one 5,000-image split is partly
luck. For each study kept by ``bench/search_quality.py --keep DIR``, the ``--top`` trials
by validation accuracy are each

* retrained on train+validation with the trial's seed and measured on the test set
  (exactly what ``search best --export --retrain`` does for the one it picks), and
* trained once more on a second fold: the 5,000 training images next in the data set's
  fixed order become the validation split and the first validation split trains
  (what choosing by two folds instead of one would see).

Then each way of choosing is scored by the test accuracy of the trial it would export:
the best validation accuracy (``search best``'s choice), the best mean of the two folds,
and, for scale, the best of the top on the test set itself (no search may use it) and
their average. Prints a row per study and the mean over studies.

    python -m bench.export_choice DIR [--top 3] [--jobs 2] [--quick]
"""

from __future__ import annotations

import argparse
import dataclasses
import multiprocessing
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def measure(job: tuple[str, int, dict, int, int, str | None]) -> tuple[str, int, float, float]:
    """Train one trial's configuration twice, in a process of its own on one core: its test
    accuracy after retraining on train+validation, and its accuracy on the second fold."""
    import torch

    from objectives.data import Split
    from objectives.datasets import load_dataset
    from objectives.recipe import Recipe, train
    from objectives.training.device import choose_precision
    from objectives.training.trainer import accuracy

    torch.set_num_threads(1)
    study, number, params, seed, epochs, data_dir = job
    dataset = load_dataset("fashion_mnist", data_dir)
    device = torch.device("cpu")
    precision = choose_precision("auto", device)
    recipe = Recipe.of(params, dataset, epochs)

    trainer = recipe.trainer(dataset.train_and_validation(), device, seed, precision)
    for _ in train(trainer, epochs):
        pass
    test = accuracy(trainer.model, dataset.test)

    held = len(dataset.validation)
    fold = dataclasses.replace(dataset, validation=Split(dataset.train.features[:held], dataset.train.labels[:held]),
                               train=Split(torch.cat([dataset.validation.features, dataset.train.features[held:]]),
                                           torch.cat([dataset.validation.labels, dataset.train.labels[held:]])))
    trainer = recipe.trainer(fold.train, device, seed, precision)
    for _ in train(trainer, epochs):
        pass
    return study, number, test, accuracy(trainer.model, fold.validation)


def top_trials(database: Path, top: int) -> tuple[int, list]:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name=None, storage=f"sqlite:///{database}")
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    return int(study.user_attrs["epochs"]), sorted(complete, key=lambda trial: -trial.value)[:top]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("studies", type=Path, nargs="*", help="directories kept by search_quality --keep "
                        "(each seed-S/search.db inside is one study)")
    parser.add_argument("--top", type=int, default=3, help="trials per study, by validation accuracy")
    parser.add_argument("--jobs", type=int, default=2, help="trainings at once, one core each")
    parser.add_argument("--data-dir", help="Fashion-MNIST's directory (default: the system copy)")
    parser.add_argument("--quick", action="store_true", help="a tiny search on generated data first (CI)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="hpsearch-choice-")) if args.quick else None
    try:
        compare(args, work)
    finally:
        if work is not None:
            shutil.rmtree(work, ignore_errors=True)


def compare(args: argparse.Namespace, work: Path | None) -> None:
    if work is not None:
        sys.path.insert(0, str(REPO))
        import subprocess

        from tests.support.datafiles import write_fashion_mnist

        args.data_dir = str(write_fashion_mnist(work / "data", n_train=600, n_test=100))
        (work / "seed-0").mkdir()
        subprocess.run([sys.executable, "-m", "search.cli", "run", "--epochs", "1", "--n-trials", "3",
                        "--data-dir", args.data_dir], cwd=work / "seed-0", check=True, capture_output=True)
        args.studies, args.top = [work], 2
    databases = sorted(path for directory in args.studies for path in directory.glob("seed-*/search.db"))
    jobs, values = [], {}
    for database in databases:
        epochs, trials = top_trials(database, args.top)
        for trial in trials:
            values[(str(database), trial.number)] = trial.value
            jobs.append((str(database), trial.number, trial.params, int(trial.user_attrs["seed"]), epochs,
                         args.data_dir))
    print(f"{len(databases)} studies, their top {args.top} trials: {len(jobs)} configurations, each trained twice",
          flush=True)
    results: dict[str, dict[int, tuple[float, float]]] = {}
    with multiprocessing.get_context("spawn").Pool(args.jobs) as pool:
        for study, number, test, second in pool.imap_unordered(measure, jobs):
            results.setdefault(study, {})[number] = (test, second)
            print(f"  {Path(study).parent.name} trial {number}: validation {values[(study, number)]:.2%}, "
                  f"second fold {second:.2%}, test after retraining {test:.2%}", flush=True)

    choices = {"best validation accuracy": [], "best mean of two folds": [], "best on test (no search may)": [],
               "average of the top": []}
    print(f"\n{'study':>8} | " + " | ".join(f"{name:>28}" for name in choices))
    for study, measured in sorted(results.items()):
        by_val = max(measured, key=lambda number: values[(study, number)])
        by_folds = max(measured, key=lambda number: values[(study, number)] + measured[number][1])
        picks = [measured[by_val][0], measured[by_folds][0], max(test for test, _ in measured.values()),
                 statistics.fmean(test for test, _ in measured.values())]
        for name, pick in zip(choices, picks):
            choices[name].append(pick)
        print(f"{Path(study).parent.name:>8} | " + " | ".join(f"{pick:>28.2%}" for pick in picks))
    print(f"{'mean':>8} | " + " | ".join(f"{statistics.fmean(picks):>28.2%}" for picks in choices.values()))
    print("test accuracy of the exported model, by how the trial is chosen among the top "
          f"{args.top}")


if __name__ == "__main__":
    main()
