"""A worker's in-memory view of its study, kept up to date by reading only what changed.

Sampling and pruning used to read every trial from the database several times per
trial, and TPE fitted every past trial: per-trial cost grew with the study. ``History``
reads once per trial, and only trials that are new or whose state changed since the last
read (finished trials never change; of a running one, the sampler needs only its params,
written once). From that it keeps, incrementally:

* for the pruner, each step's intermediate values of completed trials, sorted, so the
  median rule is exact at any study size (``search.study.pruner.HistoryMedianPruner``);
* for the sampler, a bounded and well-chosen part of the history
  (``sampler_trials``): every running trial (constant liar), the best ``BEST``
  completed trials, the ``RECENT`` latest finished trials (where the search is now),
  and a uniform reservoir sample of ``SAMPLE`` finished trials (the shape of the
  "bad" density). TPE then fits at most ``BEST + RECENT + SAMPLE`` finished trials
  however long the study runs. Its "good" set is the same as with the whole history:
  ``gamma`` sizes it from the whole history's count (at most 25, all among the best
  ``BEST``);
* the completed trials ranked by value, for ``--keep-best``.
"""

from __future__ import annotations

import bisect
import math
import random
import time
from collections import deque
from collections.abc import Iterable
from typing import TYPE_CHECKING

import optuna
from optuna.trial import FrozenTrial, TrialState

from search.storage import optuna_adapter

if TYPE_CHECKING:
    from search.storage.resilient import ResilientStorage

BEST = 25  # TPE's "good" set never holds more (``gamma``)
RECENT = 25  # as many as TPE weighs fully in its "bad" density (the rest ramp down with age)
SAMPLE = 50


class History:
    def __init__(self, storage: ResilientStorage, study: optuna.Study, seed: int = 0) -> None:
        self.storage = storage
        self.study_id = optuna_adapter.study_id(study)
        self.maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
        self.unfinished: dict[int, FrozenTrial] = {}  # by trial id
        self.last_id = -1
        self.finished = 0
        self.completed = 0
        self.pruned = 0
        self.ranked: list[tuple[float, int, FrozenTrial]] = []  # completed, best first
        self.recent: deque[FrozenTrial] = deque(maxlen=RECENT)
        self.completions: deque[FrozenTrial] = deque(maxlen=1000)  # the latest completed (keep-best)
        self.sample: list[FrozenTrial] = []
        self.steps: dict[int, list[float]] = {}  # step -> sorted values of completed trials
        self.rng = random.Random(seed)
        self.version = 0
        self.read_at = -math.inf  # time.monotonic() of the last refresh
        self._subset: tuple[int, list[FrozenTrial]] = (-1, [])
        self._judged = 0  # ``completed`` at the last ``outside_best``

    def refresh(self, max_age: float = 0.0, fresh: Iterable[int] = ()) -> None:
        """Read the trials added or changed since the last refresh, unless the last refresh
        is younger than ``max_age`` seconds; the trials ``fresh`` (ids) are read whole."""
        if time.monotonic() - self.read_at < max_age:
            return
        self.read_at = time.monotonic()
        for trial in optuna_adapter.changed_trials(self.storage, self.study_id, self.unfinished, self.last_id,
                                                   fresh):
            self.last_id = max(self.last_id, optuna_adapter.trial_id(trial))
            self._absorb(trial)
        self.version += 1

    def absorb(self, trial: FrozenTrial) -> None:
        """Take in a trial this worker just finished, as it recorded it: no query."""
        if optuna_adapter.trial_id(trial) in self.unfinished:
            self._absorb(trial)
            self.version += 1

    def _absorb(self, trial: FrozenTrial) -> None:
        trial_id = optuna_adapter.trial_id(trial)
        if not trial.state.is_finished():
            self.unfinished[trial_id] = trial
            return
        self.unfinished.pop(trial_id, None)
        self.finished += 1
        self.recent.append(trial)
        # Reservoir sampling: every finished trial is in the sample with equal probability.
        if len(self.sample) < SAMPLE:
            self.sample.append(trial)
        elif (slot := self.rng.randrange(self.finished)) < SAMPLE:
            self.sample[slot] = trial
        self.pruned += trial.state == TrialState.PRUNED
        if trial.state == TrialState.COMPLETE and trial.value is not None:
            self.completed += 1
            self.completions.append(trial)
            key = -trial.value if self.maximize else trial.value
            bisect.insort(self.ranked, (key, trial.number, trial), key=lambda entry: entry[:2])
            for step, value in trial.intermediate_values.items():
                if not math.isnan(value):
                    bisect.insort(self.steps.setdefault(step, []), value)

    def trial(self, trial_id: int) -> FrozenTrial | None:
        """The latest copy of an unfinished trial, as read by the last refresh."""
        return self.unfinished.get(trial_id)

    def running(self) -> Iterable[FrozenTrial]:
        return (trial for trial in self.unfinished.values() if trial.state == TrialState.RUNNING)

    def best(self, n: int) -> list[FrozenTrial]:
        return [trial for _, _, trial in self.ranked[:n]]

    def outside_best(self, keep: int) -> list[FrozenTrial]:
        """Completed trials outside the best ``keep`` (for ``--keep-best``). Only what
        changed since the last call is looked at: the trials completed since, and those
        they pushed out of the best (at most as many); the first call, or one after more
        completions than ``completions`` remembers, looks at all of them."""
        new = self.completed - self._judged
        if self._judged == 0 or new > len(self.completions):
            candidates = [trial for _, _, trial in self.ranked[keep:]]
        else:
            best = {number for _, number, _ in self.ranked[:keep]}
            candidates = [trial for _, _, trial in self.ranked[keep:keep + new]] + [
                trial for trial in list(self.completions)[len(self.completions) - new:] if trial.number not in best]
        self._judged = self.completed
        return candidates

    def sampler_trials(self) -> list[FrozenTrial]:
        """The bounded part of the history the sampler fits, ordered by trial number."""
        version, subset = self._subset
        if version != self.version:
            chosen = {trial.number: trial for trial in (*self.running(), *self.best(BEST), *self.recent,
                                                         *self.sample)}
            subset = sorted(chosen.values(), key=lambda trial: trial.number)
            self._subset = (self.version, subset)
        return subset

    def gamma(self, n: int) -> int:
        """TPESampler's default gamma (``min(ceil(0.1 n), 25)``), of the whole history's
        count of complete and pruned trials rather than the ``n`` of the part it is given."""
        return min(math.ceil(0.1 * max(n, self.completed + self.pruned)), BEST)

    def step_values(self, step: int) -> list[float]:
        """Sorted intermediate values at ``step`` of every completed trial that reported it."""
        return self.steps.get(step, [])
