"""The sampler a worker uses: Optuna's TPE, at bounded cost.

``BoundedSampler`` runs Optuna's ``TPESampler`` unchanged, on a study view whose trials
are ``History.sampler_trials()``: the running ones, the best, the latest and a uniform
sample. TPE's "good" set is the same as with the whole history; its "bad" density is
estimated from a sample instead of every trial. ``bench/bounded_sampler.py`` compares it
with unbounded TPE on real Fashion-MNIST. While it samples, TPE computes log Phi on whole
arrays (``optuna_adapter.faster_tpe``).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import optuna
from optuna.distributions import BaseDistribution
from optuna.trial import FrozenTrial

from search.storage import optuna_adapter
from search.study.history import History


def worker_seed(base_seed: int, index: int) -> int:
    """Worker ``index``'s sampler seed: workers must not propose the same trials."""
    return (base_seed + index) % 2**32


def make_sampler(seed: int | None, gamma: Callable[[int], int] | None = None, constant_liar: bool = True,
                 startup: int | None = None) -> optuna.samplers.BaseSampler:
    """The study's TPE; ``gamma`` sizes its "good" set (Optuna's default if None);
    ``constant_liar`` and ``startup`` (random trials before TPE models; Optuna's default if
    None) other than the defaults only where a benchmark compares them."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        # ``gamma`` is deprecated since Optuna 4.9, to go in 6 (pyproject keeps optuna<6): the
        # bounded sampler needs it to size TPE's good set from the whole history.
        warnings.simplefilter("ignore", FutureWarning)
        # constant_liar: running trials count as bad guesses, so parallel workers spread out.
        extra = {} if startup is None else {"n_startup_trials": startup}
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True, constant_liar=constant_liar,
                                          gamma=gamma, **extra)


class BoundedSampler(optuna.samplers.BaseSampler):
    def __init__(self, inner: optuna.samplers.BaseSampler, history: History) -> None:
        self.inner = inner
        self.history = history

    @classmethod
    def for_worker(cls, history: History, seed: int) -> BoundedSampler:
        """The worker's sampler: TPE seeded ``seed``, its good set sized from the whole history."""
        return cls(make_sampler(seed, gamma=history.gamma), history)

    def _view(self, study: optuna.Study) -> optuna.Study:
        return optuna_adapter.StudyView(study, self.history.sampler_trials())

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return self.inner.infer_relative_search_space(self._view(study), trial)

    def sample_relative(self, study: optuna.Study, trial: FrozenTrial,
                        search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        with optuna_adapter.faster_tpe():
            return self.inner.sample_relative(self._view(study), trial, search_space)

    def sample_independent(self, study: optuna.Study, trial: FrozenTrial, param_name: str,
                           param_distribution: BaseDistribution) -> Any:
        with optuna_adapter.faster_tpe():
            return self.inner.sample_independent(self._view(study), trial, param_name, param_distribution)

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self.inner.before_trial(self._view(study), trial)

    def after_trial(self, study: optuna.Study, trial: FrozenTrial, state: optuna.trial.TrialState,
                    values: Any) -> None:
        self.inner.after_trial(self._view(study), trial, state, values)

    def reseed_rng(self) -> None:
        self.inner.reseed_rng()
