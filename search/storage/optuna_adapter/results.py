"""What the result commands read from a study that may hold 100,000 trials: each answer
by a query or two on Optuna's tables, never by reading every trial through ``RDBStorage``
(which builds a ``FrozenTrial`` per trial with its ORM, about a millisecond each).

Trials are built by ``read_trials``: one Core query per table for any set of trials
(a few, a cut of the study, or all of it: the report's CSV), several times faster than
``get_all_trials`` and equal to what it gives, in the same order.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from search import keys
from search.storage.optuna_adapter.records import (
    TrialRecord, attrs_of, continued_counts, objective_values, steps_of, trial_rows,
)
from search.storage.optuna_adapter.schema import system_attrs, trial_id, trials, user_attrs, values

if TYPE_CHECKING:
    import optuna
    from optuna.trial import FrozenTrial


@lru_cache(maxsize=256)
def _distribution(stored: str) -> optuna.distributions.BaseDistribution:
    from optuna.distributions import json_to_distribution

    return json_to_distribution(stored)


def read_trials(connection: sa.Connection, where: Any) -> list[FrozenTrial]:
    """The trials that ``where`` (a condition on the trials table) selects, in order, as
    ``RDBStorage.get_trial`` gives them."""
    from optuna.trial import FrozenTrial

    rows = trial_rows(connection, where)
    made = []
    for row in rows.trials:
        row_id = row.trial_id
        distributions = {name: _distribution(stored) for name, _, stored in rows.params.get(row_id, ())}
        made.append(FrozenTrial(
            number=row.number, state=row.state, value=None, values=objective_values(rows, row_id),
            datetime_start=row.datetime_start, datetime_complete=row.datetime_complete,
            params={name: distributions[name].to_external_repr(value)
                    for name, value, _ in rows.params.get(row_id, ())},
            distributions=distributions, user_attrs=attrs_of(rows.users, row_id),
            system_attrs=attrs_of(rows.systems, row_id), intermediate_values=steps_of(rows, row_id),
            trial_id=row_id))
    return made


class Results:
    """The reads of one study; ``retrying`` is the storage's retry policy (a read is
    repeated after a lost connection)."""

    def __init__(self, engine: sa.Engine, retrying: Any, study_id: int,
                 build: Callable[[sa.Connection, Any], list[Any]] = read_trials) -> None:
        self.engine = engine
        self.retrying = retrying
        self.study_id = study_id
        self.build = build  # read_trials (FrozenTrial), or records.read_records (no Optuna)

    def _rows(self, query: Any) -> list[Any]:
        def read() -> list[Any]:
            with self.engine.connect() as connection:
                return connection.execute(query).all()
        return self.retrying(read)

    def _trials(self, where: Any) -> list[Any]:
        def read() -> list[Any]:
            with self.engine.connect() as connection:
                return self.build(connection, where)
        return self.retrying(read)

    def running(self) -> list[FrozenTrial | TrialRecord]:
        """The RUNNING trials, in order (an index of this project's finds them)."""
        return self._trials(sa.and_(trials.c.study_id == self.study_id, trials.c.state == "RUNNING"))

    def continued(self) -> int:
        """Trials failed by a lost or stopped worker and continued by a retry: the study's
        counter of them (``Slots`` keeps it), else counted."""
        return self._rows(sa.select(sa.func.coalesce(*continued_counts(self.study_id))))[0][0]

    def failures(self, limit: int) -> list[tuple[Any, int]]:
        """The commonest reasons of failed trials that no retry continued, most common first
        (ties: the earlier first), with their counts; a trial without a reason counts as None."""
        continued = sa.select(system_attrs.c.trial_id).where(
            system_attrs.c.trial_id == trials.c.trial_id, system_attrs.c.key == keys.CONTINUED_BY)
        reason = user_attrs.c.value_json
        query = (sa.select(reason, sa.func.count()).select_from(trials.outerjoin(
            user_attrs, sa.and_(user_attrs.c.trial_id == trials.c.trial_id, user_attrs.c.key == keys.FAIL_REASON)))
            .where(trials.c.study_id == self.study_id, trials.c.state == "FAIL", ~sa.exists(continued))
            .group_by(reason).order_by(sa.func.count().desc(), sa.func.min(trials.c.trial_id)).limit(limit))
        return [(None if text is None else json.loads(text), count) for text, count in self._rows(query)]

    def best_ids(self, n: int, maximize: bool = True) -> list[int]:
        """The ``n`` best COMPLETE trials' ids, best first (ties: the earlier first), ranked
        as Optuna's ``best_trial`` ranks them (an infinite value in the study's direction
        first). Both reads walk an index of this project's (``schema.INDEXES``)."""
        ours = sa.select(trials.c.trial_id).join(values, values.c.trial_id == trials.c.trial_id).where(
            trials.c.study_id == self.study_id, trials.c.state == "COMPLETE", values.c.objective == 0)
        infinite = [row[0] for row in self._rows(ours.where(
            values.c.value.is_(None), values.c.value_type == ("INF_POS" if maximize else "INF_NEG"))
            .order_by(trials.c.trial_id).limit(n))]
        value = values.c.value.desc() if maximize else values.c.value.asc()
        finite = [] if len(infinite) >= n else [row[0] for row in self._rows(ours.where(
            values.c.value_type == "FINITE").order_by(value, trials.c.trial_id).limit(n - len(infinite)))]
        return infinite + finite

    def best(self, maximize: bool) -> FrozenTrial | TrialRecord | None:
        """The best COMPLETE trial (``best_ids``' first), None while there is none."""
        found = self.fetch(self.best_ids(1, maximize))
        return found[0] if found else None

    def fetch(self, ids: Iterable[int]) -> list[FrozenTrial | TrialRecord]:
        """These trials, in the order given."""
        ids = list(ids)
        found = {trial_id(trial): trial for trial in self._trials(trials.c.trial_id.in_(ids))} if ids else {}
        return [found[one] for one in ids if one in found]

    def by_numbers(self, numbers: Iterable[int]) -> dict[int, FrozenTrial | TrialRecord]:
        """The study's trials with these numbers (those that exist)."""
        numbers = sorted(set(numbers))
        if not numbers:
            return {}
        return {trial.number: trial for trial in self._trials(
            sa.and_(trials.c.study_id == self.study_id, trials.c.number.in_(numbers)))}

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
            trials.c.study_id == self.study_id, trials.c.state.in_(("RUNNING", "WAITING"))))]

    def in_view(self, included: set[int], after_id: int) -> list[FrozenTrial | TrialRecord]:
        """The trials in ``included`` and every trial whose id is above ``after_id``, in order."""
        return self._trials(sa.and_(trials.c.study_id == self.study_id,
                                    sa.or_(trials.c.trial_id.in_(sorted(included)), trials.c.trial_id > after_id)))

    def every_trial(self) -> list[FrozenTrial | TrialRecord]:
        """Every trial of the study, in order, as ``get_all_trials`` gives them."""
        return self._trials(trials.c.study_id == self.study_id)
