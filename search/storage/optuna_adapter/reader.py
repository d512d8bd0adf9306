"""``Reader``: a read-only Optuna storage on Optuna's tables through SQLAlchemy Core, for
the commands that only read (status, best, report). It answers what ``optuna.load_study``
and a study's read properties ask, with the same answers as ``RDBStorage``, but needs
neither Optuna's ORM nor alembic: ``RDBStorage`` imports both and reads the schema's
revision on every open, a fifth of a one-second ``search status``. Writes are refused.
"""

from __future__ import annotations

import json
from collections.abc import Container
from typing import Any, NoReturn

import sqlalchemy as sa
from optuna.storages import BaseStorage
from optuna.study import StudyDirection
from optuna.study._frozen import FrozenStudy  # get_all_studies' type; optuna.study does not export it
from optuna.trial import FrozenTrial, TrialState

from search.storage.optuna_adapter.results import Results, read_trials
from search.storage.optuna_adapter.schema import directions, studies, study_system_attrs, study_user_attrs, trials


class Reader(BaseStorage):
    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine

    def _rows(self, query: Any) -> list[Any]:
        with self.engine.connect() as connection:
            return connection.execute(query).all()

    def _refuse(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise RuntimeError("this storage was opened to read only")

    create_new_study = delete_study = set_study_user_attr = set_study_system_attr = _refuse
    create_new_trial = set_trial_param = set_trial_state_values = set_trial_intermediate_value = _refuse
    set_trial_user_attr = set_trial_system_attr = _refuse

    # --- studies ---------------------------------------------------------------
    def get_study_id_from_name(self, study_name: str) -> int:
        found = self._rows(sa.select(studies.c.study_id).where(studies.c.study_name == study_name))
        if not found:
            raise KeyError(f"No such study {study_name}.")
        return found[0][0]

    def get_study_name_from_id(self, study_id: int) -> str:
        found = self._rows(sa.select(studies.c.study_name).where(studies.c.study_id == study_id))
        if not found:
            raise KeyError(f"No study with study_id {study_id} exists.")
        return found[0][0]

    def get_study_directions(self, study_id: int) -> list[StudyDirection]:
        found = self._rows(sa.select(directions.c.direction).where(directions.c.study_id == study_id)
                           .order_by(directions.c.objective))
        if not found:
            raise KeyError(f"No study with study_id {study_id} exists.")
        return [StudyDirection[direction] for direction, in found]

    def _attrs(self, table: sa.Table, study_id: int) -> dict[str, Any]:
        return {key: json.loads(value) for key, value in self._rows(
            sa.select(table.c.key, table.c.value_json).where(table.c.study_id == study_id).order_by(table.c.key))}

    def get_study_user_attrs(self, study_id: int) -> dict[str, Any]:
        return self._attrs(study_user_attrs, study_id)

    def get_study_system_attrs(self, study_id: int) -> dict[str, Any]:
        return self._attrs(study_system_attrs, study_id)

    def get_all_studies(self) -> list[FrozenStudy]:
        made = []
        for study_id, name in self._rows(sa.select(studies.c.study_id, studies.c.study_name)
                                         .order_by(studies.c.study_id)):
            ways = self.get_study_directions(study_id)
            made.append(FrozenStudy(study_name=name, direction=None, directions=ways,
                                    user_attrs=self.get_study_user_attrs(study_id),
                                    system_attrs=self.get_study_system_attrs(study_id), study_id=study_id))
        return made

    # --- trials ----------------------------------------------------------------
    def _trials(self, where: Any) -> list[FrozenTrial]:
        with self.engine.connect() as connection:
            return read_trials(connection, where)

    def get_trial(self, trial_id: int) -> FrozenTrial:
        found = self._trials(trials.c.trial_id == trial_id)
        if not found:
            raise KeyError(f"No trial with trial_id {trial_id} exists.")
        return found[0]

    def get_all_trials(self, study_id: int, deepcopy: bool = True,
                       states: Container[TrialState] | None = None) -> list[FrozenTrial]:
        where = trials.c.study_id == study_id
        if states is not None:
            where = sa.and_(where, trials.c.state.in_([state for state in TrialState if state in states]))
        return self._trials(where)  # built afresh: a copy already

    def get_trial_id_from_study_id_trial_number(self, study_id: int, trial_number: int) -> int:
        found = self._rows(sa.select(trials.c.trial_id).where(trials.c.study_id == study_id,
                                                              trials.c.number == trial_number))
        if not found:
            raise KeyError(f"No trial with trial number {trial_number} exists in study with study_id {study_id}.")
        return found[0][0]

    def get_best_trial(self, study_id: int) -> FrozenTrial:
        ways = self.get_study_directions(study_id)
        if len(ways) > 1:
            raise RuntimeError("Best trial can be obtained only for single-objective optimization.")
        best = Results(self.engine, lambda read: read(), study_id).best_ids(1, ways[0] == StudyDirection.MAXIMIZE)
        if not best:
            raise ValueError("No trials are completed yet.")
        return self.get_trial(best[0])

    def get_n_trials(self, study_id: int, state: tuple[TrialState, ...] | TrialState | None = None) -> int:
        where = trials.c.study_id == study_id
        if state is not None:
            where = sa.and_(where, trials.c.state.in_([state] if isinstance(state, TrialState) else list(state)))
        return self._rows(sa.select(sa.func.count()).select_from(trials).where(where))[0][0]
