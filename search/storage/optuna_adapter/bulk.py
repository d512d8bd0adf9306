"""Many whole trials written at once, for the tests and benches that need a big study.
``Study.add_trials`` takes a transaction and a dozen statements per trial: 100,000 trials
would take an hour. Here each table gets its rows in a few batched statements, as
``RDBStorage`` would have stored them (the same stored forms of values and attributes)."""

from __future__ import annotations

import json
from collections.abc import Iterable

import optuna
import sqlalchemy as sa
from optuna.trial import FrozenTrial

from search.storage.optuna_adapter.schema import (
    intermediate, params, system_attrs, to_stored, trials, user_attrs, values,
)

BATCH = 5000  # trials per transaction


def add_trials(engine: sa.Engine, study_id: int, made: Iterable[FrozenTrial]) -> None:
    """Store ``made`` (numbers as given, states and times as they are) in the study."""
    made = list(made)
    for start in range(0, len(made), BATCH):
        batch = made[start:start + BATCH]
        with engine.begin() as connection:
            ids = connection.execute(trials.insert().returning(trials.c.trial_id, sort_by_parameter_order=True), [
                {"number": trial.number, "study_id": study_id, "state": trial.state,
                 "datetime_start": trial.datetime_start, "datetime_complete": trial.datetime_complete}
                for trial in batch]).scalars().all()
            rows: dict[sa.Table, list[dict]] = {values: [], params: [], intermediate: [], user_attrs: [],
                                                system_attrs: []}
            for trial_id, trial in zip(ids, batch):
                for objective, value in enumerate(trial.values or []):
                    kept, kind = to_stored(value)
                    rows[values].append({"trial_id": trial_id, "objective": objective, "value": kept,
                                         "value_type": kind})
                for name, value in trial.params.items():
                    distribution = trial.distributions[name]
                    rows[params].append({"trial_id": trial_id, "param_name": name,
                                         "param_value": distribution.to_internal_repr(value),
                                         "distribution_json": optuna.distributions.distribution_to_json(distribution)})
                for step, value in trial.intermediate_values.items():
                    kept, kind = to_stored(value)
                    rows[intermediate].append({"trial_id": trial_id, "step": step, "intermediate_value": kept,
                                               "intermediate_value_type": kind})
                for table, attrs in ((user_attrs, trial.user_attrs), (system_attrs, trial.system_attrs)):
                    rows[table].extend({"trial_id": trial_id, "key": key, "value_json": json.dumps(value)}
                                       for key, value in attrs.items())
            for table, listed in rows.items():
                if listed:
                    connection.execute(table.insert(), listed)
