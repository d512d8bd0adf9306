"""The Optuna storage that survives database outages.

``ResilientStorage`` is an ``optuna.storages.BaseStorage`` over Optuna's ``RDBStorage``
(with Optuna's trial cache) whose every method has a stated retry policy:

* reads, and writes that are upserts (params, intermediate values, attrs): retried on
  connection loss for up to the reconnect patience; repeating them changes nothing;
* finishing a trial (``set_trial_state_values``): after a lost reply the trial's state
  is read back, and the write is repeated only if it did not happen; a worker's own
  trial ends by the database's clock (``optuna_adapter.finish_own``);
* creating a study: after a lost reply its name is looked up first;
* creating or deleting trials and studies otherwise: never repeated (this project's own
  trial creation goes through ``optuna_adapter.Slots``, which is safe to repeat).

Database errors other than connection loss become one ``StorageError`` line.

A storage opened for writing before Optuna's tables exist (a new SQLite file, an empty
database) holds no study until ``prepare`` creates them: a worker checks everything
(the study, the data, the artifact store) on the storage it will use, and only then
writes. ``search.storage.opening`` opens it.
"""

from __future__ import annotations

from collections.abc import Callable, Container, Sequence
from typing import Any, TypeVar

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages import BaseStorage, RDBStorage
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from search.errors import DatabaseLost, UserError
from search.storage import optuna_adapter
from search.storage.connection import limit_transactions, transaction_engine
from search.storage.failures import RetryPolicy, one_line_error
from search.storage.locks import schema_lock
from search.storage.own_trials import OwnTrials
from search.storage.tables import create_tables, open_tables
from search.storage.url import describe

T = TypeVar("T")


class ResilientStorage(BaseStorage):
    def __init__(self, policy: RetryPolicy, engine_kwargs: dict[str, Any], writable: bool,
                 rdb: RDBStorage | None = None) -> None:
        self.policy = policy
        self.engine_kwargs = engine_kwargs
        self.writable = writable
        self.own = OwnTrials()  # the trials this worker runs, served from memory
        self.distributions: dict[int, dict[str, optuna.distributions.BaseDistribution]] = {}  # by study
        self.rdb: RDBStorage | optuna_adapter.Reader | None = None
        self.prepared = False
        if rdb is not None:
            self.attach(rdb)

    def attach(self, rdb: RDBStorage | optuna_adapter.Reader) -> None:
        """Use Optuna's storage ``rdb`` (once its tables exist), or for reading only the
        adapter's ``Reader``."""
        limit_transactions(rdb.engine, read_only=not self.writable)
        self.rdb = rdb
        self.cache = optuna_adapter.cached(rdb)
        self.transactions = transaction_engine(rdb.engine, self.policy.url) if self.writable else rdb.engine

    @property
    def ready(self) -> bool:
        """Whether Optuna's tables exist (a storage without them holds no study)."""
        return self.rdb is not None

    def prepare(self) -> None:
        """Create Optuna's tables and this project's indexes where they are missing,
        race-free (workers started at the same instant would race to create them). Once
        per process: later calls do nothing."""
        if self.prepared:
            return
        url = self.policy.url
        try:
            if self.rdb is None:
                with schema_lock(url):
                    create_tables(url, self.engine_kwargs)
                self.attach(open_tables(url, self.engine_kwargs))
            elif not optuna_adapter.has_indexes(self.rdb.engine):  # tables made by Optuna or an older version
                with schema_lock(url):
                    optuna_adapter.create_indexes(self.rdb.engine)
            optuna_adapter.schema_state(self.transactions, describe(url))
        except Exception as error:
            raise one_line_error(url, error, lambda problem: UserError(f"cannot reach {problem}"),
                                 "check that the server runs") from error
        self.prepared = True

    def slots(self, study: optuna.Study) -> optuna_adapter.Slots:
        return optuna_adapter.Slots(self.transactions, self.policy.retrying, study)

    def results(self, study: optuna.Study | int) -> optuna_adapter.Results:
        """What the result commands read of ``study`` (or the study of that id), without
        reading all of it."""
        study_id = study if isinstance(study, int) else optuna_adapter.study_id(study)
        return optuna_adapter.Results(self.rdb.engine, self.policy.retrying, study_id)

    def close(self) -> None:
        if self.rdb is None:
            return
        if self.transactions is not self.rdb.engine:
            self.transactions.dispose()
        self.rdb.engine.dispose()

    # --- policies -------------------------------------------------------------
    def _retry(self, call: Callable[[], T], resolve: Callable[[], Any] | None = None) -> T:
        return self.policy.retrying(call, resolve)

    def _once(self, call: Callable[[], T]) -> T:
        try:
            return call()
        except Exception as error:
            raise one_line_error(self.policy.url, error, lambda problem: DatabaseLost(f"lost {problem}"),
                                 "the write cannot be repeated safely: check what it did, then run again") from error

    # --- studies ----------------------------------------------------------------
    def create_new_study(self, directions: Sequence[StudyDirection], study_name: str | None = None) -> int:
        if study_name is None:
            return self._once(lambda: self.cache.create_new_study(directions, study_name))

        def resolve() -> int | None:
            try:
                return self.rdb.get_study_id_from_name(study_name)
            except KeyError:
                return None
        return self._retry(lambda: self.cache.create_new_study(directions, study_name), resolve)

    def delete_study(self, study_id: int) -> None:
        self._once(lambda: self.cache.delete_study(study_id))

    def set_study_user_attr(self, study_id: int, key: str, value: Any) -> None:
        self._retry(lambda: self.cache.set_study_user_attr(study_id, key, value))

    def set_study_system_attr(self, study_id: int, key: str, value: Any) -> None:
        self._retry(lambda: self.cache.set_study_system_attr(study_id, key, value))

    def get_study_id_from_name(self, study_name: str) -> int:
        if self.rdb is None:
            raise KeyError(f"no study named {study_name!r}")  # no tables, no studies
        return self._retry(lambda: self.cache.get_study_id_from_name(study_name))

    def get_study_name_from_id(self, study_id: int) -> str:
        return self._retry(lambda: self.cache.get_study_name_from_id(study_id))

    def get_study_directions(self, study_id: int) -> list[StudyDirection]:
        return self._retry(lambda: self.cache.get_study_directions(study_id))

    def get_study_user_attrs(self, study_id: int) -> dict[str, Any]:
        return self._retry(lambda: self.cache.get_study_user_attrs(study_id))

    def get_study_system_attrs(self, study_id: int) -> dict[str, Any]:
        return self._retry(lambda: self.cache.get_study_system_attrs(study_id))

    def get_all_studies(self) -> list[optuna.study.FrozenStudy]:
        return [] if self.rdb is None else self._retry(self.cache.get_all_studies)

    # --- trials -----------------------------------------------------------------
    def create_new_trial(self, study_id: int, template_trial: FrozenTrial | None = None) -> int:
        return self._once(lambda: self.cache.create_new_trial(study_id, template_trial))

    def set_trial_param(self, trial_id: int, param_name: str, param_value_internal: float,
                        distribution: optuna.distributions.BaseDistribution) -> None:
        # An own trial's parameters are written with its next write (``_flush``). Otherwise
        # a repeated insert hits the (trial, param) unique key, which Optuna ignores.
        if not self.own.add_param(trial_id, param_name, param_value_internal, distribution):
            self._retry(lambda: self.cache.set_trial_param(trial_id, param_name, param_value_internal, distribution))

    def _write_own(self, trial_id: int, write: optuna_adapter.OwnWrite) -> None:
        """An own trial's write, with its pending parameters, in one transaction."""
        write.params = self.own.take_pending(trial_id)
        study = self.own.studies[trial_id]
        write.known = self.distributions.get(study, {})
        self.distributions[study] = self._retry(lambda: optuna_adapter.write_own(self.transactions, trial_id, write))
        self.own.wrote(trial_id, write)

    def set_trial_state_values(self, trial_id: int, state: TrialState,
                               values: Sequence[float] | None = None) -> bool:
        def resolve() -> bool | None:
            stored = self.rdb.get_trial(trial_id)
            if stored.state == state and (values is None or stored.values == list(values)):
                return True  # the lost reply was a success
            if stored.state.is_finished():
                raise UpdateFinishedTrialError(f"trial {stored.number} is already {stored.state.name}")
            return None
        if self.own.owns(trial_id):
            if self.own.pending.get(trial_id):
                self._write_own(trial_id, optuna_adapter.OwnWrite())
            finish = lambda: optuna_adapter.finish_own(self.transactions, trial_id, state,  # noqa: E731
                                                       None if values is None else list(values))
            self._retry(finish, resolve)
            done = True
        else:
            done = self._retry(lambda: self.cache.set_trial_state_values(trial_id, state, values), resolve)
        if state.is_finished():
            self.own.finished(trial_id, state, None if values is None else list(values))
        return done

    def set_trial_intermediate_value(self, trial_id: int, step: int, intermediate_value: float) -> None:
        if self.own.owns(trial_id):
            return self._write_own(trial_id, optuna_adapter.OwnWrite(step=(step, intermediate_value)))
        self._retry(lambda: self.cache.set_trial_intermediate_value(trial_id, step, intermediate_value))

    def set_trial_user_attr(self, trial_id: int, key: str, value: Any) -> None:
        if self.own.owns(trial_id):
            return self._write_own(trial_id, optuna_adapter.OwnWrite(user={key: value}))
        self._retry(lambda: self.cache.set_trial_user_attr(trial_id, key, value))

    def set_trial_system_attr(self, trial_id: int, key: str, value: Any) -> None:
        if self.own.owns(trial_id):
            return self._write_own(trial_id, optuna_adapter.OwnWrite(system={key: value}))
        self._retry(lambda: self.cache.set_trial_system_attr(trial_id, key, value))

    def get_trial_id_from_study_id_trial_number(self, study_id: int, trial_number: int) -> int:
        return self._retry(lambda: self.cache.get_trial_id_from_study_id_trial_number(study_id, trial_number))

    def get_trial(self, trial_id: int) -> FrozenTrial:
        own = self.own.get(trial_id)
        return own if own is not None else self._retry(lambda: self.cache.get_trial(trial_id))

    def get_all_trials(self, study_id: int, deepcopy: bool = True,
                       states: Container[TrialState] | None = None) -> list[FrozenTrial]:
        return self._retry(lambda: self.cache.get_all_trials(study_id, deepcopy=deepcopy, states=states))

    def get_best_trial(self, study_id: int) -> FrozenTrial:
        return self._retry(lambda: self.cache.get_best_trial(study_id))

    def record_heartbeat(self, trial_id: int) -> bool:
        """One attempt (the heartbeat thread has its own rhythm): True when it reached the
        database; a failure other than a lost connection is said (``RetryPolicy.attempt``)."""
        return self.policy.attempt(lambda: self.rdb.record_heartbeat(trial_id), f"heartbeat of trial id {trial_id}")

    def remove_session(self) -> None:
        self.rdb.remove_session()
