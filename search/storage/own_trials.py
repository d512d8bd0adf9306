"""This worker's running trials, as it last wrote them, so that reading them costs nothing.

Optuna reads the running trial back from the storage on every ``should_prune`` and
``tell`` and when it builds the ``Trial``: a query that, with the parameter and
attribute rows, is most of a trial's database time. While a worker runs a trial, only
the worker writes its fields (another worker may fail it when it goes stale; the next
write then finds it finished and raises ``UpdateFinishedTrialError``), so a copy kept
up to date by the worker's own writes is the stored trial.

Suggested parameters wait in ``pending`` and are written together, in one transaction,
just before the trial's next other write (the first attribute, in practice before any
training): a suggest costs no round trip.
"""

from __future__ import annotations

import copy
from datetime import datetime, timezone

from optuna.distributions import BaseDistribution
from optuna.trial import FrozenTrial, TrialState

from search.storage.optuna_adapter import OwnWrite

KEEP = 4  # the trials of a worker are sequential; a few cover the one running and its tell


class OwnTrials:
    def __init__(self) -> None:
        self.trials: dict[int, FrozenTrial] = {}  # by trial id, insertion ordered
        self.studies: dict[int, int] = {}  # trial id -> study id
        self.pending: dict[int, list[tuple[str, float, BaseDistribution]]] = {}

    def adopt(self, trial_id: int, study_id: int, trial: FrozenTrial) -> None:
        self.trials[trial_id] = copy.deepcopy(trial)
        self.studies[trial_id] = study_id
        while len(self.studies) > KEEP:
            oldest = next(iter(self.studies))
            self.studies.pop(oldest)
            self.trials.pop(oldest, None)
            self.pending.pop(oldest, None)

    def get(self, trial_id: int) -> FrozenTrial | None:
        trial = self.trials.get(trial_id)
        return None if trial is None else copy.deepcopy(trial)

    def add_param(self, trial_id: int, name: str, internal: float, distribution: BaseDistribution) -> bool:
        """Remember a suggested parameter of an own trial; False if the trial is not ours."""
        trial = self.trials.get(trial_id)
        if trial is None or trial.state.is_finished():
            return False
        trial.params = {**trial.params, name: distribution.to_external_repr(internal)}
        trial.distributions = {**trial.distributions, name: distribution}
        self.pending.setdefault(trial_id, []).append((name, internal, distribution))
        return True

    def take_pending(self, trial_id: int) -> list[tuple[str, float, BaseDistribution]]:
        return self.pending.pop(trial_id, [])

    def wrote(self, trial_id: int, write: OwnWrite) -> None:
        """Record a write that reached the database."""
        trial = self.trials[trial_id]
        trial.user_attrs = {**trial.user_attrs, **write.user}
        trial.system_attrs = {**trial.system_attrs, **write.system}
        if write.step is not None:
            trial.intermediate_values = {**trial.intermediate_values, write.step[0]: write.step[1]}

    def finished(self, trial_id: int, state: TrialState, values: list[float] | None) -> None:
        """The trial's final state reached the database (a finished trial never changes)."""
        trial = self.trials.get(trial_id)
        if trial is not None:
            trial.state = state
            trial.values = values
            trial.datetime_complete = datetime.now(timezone.utc).replace(tzinfo=None)  # as Optuna stores it
        self.pending.pop(trial_id, None)

    def owns(self, trial_id: int) -> bool:
        trial = self.trials.get(trial_id)
        return trial is not None and not trial.state.is_finished()
