"""The sampler and pruner a worker uses: Optuna's TPE and median rule, at bounded cost.

* ``BoundedSampler`` runs Optuna's ``TPESampler`` unchanged, on a study view whose trials
  are ``History.sampler_trials()``: the running ones, the best, the latest and a uniform
  sample. TPE's "good" set is the same as with the whole history; its "bad" density is
  estimated from a sample instead of every trial. ``bench/search_quality.py`` compares
  it with unbounded TPE on real Fashion-MNIST.
* ``HistoryMedianPruner`` makes exactly ``MedianPruner``'s decisions (tests compare the
  two on random studies) from the per-step sorted values ``History`` keeps, instead of
  collecting every completed trial's value at every report. It compares with the trials
  completed up to ``FRESHNESS_S`` ago: a report refreshes the history when it is older.
"""

from __future__ import annotations

import math
from typing import Any

import optuna
from optuna.distributions import BaseDistribution
from optuna.trial import FrozenTrial

from search import optuna_adapter
from search.history import History

FRESHNESS_S = 10.0


class BoundedSampler(optuna.samplers.BaseSampler):
    def __init__(self, inner: optuna.samplers.BaseSampler, history: History) -> None:
        self.inner = inner
        self.history = history

    def _view(self, study: optuna.Study) -> optuna.Study:
        return optuna_adapter.StudyView(study, self.history.sampler_trials())

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return self.inner.infer_relative_search_space(self._view(study), trial)

    def sample_relative(self, study: optuna.Study, trial: FrozenTrial,
                        search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        return self.inner.sample_relative(self._view(study), trial, search_space)

    def sample_independent(self, study: optuna.Study, trial: FrozenTrial, param_name: str,
                           param_distribution: BaseDistribution) -> Any:
        return self.inner.sample_independent(self._view(study), trial, param_name, param_distribution)

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self.inner.before_trial(self._view(study), trial)

    def after_trial(self, study: optuna.Study, trial: FrozenTrial, state: optuna.trial.TrialState,
                    values: Any) -> None:
        self.inner.after_trial(self._view(study), trial, state, values)

    def reseed_rng(self) -> None:
        self.inner.reseed_rng()


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
