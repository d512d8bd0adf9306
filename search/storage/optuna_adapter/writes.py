"""A worker's writes to its running trial, each one transaction. See the package docstring."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import optuna
import sqlalchemy as sa
from optuna.distributions import BaseDistribution
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import TrialState

from search.storage.optuna_adapter.schema import (
    _insert, _now, _set_attrs, intermediate, params, system_attrs, to_stored, trials, user_attrs, values,
)


@dataclass
class OwnWrite:
    """What one write to a running trial of this worker sets (see ``write_own``)."""

    params: list[tuple[str, float, BaseDistribution]] = field(default_factory=list)
    known: dict[str, BaseDistribution] = field(default_factory=dict)  # the study's distributions
    user: dict[str, Any] = field(default_factory=dict)
    system: dict[str, Any] = field(default_factory=dict)
    step: tuple[int, float] | None = None


def _running(connection: sa.Connection, trial_id_: int, lock: bool = False) -> Any:
    """The trial's row; a finished trial is refused, as Optuna refuses it."""
    query = sa.select(trials.c.state, trials.c.study_id).where(trials.c.trial_id == trial_id_)
    row = connection.execute(query.with_for_update() if lock else query).first()
    if row is None:
        raise KeyError(f"no trial with id {trial_id_}")
    if row.state.is_finished():
        raise UpdateFinishedTrialError(f"trial id {trial_id_} is already {row.state.name}")
    return row


def finish_own(engine: sa.Engine, trial_id_: int, state: TrialState, result: list[float] | None) -> None:
    """A worker's running trial ends: what ``RDBStorage.set_trial_state_values`` writes (its
    values, state and end), in one transaction, but the end by the database's clock, which
    also timed its start (``schema._now``). Safe to repeat after a lost reply: a finished
    trial is refused, and the caller reads back whether it finished."""
    with engine.begin() as connection:
        _running(connection, trial_id_, lock=True)
        for objective, value in enumerate(result or []):
            kept, kind = to_stored(value)
            upsert = _insert(connection)(values).values(trial_id=trial_id_, objective=objective, value=kept,
                                                        value_type=kind)
            connection.execute(upsert.on_conflict_do_update(
                index_elements=["trial_id", "objective"],
                set_={"value": upsert.excluded.value, "value_type": upsert.excluded.value_type}))
        connection.execute(trials.update().where(trials.c.trial_id == trial_id_).values(
            state=state, datetime_complete=_now(connection) if state.is_finished() else None))


def write_own(engine: sa.Engine, trial_id_: int, write: OwnWrite) -> dict[str, BaseDistribution]:
    """One transaction for what ``RDBStorage`` writes in one each, every one with lookups:
    parameters (whose distribution check against the study's earlier trials reads a table
    that grows with the study), attributes, an intermediate value. As Optuna does: a
    finished trial is refused, and each distribution must be compatible with the one the
    study's earlier trials had (``known``, else the first stored row of that name). Safe to
    repeat after a lost reply (upserts). Returns the distributions now known."""
    with engine.begin() as connection:
        row = _running(connection, trial_id_)
        known = dict(write.known)
        for name, _, distribution in write.params:
            if name not in known:
                stored = connection.execute(sa.select(params.c.distribution_json).join(
                    trials, trials.c.trial_id == params.c.trial_id).where(
                    trials.c.study_id == row.study_id, params.c.param_name == name).limit(1)).scalar()
                if stored is not None:
                    known[name] = optuna.distributions.json_to_distribution(stored)
            if name in known:
                optuna.distributions.check_distribution_compatibility(known[name], distribution)
            known.setdefault(name, distribution)
        if write.params:
            insert = _insert(connection)(params).on_conflict_do_nothing(index_elements=["trial_id", "param_name"])
            connection.execute(insert, [
                {"trial_id": trial_id_, "param_name": name, "param_value": value,
                 "distribution_json": optuna.distributions.distribution_to_json(distribution)}
                for name, value, distribution in write.params])
        _set_attrs(connection, user_attrs, trial_id_, write.user)
        _set_attrs(connection, system_attrs, trial_id_, write.system)
        if write.step is not None:
            value, kind = to_stored(write.step[1])
            upsert = _insert(connection)(intermediate).values(
                trial_id=trial_id_, step=write.step[0], intermediate_value=value, intermediate_value_type=kind)
            connection.execute(upsert.on_conflict_do_update(
                index_elements=["trial_id", "step"], set_={"intermediate_value": upsert.excluded.intermediate_value,
                                                           "intermediate_value_type": upsert.excluded.intermediate_value_type}))
    return known
