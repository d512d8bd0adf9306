"""How a study stops unpromising trials: the ``--pruner`` choices, and the median rule, in
one place.

The choice is recorded with the study (user attr ``pruner``) like its data set: every
worker must prune by the same rule, or trials would be judged differently by whichever
worker happens to run them.

* ``median`` (the default): Optuna's ``MedianPruner`` rule. Workers apply it through
  ``HistoryMedianPruner``, which makes exactly ``MedianPruner``'s decisions (tests compare
  the two on random studies) from the per-step sorted values ``History`` keeps, instead
  of collecting every completed trial's value at every report. It compares with the
  trials completed up to ``FRESHNESS_S`` ago: a report refreshes the history when it is
  older.
* ``hyperband`` / ``successive-halving``: Optuna's own pruners, resource = epochs. They
  read the study's trials at each report (their cost grows with the study); Optuna
  routes only their pruning decisions through Hyperband's brackets, not sampling.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import optuna
from optuna.trial import FrozenTrial

from search import keys
from search.study.spec import DEFAULT_PRUNER, PRUNERS

if TYPE_CHECKING:
    from search.study.history import History

# The median rule's settings, for Optuna's MedianPruner and the worker's HistoryMedianPruner.
MEDIAN_PRUNER = {"n_startup_trials": 5, "n_warmup_steps": 0}
# Keep the best third at each rung: with 10-30 epoch trials that gives 3-4 rungs.
REDUCTION_FACTOR = 3
FRESHNESS_S = 10.0


def make_pruner(name: str = DEFAULT_PRUNER, epochs: int | None = None,
                history: History | None = None) -> optuna.pruners.BasePruner:
    """The pruner for ``name``; ``epochs`` (the study's) is Hyperband's largest resource.
    With a worker's ``history``, the median rule reads it instead of the study."""
    if name == "median":
        if history is not None:
            return HistoryMedianPruner(history, **MEDIAN_PRUNER)
        return optuna.pruners.MedianPruner(**MEDIAN_PRUNER, interval_steps=1)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=epochs or "auto",
                                              reduction_factor=REDUCTION_FACTOR)
    if name == "successive-halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=REDUCTION_FACTOR)
    raise ValueError(f"unknown pruner {name!r}; choose one of {', '.join(PRUNERS)}")


def study_pruner(study: optuna.Study) -> str:
    """The study's pruner (studies from before the choice existed used the median rule)."""
    return study.user_attrs.get(keys.PRUNER, DEFAULT_PRUNER)


def median(values: list[float]) -> float:
    """``numpy.percentile(values, 50)`` of sorted ``values``, to the last bit."""
    if not values:
        return math.nan
    index = 0.5 * (len(values) - 1)
    low, high = values[math.floor(index)], values[math.ceil(index)]
    fraction = index - math.floor(index)
    difference = high - low
    # numpy's _lerp: interpolate from the nearer end.
    return high - difference * (1 - fraction) if fraction >= 0.5 else low + difference * fraction


class HistoryMedianPruner(optuna.pruners.BasePruner):
    """``MedianPruner(n_startup_trials, n_warmup_steps, interval_steps=1)``, from ``History``."""

    def __init__(self, history: History, n_startup_trials: int, n_warmup_steps: int) -> None:
        self.history = history
        self.n_startup_trials = n_startup_trials
        self.n_warmup_steps = n_warmup_steps

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        self.history.refresh(max_age=FRESHNESS_S)
        if self.history.completed == 0 or self.history.completed < self.n_startup_trials:
            return False
        step = trial.last_step
        if step is None or step < self.n_warmup_steps:
            return False
        values = [value for value in trial.intermediate_values.values() if not math.isnan(value)]
        if not values:
            return True  # every report was NaN
        threshold = median(self.history.step_values(step))
        if math.isnan(threshold):
            return False
        if self.history.maximize:
            return max(values) < threshold
        return min(values) > threshold
