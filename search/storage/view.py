"""A read-only view of a storage in which each big study shows a cut of its trials, for
optuna-dashboard: it reads every trial of a study on each refresh and sends them all to
the page, which stops loading in time somewhere past 10,000 trials.

A study with more than ``3 * n`` trials shows its ``n`` best complete trials and its
unfinished ones (as of the cut) and every trial from its ``n``-th latest on, in order.
The list only grows at its end as new trials come (the dashboard's page fetches "the
trials after the first k" and keeps the first k it has), until ``n`` more trials came
after the cut: then the study is cut again (an open page shows the new cut once
reloaded). Everything else is the storage's own.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Callable, Container, Sequence
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.storages import BaseStorage
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from search.storage.optuna_adapter import trial_id
from search.storage.resilient import ResilientStorage


@dataclass(frozen=True)
class Cut:
    """Trials with an id in ``kept`` or above ``after_id`` are shown (all: ``after_id`` -1)."""

    kept: frozenset[int]
    after_id: int
    total: int  # the study's trials when it was cut

    def describe(self, shown: int) -> str:
        return f"{shown:,} of its {self.total:,} trials"


class CutView(BaseStorage):
    def __init__(self, storage: ResilientStorage, n: int,
                 say: Callable[[str], None] = lambda line: None) -> None:
        self.storage = storage
        self.n = n
        self.say = say
        self.cuts: dict[int, Cut] = {}
        self.lock = threading.Lock()

    # --- the cut --------------------------------------------------------------
    def cut(self, study_id: int) -> Cut:
        results = self.storage.results(study_id)
        total, _ = results.size()
        if total <= 3 * self.n:
            return Cut(frozenset(), -1, total)
        maximize = self.storage.get_study_directions(study_id)[0] == StudyDirection.MAXIMIZE
        kept = {*results.best_ids(self.n, maximize), *results.unfinished_ids()}
        return Cut(frozenset(kept), results.nth_last_id(self.n) - 1, total)

    def get_all_trials(self, study_id: int, deepcopy: bool = True,
                       states: Container[TrialState] | None = None) -> list[FrozenTrial]:
        with self.lock:
            cut = self.cuts.get(study_id)
            if cut is None:
                cut = self.cuts[study_id] = self.cut(study_id)
            trials = self.storage.results(study_id).in_view(set(cut.kept), cut.after_id)
            if cut.after_id >= 0 and sum(trial_id(trial) > cut.after_id for trial in trials) >= 2 * self.n:
                cut = self.cuts[study_id] = self.cut(study_id)  # n more came after the cut: cut again
                trials = self.storage.results(study_id).in_view(set(cut.kept), cut.after_id)
                self.say(f"study {self.get_study_name_from_id(study_id)!r} cut again: the dashboard shows "
                         f"{cut.describe(len(trials))}; reload the page")
        if states is not None:
            trials = [trial for trial in trials if trial.state in states]
        return copy.deepcopy(trials) if deepcopy else trials

    def describe(self) -> list[str]:
        """A line per study that shows a cut of its trials."""
        lines = []
        for study in self.storage.get_all_studies():
            study_id = self.get_study_id_from_name(study.study_name)
            trials = self.get_all_trials(study_id, deepcopy=False)
            cut = self.cuts[study_id]
            if cut.after_id >= 0:
                lines.append(f"study {study.study_name!r}: the dashboard shows {cut.describe(len(trials))}: the "
                             f"best {self.n}, the unfinished and the latest {self.n} (--view-trials); every trial: "
                             f"search report --study {study.study_name}")
        return lines

    # --- everything else is the storage's ------------------------------------
    def get_n_trials(self, study_id: int, state: tuple[TrialState, ...] | TrialState | None = None) -> int:
        if isinstance(state, TrialState):
            state = (state,)
        return len(self.get_all_trials(study_id, deepcopy=False, states=state))

    def get_best_trial(self, study_id: int) -> FrozenTrial:
        return self.storage.get_best_trial(study_id)

    def create_new_study(self, directions: Sequence[StudyDirection], study_name: str | None = None) -> int:
        return self.storage.create_new_study(directions, study_name)

    def delete_study(self, study_id: int) -> None:
        self.storage.delete_study(study_id)

    def set_study_user_attr(self, study_id: int, key: str, value: Any) -> None:
        self.storage.set_study_user_attr(study_id, key, value)

    def set_study_system_attr(self, study_id: int, key: str, value: Any) -> None:
        self.storage.set_study_system_attr(study_id, key, value)

    def get_study_id_from_name(self, study_name: str) -> int:
        return self.storage.get_study_id_from_name(study_name)

    def get_study_name_from_id(self, study_id: int) -> str:
        return self.storage.get_study_name_from_id(study_id)

    def get_study_directions(self, study_id: int) -> list[StudyDirection]:
        return self.storage.get_study_directions(study_id)

    def get_study_user_attrs(self, study_id: int) -> dict[str, Any]:
        return self.storage.get_study_user_attrs(study_id)

    def get_study_system_attrs(self, study_id: int) -> dict[str, Any]:
        return self.storage.get_study_system_attrs(study_id)

    def get_all_studies(self) -> list[optuna.study.FrozenStudy]:
        return self.storage.get_all_studies()

    def create_new_trial(self, study_id: int, template_trial: FrozenTrial | None = None) -> int:
        return self.storage.create_new_trial(study_id, template_trial)

    def set_trial_param(self, trial_id: int, param_name: str, param_value_internal: float,
                        distribution: optuna.distributions.BaseDistribution) -> None:
        self.storage.set_trial_param(trial_id, param_name, param_value_internal, distribution)

    def set_trial_state_values(self, trial_id: int, state: TrialState, values: Sequence[float] | None = None) -> bool:
        return self.storage.set_trial_state_values(trial_id, state, values)

    def set_trial_intermediate_value(self, trial_id: int, step: int, intermediate_value: float) -> None:
        self.storage.set_trial_intermediate_value(trial_id, step, intermediate_value)

    def set_trial_user_attr(self, trial_id: int, key: str, value: Any) -> None:
        self.storage.set_trial_user_attr(trial_id, key, value)

    def set_trial_system_attr(self, trial_id: int, key: str, value: Any) -> None:
        self.storage.set_trial_system_attr(trial_id, key, value)

    def get_trial(self, trial_id: int) -> FrozenTrial:
        return self.storage.get_trial(trial_id)

    def get_trial_id_from_study_id_trial_number(self, study_id: int, trial_number: int) -> int:
        return self.storage.get_trial_id_from_study_id_trial_number(study_id, trial_number)

