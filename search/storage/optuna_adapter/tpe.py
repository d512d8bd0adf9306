"""What the sampler reads: the changed trials, a bounded view of the study, TPE's log Phi.
See the package docstring for why each touch."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import optuna
import sqlalchemy as sa
from optuna.samplers._tpe import _truncnorm
from optuna.trial import FrozenTrial

from search.storage.optuna_adapter.schema import trials


def changed_trials(storage: Any, study_id_: int, unfinished: dict[int, FrozenTrial], last_id: int,
                   fresh: Iterable[int] = ()) -> list[FrozenTrial]:
    """Trials created after ``last_id``, and those of the ``unfinished`` ones (as last read)
    that changed state, were read before their params were written, or are in ``fresh``.

    A trial's state only moves forward and its params are written once, together, so the
    others are as last read in all the sampler and pruner use (a running trial's params;
    only completed trials' intermediate values). Their states are one small query: with
    hundreds of workers, re-reading every running trial whole was most of each refresh.
    """

    def read() -> list[FrozenTrial]:
        stale = set(fresh) & set(unfinished)
        if unfinished:
            with storage.transactions.connect() as connection:
                states = connection.execute(sa.select(trials.c.trial_id, trials.c.state).where(
                    trials.c.trial_id.in_(list(unfinished)))).all()
            stale |= {trial_id for trial_id, state in states
                      if state != unfinished[trial_id].state or not unfinished[trial_id].params}
        return storage.rdb._get_trials(study_id_, None, stale, last_id)
    return storage.policy.retrying(read)


class StudyView:
    """``study``, except that samplers reading its trials get ``trials`` (a bounded subset)."""

    def __init__(self, study: optuna.Study, trials: list[FrozenTrial]) -> None:
        self._study = study
        self._trials = trials

    def __getattr__(self, name: str) -> Any:
        return getattr(self._study, name)

    def _get_trials(self, deepcopy: bool = True, states: Any = None, use_cache: bool = False) -> list[FrozenTrial]:
        return self._trials if states is None else [trial for trial in self._trials if trial.state in states]

    def get_trials(self, deepcopy: bool = True, states: Any = None) -> list[FrozenTrial]:
        return self._get_trials(deepcopy, states)


_erfc = np.frompyfunc(math.erfc, 1, 1)


def log_ndtr(a: np.ndarray) -> np.ndarray:
    """log Phi(a), as Optuna's ``_log_ndtr_single`` computes it, on a whole array."""
    a = np.asarray(a, dtype=float)
    out = np.empty_like(a)
    high, low = a > 6, a <= -20
    middle = ~(high | low)
    out[middle] = np.log(0.5 * _erfc(-a[middle] / math.sqrt(2)).astype(float))
    out[high] = -0.5 * _erfc(a[high] / math.sqrt(2)).astype(float)  # log(1 - x) ~ -x for tiny x
    if low.any():  # the asymptotic series of the far left tail
        x = a[low]
        series, term = np.ones_like(x), np.ones_like(x)
        for i in range(1, 40):
            term = -term * (2 * i - 1) / x**2
            series += term
        out[low] = -0.5 * x**2 - np.log(-x) - 0.5 * math.log(2 * math.pi) + np.log(series)
    return out


STOCK_LOG_NDTR = _truncnorm._log_ndtr


@contextlib.contextmanager
def faster_tpe() -> Iterator[None]:
    """TPE computes log Phi with ``log_ndtr`` while the block runs, and with Optuna's own
    again after it: nothing else in the process (plain Optuna, other samplers) sees it.
    The sampler runs in the worker's main thread only."""
    _truncnorm._log_ndtr = log_ndtr
    try:
        yield
    finally:
        _truncnorm._log_ndtr = STOCK_LOG_NDTR
