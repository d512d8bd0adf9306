"""A stand-in for training, shared by the scale benchmarks: the real search space, reports
and prune checks, and an accuracy that depends on the learning rate (so TPE and the pruner
have something to work on), without a model."""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable

import optuna

from objectives import space
from search import keys
from search.study.spec import StudySpec
from search.worker.workload import Joined

EPOCHS = 5


def accuracy(params: dict, rng: random.Random) -> float:
    """Best near learning rate 1e-3, with noise: 0.9 at best."""
    return 0.9 - 0.05 * abs(math.log10(params["learning_rate"]) + 3) + rng.gauss(0, 0.01)


def report_and_prune(trial: optuna.Trial, final: float = 0.85, epoch_seconds: float = 0.0) -> bool:
    """Report a learning curve that rises to ``final``; True when the pruner stops it."""
    for step in range(1, EPOCHS + 1):
        time.sleep(epoch_seconds)
        trial.report(final - 0.1 / step, step)
        if trial.should_prune():
            return True
    return False


class NoTraining:
    """The worker's ``Workload`` (``search.worker.workload.Workload``) with no model: each
    "epoch" sleeps ``epoch_seconds``, as a GPU-bound trial leaves the CPU to others."""

    device = "cpu"
    precision = "float32"

    def __init__(self, epoch_seconds: float = 0.0) -> None:
        self.epoch_seconds = epoch_seconds

    def check(self, spec: StudySpec) -> None:
        return None

    def objective(self, joined: Joined) -> Callable[[optuna.Trial], float]:
        rng = random.Random(joined.index)

        def objective(trial: optuna.Trial) -> float:
            params = space.suggest(trial, joined.space)
            trial.set_user_attr(keys.SEED, trial.number)
            final = accuracy(params, rng)
            if report_and_prune(trial, final, self.epoch_seconds):
                raise optuna.TrialPruned("pruned")
            return final
        return objective
