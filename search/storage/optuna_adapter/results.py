"""What the result commands read from a study that may hold 100,000 trials: each answer
by a query or two on Optuna's tables, never by reading every trial through ``RDBStorage``
(which builds a ``FrozenTrial`` per trial with its ORM, about a millisecond each).

``every_trial`` does read every trial (the report's CSV keeps them all) but with one
Core query per table, several times faster than ``get_all_trials``; ``in_view`` reads a
chosen cut of the study through ``RDBStorage._get_trials``, the one call that takes
trial ids and "every trial after this one" together (the public ``get_all_trials``
filters by state only).
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable
from functools import lru_cache
from typing import Any

import optuna
import sqlalchemy as sa
from optuna.storages import RDBStorage
from optuna.storages._rdb.models import TrialIntermediateValueModel, TrialValueModel
from optuna.trial import FrozenTrial, TrialState

from search import keys
from search.storage.optuna_adapter.schema import (
    ROW_ID, intermediate, params, system_attrs, trials, user_attrs, values,
)

_FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


@lru_cache(maxsize=256)
def _distribution(stored: str) -> optuna.distributions.BaseDistribution:
    return optuna.distributions.json_to_distribution(stored)


class Results:
    """The reads of one study; ``retrying`` is the storage's retry policy (a read is
    repeated after a lost connection)."""

    def __init__(self, rdb: RDBStorage, retrying: Any, study_id: int) -> None:
        self.rdb = rdb
        self.engine = rdb.engine
        self.retrying = retrying
        self.study_id = study_id

    def _rows(self, query: Any) -> list[Any]:
        def read() -> list[Any]:
            with self.engine.connect() as connection:
                return connection.execute(query).all()
        return self.retrying(read)

    def running(self) -> list[FrozenTrial]:
        """The RUNNING trials, in order (an index of this project's finds them)."""
        return self.retrying(lambda: self.rdb.get_all_trials(self.study_id, deepcopy=False,
                                                             states=(TrialState.RUNNING,)))

    def continued(self) -> int:
        """Trials failed by a lost or stopped worker and continued by a retry."""
        return self._rows(sa.select(sa.func.count()).select_from(trials.join(
            system_attrs, system_attrs.c.trial_id == trials.c.trial_id)).where(
            trials.c.study_id == self.study_id, system_attrs.c.key == keys.CONTINUED_BY))[0][0]

    def failures(self, limit: int) -> list[tuple[Any, int]]:
        """The commonest reasons of failed trials that no retry continued, most common first
        (ties: the earlier first), with their counts; a trial without a reason counts as None."""
        continued = sa.select(system_attrs.c.trial_id).where(
            system_attrs.c.trial_id == trials.c.trial_id, system_attrs.c.key == keys.CONTINUED_BY)
        reason = user_attrs.c.value_json
        query = (sa.select(reason, sa.func.count()).select_from(trials.outerjoin(
            user_attrs, sa.and_(user_attrs.c.trial_id == trials.c.trial_id, user_attrs.c.key == keys.FAIL_REASON)))
            .where(trials.c.study_id == self.study_id, trials.c.state == TrialState.FAIL, ~sa.exists(continued))
            .group_by(reason).order_by(sa.func.count().desc(), sa.func.min(trials.c.trial_id)).limit(limit))
        return [(None if text is None else json.loads(text), count) for text, count in self._rows(query)]

    def best_ids(self, n: int, maximize: bool = True) -> list[int]:
        """The ``n`` best COMPLETE trials' ids, best first (ties: the earlier first)."""
        value = values.c.value.desc() if maximize else values.c.value.asc()
        return [row[0] for row in self._rows(
            sa.select(trials.c.trial_id).join(values, values.c.trial_id == trials.c.trial_id)
            .where(trials.c.study_id == self.study_id, trials.c.state == TrialState.COMPLETE, values.c.objective == 0,
                   values.c.value_type == "FINITE")
            .order_by(value, trials.c.trial_id).limit(n))]

    def fetch(self, ids: Iterable[int]) -> list[FrozenTrial]:
        return [self.retrying(lambda trial_id=trial_id: self.rdb.get_trial(trial_id)) for trial_id in ids]

    def by_numbers(self, numbers: Iterable[int]) -> dict[int, FrozenTrial]:
        """The study's trials with these numbers (those that exist)."""
        numbers = sorted(set(numbers))
        if not numbers:
            return {}
        ids = [row[0] for row in self._rows(sa.select(trials.c.trial_id).where(
            trials.c.study_id == self.study_id, trials.c.number.in_(numbers)))]
        return {trial.number: trial for trial in self.fetch(ids)}

    def size(self) -> tuple[int, int]:
        """How many trials the study has, and its last trial's id (-1: none)."""
        count, last = self._rows(sa.select(sa.func.count(), sa.func.max(trials.c.trial_id)).where(
            trials.c.study_id == self.study_id))[0]
        return count, -1 if last is None else last

    def nth_last_id(self, n: int) -> int:
        """The id of the study's ``n``-th latest trial (its first, if it has fewer)."""
        found = self._rows(sa.select(trials.c.trial_id).where(trials.c.study_id == self.study_id)
                           .order_by(trials.c.trial_id.desc()).offset(n - 1).limit(1))
        if found:
            return found[0][0]
        first = self._rows(sa.select(sa.func.min(trials.c.trial_id)).where(trials.c.study_id == self.study_id))
        return first[0][0] if first[0][0] is not None else 0

    def unfinished_ids(self) -> list[int]:
        return [row[0] for row in self._rows(sa.select(trials.c.trial_id).where(
            trials.c.study_id == self.study_id, trials.c.state.in_((TrialState.RUNNING, TrialState.WAITING))))]

    def in_view(self, included: set[int], after_id: int) -> list[FrozenTrial]:
        """The trials in ``included`` and every trial whose id is above ``after_id``, in order."""
        return self.retrying(lambda: self.rdb._get_trials(self.study_id, None, set(included), after_id))

    def every_trial(self) -> list[FrozenTrial]:
        """Every trial of the study, in order, as ``get_all_trials`` gives them."""
        def read() -> list[FrozenTrial]:
            ours = sa.select(trials.c.trial_id).where(trials.c.study_id == self.study_id).scalar_subquery()
            with self.engine.connect() as connection:
                rows = connection.execute(sa.select(trials).where(trials.c.study_id == self.study_id)
                                          .order_by(trials.c.trial_id)).all()
                def per_trial(table: sa.Table, *columns: sa.Column) -> dict[int, list[Any]]:
                    # In the order Optuna's ORM reads them back: attributes by key (its
                    # index), the rest as written.
                    order = table.c.key if "key" in table.c else table.c[ROW_ID[table.name]]
                    found: dict[int, list[Any]] = defaultdict(list)
                    for row in connection.execute(sa.select(table.c.trial_id, *columns)
                                                  .where(table.c.trial_id.in_(ours)).order_by(order)):
                        found[row[0]].append(row[1:])
                    return found
                trial_values = per_trial(values, values.c.objective, values.c.value, values.c.value_type)
                trial_params = per_trial(params, params.c.param_name, params.c.param_value, params.c.distribution_json)
                steps = per_trial(intermediate, intermediate.c.step, intermediate.c.intermediate_value,
                                  intermediate.c.intermediate_value_type)
                users = per_trial(user_attrs, user_attrs.c.key, user_attrs.c.value_json)
                systems = per_trial(system_attrs, system_attrs.c.key, system_attrs.c.value_json)
            made = []
            for row in rows:
                trial_id = row.trial_id
                objectives = sorted(trial_values.get(trial_id, ()))
                result = [TrialValueModel.stored_repr_to_value(value, TrialValueModel.TrialValueType[kind])
                          for _, value, kind in objectives] or None
                distributions = {name: _distribution(stored) for name, _, stored in trial_params.get(trial_id, ())}
                made.append(FrozenTrial(
                    number=row.number, state=row.state, value=None, values=result,
                    datetime_start=row.datetime_start, datetime_complete=row.datetime_complete,
                    params={name: distributions[name].to_external_repr(value)
                            for name, value, _ in trial_params.get(trial_id, ())},
                    distributions=distributions,
                    user_attrs={key: json.loads(value) for key, value in users.get(trial_id, ())},
                    system_attrs={key: json.loads(value) for key, value in systems.get(trial_id, ())},
                    intermediate_values={step: TrialIntermediateValueModel.stored_repr_to_intermediate_value(
                        value, TrialIntermediateValueModel.TrialIntermediateValueType[kind])
                        for step, value, kind in steps.get(trial_id, ())},
                    trial_id=trial_id))
            return made
        return self.retrying(read)
