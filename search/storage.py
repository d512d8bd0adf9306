"""Opening the study storage, and the Optuna storage that survives database outages.

``ResilientStorage`` is an ``optuna.storages.BaseStorage`` over Optuna's ``RDBStorage``
(with Optuna's trial cache) whose every method has a stated retry policy:

* reads, and writes that are upserts (params, intermediate values, attrs): retried on
  connection loss for up to the reconnect patience; repeating them changes nothing;
* finishing a trial (``set_trial_state_values``): after a lost reply the trial's state
  is read back, and the write is repeated only if it did not happen;
* creating a study: after a lost reply its name is looked up first;
* creating or deleting trials and studies otherwise: never repeated (this project's own
  trial creation goes through ``optuna_adapter.Slots``, which is safe to repeat).

Database errors other than connection loss become one ``StorageError`` line.
"""

from __future__ import annotations

from collections.abc import Callable, Container, Sequence
import os
import sqlite3
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

import optuna
import sqlalchemy
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages import BaseStorage, RDBStorage
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from search import optuna_adapter
from search.database import (
    RECONNECT_PATIENCE_S, UNKNOWN, Database, describe, engine_kwargs, install_reply_timeout, is_database_error,
    is_transient, limit_transactions, one_line_error, parse_url,
)
from search.errors import DatabaseLost, UserError
from search.own_trials import OwnTrials

T = TypeVar("T")


class ResilientStorage(BaseStorage):
    def __init__(self, rdb: RDBStorage, database: Database, writable: bool = True) -> None:
        self.rdb = rdb
        self.database = database
        self.cache = optuna_adapter.cached(rdb)
        self.transactions = optuna_adapter.transaction_engine(rdb, database) if writable else rdb.engine
        self.own = OwnTrials()  # the trials this worker runs, served from memory
        self.distributions: dict[int, dict[str, optuna.distributions.BaseDistribution]] = {}  # by study

    def slots(self, study: optuna.Study) -> optuna_adapter.Slots:
        return optuna_adapter.Slots(self.transactions, self.database, study)

    def close(self) -> None:
        if self.transactions is not self.rdb.engine:
            self.transactions.dispose()
        self.rdb.engine.dispose()

    # --- policies -------------------------------------------------------------
    def _retry(self, call: Callable[[], T], resolve: Callable[[], Any] | None = None) -> T:
        return self.database.retrying(call, resolve)

    def _once(self, call: Callable[[], T]) -> T:
        try:
            return call()
        except Exception as error:
            raise one_line_error(self.database.url, error, lambda problem: DatabaseLost(f"lost {problem}"),
                                 "the write cannot be repeated safely: check what it did, then run again") from error

    # --- studies ----------------------------------------------------------------
    def create_new_study(self, directions: Sequence[StudyDirection], study_name: str | None = None) -> int:
        if study_name is None:
            return self._once(lambda: self.cache.create_new_study(directions, study_name))

        def resolve() -> int | Any:
            try:
                return self.rdb.get_study_id_from_name(study_name)
            except KeyError:
                return UNKNOWN
        return self._retry(lambda: self.cache.create_new_study(directions, study_name), resolve)

    def delete_study(self, study_id: int) -> None:
        self._once(lambda: self.cache.delete_study(study_id))

    def set_study_user_attr(self, study_id: int, key: str, value: Any) -> None:
        self._retry(lambda: self.cache.set_study_user_attr(study_id, key, value))

    def set_study_system_attr(self, study_id: int, key: str, value: Any) -> None:
        self._retry(lambda: self.cache.set_study_system_attr(study_id, key, value))

    def get_study_id_from_name(self, study_name: str) -> int:
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
        return self._retry(self.cache.get_all_studies)

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
        def resolve() -> bool | Any:
            stored = self.rdb.get_trial(trial_id)
            if stored.state == state and (values is None or stored.values == list(values)):
                return True  # the lost reply was a success
            if stored.state.is_finished():
                raise UpdateFinishedTrialError(f"trial {stored.number} is already {stored.state.name}")
            return UNKNOWN
        if self.own.owns(trial_id) and self.own.pending.get(trial_id):
            self._write_own(trial_id, optuna_adapter.OwnWrite())
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

    def record_heartbeat(self, trial_id: int) -> None:
        """One attempt (the heartbeat thread has its own rhythm); failures are reported."""
        try:
            self.rdb.record_heartbeat(trial_id)
        except Exception as error:
            if is_database_error(error) and is_transient(error):
                self.database.health.lost()
            raise
        self.database.health.ok()

    def remove_session(self) -> None:
        self.rdb.remove_session()


def sqlite_path(url: sqlalchemy.engine.URL, writable: bool) -> Path | None:
    """The SQLite file, checked: None if it does not exist yet (and may be created)."""
    path = Path(url.database).expanduser()
    if path.is_dir():
        raise UserError(f"{describe(url)} is a directory; give a file path such as {path / 'search.db'}")
    if path.exists():
        if writable and not (os.access(path, os.W_OK) and os.access(path.resolve().parent, os.W_OK)):
            raise UserError(f"{describe(url)} is read-only (or its directory is); make it writable, or "
                            f"copy it somewhere writable to add trials")
        return path
    directory = path.resolve().parent
    if not writable:
        raise UserError(f"no SQLite file {path}; check --storage (search run or search worker creates it)")
    if not directory.is_dir():
        raise UserError(f"cannot create {describe(url)}: directory {directory} does not exist; create it or "
                        f"pass another --storage path")
    if not os.access(directory, os.W_OK):
        raise UserError(f"cannot create {describe(url)}: directory {directory} is not writable; "
                        f"pass another --storage path")
    return None


def read_only_engine_kwargs(url: sqlalchemy.engine.URL) -> dict[str, Any]:
    """Connections that cannot write: SQLite opened read-only (works on a read-only mount,
    creates no journal); PostgreSQL's are made read-only by ``limit_transactions``."""
    kwargs = engine_kwargs(url)
    if url.get_backend_name() == "sqlite":
        location = f"file:{quote(str(Path(url.database).expanduser().resolve()))}?mode=ro"
        kwargs["creator"] = lambda: sqlite3.connect(location, uri=True, timeout=60, check_same_thread=False)
    return kwargs


def check_reachable(url: sqlalchemy.engine.URL, kwargs: dict[str, Any]) -> str:
    """Connect once (failing in seconds, naming host and port) and inspect the schema."""
    engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool,
                                      **{key: kwargs[key] for key in ("connect_args", "creator") if key in kwargs})
    try:
        return optuna_adapter.schema_state(engine, Database(url))
    except Exception as error:
        raise one_line_error(url, error, lambda problem: UserError(f"cannot reach {problem}"),
                             "check that the server runs and the --storage URL (or SEARCH_STORAGE) is right") from None
    finally:
        engine.dispose()


def open_storage(url_text: str, writable: bool = True, patience: float = RECONNECT_PATIENCE_S,
                 notify: Callable[[str], None] | None = None, missing_ok: bool = False) -> ResilientStorage | None:
    """Check the URL and the server, then open the storage.

    ``writable``: create Optuna's tables if there are none (race-free). Otherwise nothing
    is created, migrated or locked, and connections cannot write; a storage with no
    Optuna tables is an error, or None with ``missing_ok``."""
    from search.locking import schema_lock

    url = parse_url(url_text)
    install_reply_timeout()
    if url.get_backend_name() == "sqlite" and sqlite_path(url, writable or missing_ok) is None and not writable:
        return None  # not there yet: a worker's look (missing_ok) before it creates the file
    kwargs = engine_kwargs(url) if writable else read_only_engine_kwargs(url)
    state = check_reachable(url, kwargs)
    if not writable and state != "optuna":
        if missing_ok:
            return None
        raise UserError(f"{describe(url)} holds no Optuna study storage (no tables); check --storage")
    database = Database(url, patience) if notify is None else Database(url, patience, notify)
    try:
        if writable and state != "optuna":
            # Workers started at the same instant would race to create the tables.
            with schema_lock(url):
                rdb = RDBStorage(url.render_as_string(hide_password=False), engine_kwargs=kwargs)
                optuna_adapter.create_indexes(rdb.engine)
        elif writable:
            rdb = RDBStorage(url.render_as_string(hide_password=False), engine_kwargs=kwargs)
            if not optuna_adapter.has_indexes(rdb.engine):  # tables made by Optuna or an older version
                with schema_lock(url):
                    optuna_adapter.create_indexes(rdb.engine)
        else:
            rdb = RDBStorage(url.render_as_string(hide_password=False), engine_kwargs=kwargs,
                             skip_compatibility_check=True, skip_table_creation=True)
    except Exception as error:
        raise one_line_error(url, error, lambda problem: UserError(f"cannot reach {problem}"),
                             "check that the server runs") from error
    limit_transactions(rdb.engine, read_only=not writable)
    storage = ResilientStorage(rdb, database, writable)
    if writable:
        optuna_adapter.schema_state(storage.transactions, database)
    return storage
