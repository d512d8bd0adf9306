"""A study's trials and progress as plain records, read from Optuna's tables without
importing Optuna: ``status`` and ``best`` print from these. Optuna's import (numpy, tqdm,
its samplers) is a third of a one-second command; the report and the dashboard, which
hand trials to Optuna, build ``FrozenTrial``s from the same rows (``results.read_trials``).

A parameter's stored value is Optuna's internal float; its distribution (stored as JSON)
gives the value the trial was given: an int for an int distribution, the chosen item for
a categorical one, the float itself otherwise (``BaseDistribution.to_external_repr``).
Distributions of other kinds are decoded by Optuna itself.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import lru_cache
from typing import Any

import sqlalchemy as sa

from search import keys
from search.storage.optuna_adapter.schema import (
    ROW_ID, directions, from_stored, intermediate, params, studies, study_system_attrs, study_user_attrs, system_attrs,
    trials, user_attrs, values,
)

_FLOATS = {"FloatDistribution", "UniformDistribution", "LogUniformDistribution", "DiscreteUniformDistribution"}
_INTS = {"IntDistribution", "IntUniformDistribution", "IntLogUniformDistribution"}


@lru_cache(maxsize=256)
def external(stored: str) -> Callable[[float], Any]:
    """The function from a parameter's stored float to its value, for the distribution
    stored as ``stored``."""
    spec = json.loads(stored)
    name = spec.get("name")
    if name in _FLOATS:
        return lambda value: value
    if name in _INTS:
        return int
    if name == "CategoricalDistribution":
        choices = tuple(spec["attributes"]["choices"])
        return lambda value: choices[int(value)]
    from optuna.distributions import json_to_distribution  # an older or abbreviated form

    return json_to_distribution(stored).to_external_repr


@dataclass(frozen=True)
class TrialRecord:
    """What ``status`` and ``best`` read of a trial: ``FrozenTrial``'s fields of the same
    names, less its state and distributions."""

    trial_id: int
    number: int
    values: list[float] | None
    datetime_start: datetime | None
    datetime_complete: datetime | None
    params: dict[str, Any]
    intermediate_values: dict[int, float]
    user_attrs: dict[str, Any]
    system_attrs: dict[str, Any]

    @property
    def _trial_id(self) -> int:  # FrozenTrial's name for it: schema.trial_id reads either
        return self.trial_id

    @property
    def value(self) -> float | None:
        return self.values[0] if self.values else None

    @property
    def duration(self) -> timedelta | None:
        if self.datetime_start is None or self.datetime_complete is None:
            return None
        return self.datetime_complete - self.datetime_start


@dataclass(frozen=True)
class StudyRecord:
    """What ``status`` and ``best`` read of a study: ``optuna.Study``'s fields of the same
    names, and whether its (single) objective is maximized."""

    study_name: str
    study_id: int
    user_attrs: dict[str, Any]
    maximize: bool


def study_names(connection: sa.Connection) -> list[str]:
    """The storage's studies, in the order they were created (``get_all_study_names``'s)."""
    return [name for name, in connection.execute(sa.select(studies.c.study_name).order_by(studies.c.study_id))]


def read_study(connection: sa.Connection, name: str) -> StudyRecord | None:
    found = connection.execute(sa.select(studies.c.study_id).where(studies.c.study_name == name)).scalar()
    if found is None:
        return None
    way = connection.execute(sa.select(directions.c.direction).where(directions.c.study_id == found)
                             .order_by(directions.c.objective)).scalars().first()
    attrs = {key: json.loads(value) for key, value in connection.execute(
        sa.select(study_user_attrs.c.key, study_user_attrs.c.value_json).where(study_user_attrs.c.study_id == found))}
    return StudyRecord(study_name=name, study_id=found, user_attrs=dict(sorted(attrs.items())),
                       maximize=way == "MAXIMIZE")


@dataclass(frozen=True)
class TrialRows:
    """The rows of some trials (``trials`` in trial id order) and of each per-trial table,
    by trial id, in the order Optuna's ORM reads them back."""

    trials: list[Any]
    values: dict[int, list[Any]]
    params: dict[int, list[Any]]
    steps: dict[int, list[Any]]
    users: dict[int, list[Any]]
    systems: dict[int, list[Any]]


def trial_rows(connection: sa.Connection, where: Any, state: bool = True) -> TrialRows:
    """One query per table for the trials ``where`` (a condition on the trials table)
    selects; ``state``: read the state column too (it loads Optuna's ``TrialState``)."""
    columns = [column for column in trials.c if state or column.name != "state"]
    rows = connection.execute(sa.select(*columns).where(where).order_by(trials.c.trial_id)).all()
    chosen = sa.select(trials.c.trial_id).where(where)

    def per_trial(table: sa.Table, *columns: sa.Column) -> dict[int, list[Any]]:
        # Attributes by key (the ORM reads them through that index), the rest as written.
        order = table.c.key if "key" in table.c else table.c[ROW_ID[table.name]]
        found: dict[int, list[Any]] = defaultdict(list)
        if rows:
            for row in connection.execute(sa.select(table.c.trial_id, *columns)
                                          .where(table.c.trial_id.in_(chosen)).order_by(order)):
                found[row[0]].append(row[1:])
        return found

    return TrialRows(
        trials=rows,
        values=per_trial(values, values.c.objective, values.c.value, values.c.value_type),
        params=per_trial(params, params.c.param_name, params.c.param_value, params.c.distribution_json),
        steps=per_trial(intermediate, intermediate.c.step, intermediate.c.intermediate_value,
                        intermediate.c.intermediate_value_type),
        users=per_trial(user_attrs, user_attrs.c.key, user_attrs.c.value_json),
        systems=per_trial(system_attrs, system_attrs.c.key, system_attrs.c.value_json))


def objective_values(rows: TrialRows, trial: int) -> list[float] | None:
    return [from_stored(value, kind) for _, value, kind in sorted(rows.values.get(trial, ()))] or None


def steps_of(rows: TrialRows, trial: int) -> dict[int, float]:
    return {step: from_stored(value, kind) for step, value, kind in rows.steps.get(trial, ())}


def attrs_of(found: dict[int, list[Any]], trial: int) -> dict[str, Any]:
    return {key: json.loads(value) for key, value in found.get(trial, ())}


def read_records(connection: sa.Connection, where: Any) -> list[TrialRecord]:
    """The trials ``where`` selects, in order, as records."""
    rows = trial_rows(connection, where, state=False)
    return [TrialRecord(
        trial_id=row.trial_id, number=row.number, values=objective_values(rows, row.trial_id),
        datetime_start=row.datetime_start, datetime_complete=row.datetime_complete,
        params={name: external(stored)(value) for name, value, stored in rows.params.get(row.trial_id, ())},
        intermediate_values=steps_of(rows, row.trial_id), user_attrs=attrs_of(rows.users, row.trial_id),
        system_attrs=attrs_of(rows.systems, row.trial_id)) for row in rows.trials]


@dataclass(frozen=True)
class Progress:
    """A study's slots: the budget and the current trial of every slot, by state."""

    budget: int
    complete: int
    pruned: int
    failed: int
    running: int
    waiting: int

    @property
    def finished(self) -> int:
        return self.complete + self.pruned + self.failed

    @property
    def done(self) -> bool:
        return self.running == self.waiting == 0 and self.finished >= self.budget


def continued_counts(study_id: int) -> tuple[Any, Any]:
    """How many trials of the study a successor continues (all of them FAIL): the counter
    ``Slots`` keeps with the study (NULL for a study that has none yet) and the count, as
    scalar subqueries. ``coalesce`` of the two reads the count only where it must."""
    counter = sa.select(sa.cast(study_system_attrs.c.value_json, sa.Integer)).where(
        study_system_attrs.c.study_id == study_id, study_system_attrs.c.key == keys.CONTINUED_COUNT).scalar_subquery()
    counted = sa.select(sa.func.count()).select_from(system_attrs.join(
        trials, trials.c.trial_id == system_attrs.c.trial_id)).where(
        trials.c.study_id == study_id, system_attrs.c.key == keys.CONTINUED_BY).scalar_subquery()
    return counter, counted


def read_progress(connection: sa.Connection, study_id: int) -> Progress:
    """One statement (one snapshot): each count walks an index of this project's, and
    COMPLETE is the rest, so the cost does not grow with the finished trials (a GROUP BY
    state read the whole study: 40-60 ms at 100,000 trials)."""
    def count(state: str) -> Any:
        return sa.select(sa.func.count()).where(trials.c.study_id == study_id, trials.c.state == state).scalar_subquery()

    highest = sa.select(sa.func.max(trials.c.number)).where(trials.c.study_id == study_id).scalar_subquery()
    budget = sa.select(study_user_attrs.c.value_json).where(
        study_user_attrs.c.study_id == study_id, study_user_attrs.c.key == keys.BUDGET).scalar_subquery()
    top, failed, pruned, running, waiting, continued, stored = connection.execute(sa.select(
        highest, count("FAIL"), count("PRUNED"), count("RUNNING"), count("WAITING"),
        sa.func.coalesce(*continued_counts(study_id)), budget)).one()
    slots = (-1 if top is None else top) + 1 - continued  # numbers are dense: see Slots._count
    return Progress(budget=slots if stored is None else int(json.loads(stored)),
                    complete=slots - (failed - continued) - pruned - running - waiting,
                    pruned=pruned, failed=failed - continued, running=running, waiting=waiting)
