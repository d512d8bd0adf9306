"""Every contact with Optuna beyond its public API, in one module.

The rest of ``search/`` uses public Optuna and this module. Each private touch, and why
no public call does the job:

* ``_CachedStorage`` wraps the ``RDBStorage`` under ``ResilientStorage`` for whole-study
  reads (status, the dashboard). Optuna applies it to a bare ``RDBStorage`` itself
  (``optuna.storages.get_storage``); a storage wrapper of our own would lose it.
* ``RDBStorage._set_trial_param`` takes the parameter's earlier distribution, as the
  cache passes it (``set_param``); the public method finds it with a query that grows
  with the study.
* ``trial._trial_id`` / ``study._study_id``: storage calls take ids; the public lookup
  (``get_trial_id_from_study_id_trial_number``) costs a query for what the object knows.
* ``optuna.Trial(study, trial_id)``: ``Study.ask`` builds its trial this way after
  popping a WAITING trial or creating one; ``claim`` does that step itself (below), so
  it builds the trial the same way.
* ``RDBStorage._get_trials(study_id, states, included_ids, greater_than)``: the one
  query that reads only new trials and the given unfinished ones (``changed_trials``);
  the public ``get_all_trials`` reads, sorts and copies every trial each time.
* ``StudyView`` overrides ``Study._get_trials``, which Optuna's samplers call to read
  history, so that TPE fits a bounded part of it (``search.sampling.BoundedSampler``).
* ``_truncnorm._log_ndtr``: TPE evaluates log Phi element by element in Python; with a
  few hundred trials that was most of a trial's sampling time (530,000 calls for 10
  trials at 1,000). ``log_ndtr`` is the same function on whole arrays (agreeing to
  3e-15, tests/test_sampling.py); ``faster_tpe`` installs it.
* ``RDBStorage.engine`` and Optuna's table schema (version 12), through SQLAlchemy Core,
  for four operations that must each be one transaction, which no public call is:

  - ``claim``: WAITING -> RUNNING (or a new RUNNING trial while the budget allows), its
    first heartbeat row and its owner token, together. ``Study.ask`` does the state
    change alone, so a worker killed before its first heartbeat left a RUNNING trial no
    heartbeat check could ever find; and a claim whose reply was lost could not tell
    whether it had won. Here the owner token is read back instead.
  - ``requeue``: RUNNING -> FAIL plus its retry (or, after MAX_CRASHES, a fresh trial),
    the checkpoint pointer moving with it. ``fail_stale_trials`` and the retry callback
    are two transactions: a failure between them lost the slot, and a retried creation
    whose reply was lost made two.
  - ``progress``: the budget and how many slots are open or finished, in one query.
  - ``unregister_artifact``: Optuna lists artifacts in trial system attrs and has no call
    to remove an entry; weights deleted by ``--keep-best`` must leave the dashboard's
    list too. ``register_artifact`` writes the same entry ``upload_artifact`` does, but
    after the file is complete (``upload_artifact`` lists it before writing it).
"""

from __future__ import annotations

import json
import math
import uuid
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

import numpy as np
import optuna
import sqlalchemy as sa
from optuna.artifacts import ArtifactMeta
from optuna.storages import RDBStorage
from optuna.samplers._tpe import _truncnorm
from optuna.storages._cached_storage import _CachedStorage
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy.dialects import postgresql, sqlite

from search import keys
from search.database import UNKNOWN, Database, StorageError, describe, engine_kwargs

SCHEMA_VERSION = 12  # Optuna 4.x-5.x; the tables below are checked against it on open
MAX_CRASHES = 3  # stale failures of one slot before it starts over with fresh parameters

_meta = sa.MetaData()
_state = sa.Enum(TrialState, name="trialstate", create_constraint=False, native_enum=True)
studies = sa.Table("studies", _meta, sa.Column("study_id", sa.Integer, primary_key=True),
                   sa.Column("study_name", sa.String))
study_user_attrs = sa.Table("study_user_attributes", _meta, sa.Column("study_id", sa.Integer),
                            sa.Column("key", sa.String), sa.Column("value_json", sa.Text))
study_system_attrs = sa.Table("study_system_attributes", _meta, sa.Column("study_id", sa.Integer),
                              sa.Column("key", sa.String), sa.Column("value_json", sa.Text))
trials = sa.Table("trials", _meta, sa.Column("trial_id", sa.Integer, primary_key=True),
                  sa.Column("number", sa.Integer), sa.Column("study_id", sa.Integer), sa.Column("state", _state),
                  sa.Column("datetime_start", sa.DateTime), sa.Column("datetime_complete", sa.DateTime))
params = sa.Table("trial_params", _meta, sa.Column("trial_id", sa.Integer), sa.Column("param_name", sa.String),
                  sa.Column("param_value", sa.Float), sa.Column("distribution_json", sa.Text))
user_attrs = sa.Table("trial_user_attributes", _meta, sa.Column("trial_id", sa.Integer),
                      sa.Column("key", sa.String), sa.Column("value_json", sa.Text))
system_attrs = sa.Table("trial_system_attributes", _meta, sa.Column("trial_id", sa.Integer),
                        sa.Column("key", sa.String), sa.Column("value_json", sa.Text))
intermediate = sa.Table("trial_intermediate_values", _meta, sa.Column("trial_id", sa.Integer),
                        sa.Column("step", sa.Integer), sa.Column("intermediate_value", sa.Float),
                        sa.Column("intermediate_value_type", sa.String))
heartbeats = sa.Table("trial_heartbeats", _meta, sa.Column("trial_id", sa.Integer),
                      sa.Column("heartbeat", sa.DateTime))
version_info = sa.Table("version_info", _meta, sa.Column("schema_version", sa.Integer))


def trial_id(trial: optuna.Trial | optuna.trial.FrozenTrial) -> int:
    return trial._trial_id


def study_id(study: optuna.Study) -> int:
    return study._study_id


def cached(rdb: RDBStorage) -> optuna.storages.BaseStorage:
    return _CachedStorage(rdb)


def transaction_engine(rdb: RDBStorage, database: Database) -> sa.Engine:
    """The engine for this module's transactions: RDBStorage's own pool on PostgreSQL (no
    extra connections); on SQLite one whose transactions take the write lock at BEGIN,
    so a read-then-write transaction cannot deadlock against another."""
    if not database.is_sqlite:
        return rdb.engine
    engine = sa.create_engine(database.url, **engine_kwargs(database.url))

    @sa.event.listens_for(engine, "connect")
    def _autocommit_driver(dbapi_connection: Any, record: Any) -> None:
        dbapi_connection.isolation_level = None  # let the "begin" hook below issue BEGIN

    @sa.event.listens_for(engine, "begin")
    def _begin_immediate(connection: sa.Connection) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


OPTUNA_TABLES = {"studies", "study_directions", "study_user_attributes", "study_system_attributes", "trials",
                 "trial_params", "trial_values", "trial_intermediate_values", "trial_user_attributes",
                 "trial_system_attributes", "trial_heartbeats", "version_info", "alembic_version"}


def schema_state(engine: sa.Engine, database: Database) -> str:
    """"empty" (no Optuna tables yet), "partial" (some, all Optuna's) or "optuna" (complete,
    schema version checked); a database whose tables clash with Optuna's is refused."""
    inspector = sa.inspect(engine)
    present = set(inspector.get_table_names()) & OPTUNA_TABLES
    if not present:
        return "empty"
    for table in present & {"studies", "trials", "version_info"}:
        expected = set(_meta.tables[table].columns.keys())
        if not expected <= {column["name"] for column in inspector.get_columns(table)}:
            raise StorageError(f"{describe(database.url)} has a table {table!r} that is not Optuna's; "
                               f"point --storage at a separate database")
    if present != OPTUNA_TABLES:
        return "partial"
    with engine.connect() as connection:
        version = connection.execute(sa.select(version_info.c.schema_version)).scalar()
    if version != SCHEMA_VERSION:
        raise StorageError(f"{describe(database.url)} has Optuna schema version {version}; this project "
                           f"reads version {SCHEMA_VERSION} (Optuna 5): upgrade it with `optuna storage upgrade`")
    return "optuna"


def changed_trials(storage: Any, study_id_: int, unfinished: dict[int, FrozenTrial], last_id: int) -> list[FrozenTrial]:
    """Trials created after ``last_id``, and the current state of the ``unfinished`` ones."""
    return storage.database.retrying(lambda: storage.rdb._get_trials(study_id_, None, set(unfinished), last_id))


class StudyView:
    """``study``, except that samplers reading its trials get ``trials`` (a bounded subset)."""

    def __init__(self, study: optuna.Study, trials: list[FrozenTrial]) -> None:
        self._study = study
        self._trials = trials

    def __getattr__(self, name: str) -> Any:
        return getattr(self._study, name)

    def _get_trials(self, deepcopy: bool = True, states: Any = None, use_cache: bool = False) -> list[FrozenTrial]:
        return self._trials if states is None else [trial for trial in self._trials if trial.state in states]

    def get_trials(self, deepcopy: bool = True, states: Any = None) -> list[FrozenTrial]:
        return self._get_trials(deepcopy, states)


_erfc = np.frompyfunc(math.erfc, 1, 1)


def log_ndtr(a: np.ndarray) -> np.ndarray:
    """log Phi(a), as Optuna's ``_log_ndtr_single`` computes it, on a whole array."""
    a = np.asarray(a, dtype=float)
    out = np.empty_like(a)
    high, low = a > 6, a <= -20
    middle = ~(high | low)
    out[middle] = np.log(0.5 * _erfc(-a[middle] / math.sqrt(2)).astype(float))
    out[high] = -0.5 * _erfc(a[high] / math.sqrt(2)).astype(float)  # log(1 - x) ~ -x for tiny x
    if low.any():  # the asymptotic series of the far left tail
        x = a[low]
        series, term = np.ones_like(x), np.ones_like(x)
        for i in range(1, 40):
            term = -term * (2 * i - 1) / x**2
            series += term
        out[low] = -0.5 * x**2 - np.log(-x) - 0.5 * math.log(2 * math.pi) + np.log(series)
    return out


STOCK_LOG_NDTR = _truncnorm._log_ndtr


def faster_tpe(enable: bool = True) -> None:
    """Install ``log_ndtr`` in TPE for this process (``enable=False`` puts Optuna's back)."""
    _truncnorm._log_ndtr = log_ndtr if enable else STOCK_LOG_NDTR


def open_trial(study: optuna.Study, claimed_id: int) -> optuna.Trial:
    study._storage.trial_studies[claimed_id] = study._study_id  # see set_param
    return optuna.Trial(study, claimed_id)


def set_param(rdb: RDBStorage, trial_id_: int, name: str, value: float,
              distribution: optuna.distributions.BaseDistribution,
              previous: optuna.distributions.BaseDistribution | None) -> None:
    """``set_trial_param`` given the distribution this parameter had in earlier trials of the
    study, as ``_CachedStorage`` passes it: with None, Optuna finds it with a query over
    every parameter row of the study, which grows with the study."""
    rdb._set_trial_param(trial_id_, name, value, distribution, previous)


def register_artifact(storage: optuna.storages.BaseStorage, owner_trial_id: int, artifact_id: str,
                      filename: str) -> None:
    meta = ArtifactMeta(artifact_id=artifact_id, filename=filename, mimetype="application/octet-stream",
                        encoding=None)
    storage.set_trial_system_attr(owner_trial_id, keys.ARTIFACTS_PREFIX + artifact_id, json.dumps(asdict(meta)))


def _utcnow() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)  # Optuna 5 stores naive UTC


def _insert(connection: sa.Connection) -> Any:
    return (postgresql if connection.dialect.name == "postgresql" else sqlite).insert


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


@dataclass(frozen=True)
class References:
    """What every trial of the storage still points at, for the artifact sweep."""

    checkpoints: set[str]  # files named by the pointer of a WAITING or RUNNING trial
    running: set[int]  # trial ids
    listed: set[str]  # artifact ids in any study's or trial's artifact list


class Slots:
    """A study's slot transitions, each one transaction; all safe to repeat after a lost reply."""

    def __init__(self, engine: sa.Engine, database: Database, study: optuna.Study) -> None:
        self.engine = engine
        self.database = database
        self.study_id = study_id(study)

    def _current(self) -> Any:
        """The trials that are their slot's latest (not failed and continued by a successor)."""
        continued = sa.select(system_attrs.c.trial_id).where(
            system_attrs.c.trial_id == trials.c.trial_id, system_attrs.c.key == keys.CONTINUED_BY)
        return sa.and_(trials.c.study_id == self.study_id, ~sa.exists(continued))

    def _budget(self, connection: sa.Connection) -> int | None:
        value = connection.execute(sa.select(study_user_attrs.c.value_json).where(
            study_user_attrs.c.study_id == self.study_id, study_user_attrs.c.key == keys.BUDGET)).scalar()
        return None if value is None else int(json.loads(value))

    def progress(self) -> Progress:
        def read() -> Progress:
            with self.engine.connect() as connection:
                counts = dict(connection.execute(sa.select(trials.c.state, sa.func.count()).where(
                    self._current()).group_by(trials.c.state)).all())
                budget = self._budget(connection)
            slots = sum(counts.values())
            return Progress(budget=slots if budget is None else budget,
                            complete=counts.get(TrialState.COMPLETE, 0), pruned=counts.get(TrialState.PRUNED, 0),
                            failed=counts.get(TrialState.FAIL, 0), running=counts.get(TrialState.RUNNING, 0),
                            waiting=counts.get(TrialState.WAITING, 0))
        return self.database.retrying(read)

    def claim(self, owner: str) -> int | None:
        """Move the oldest WAITING trial, or a new one while the budget has room, to RUNNING
        with its first heartbeat and ``owner``; returns its id, or None if there is none."""
        token = json.dumps(f"{owner}#{uuid.uuid4().hex}")

        def attempt() -> int | None:
            with self.engine.begin() as connection:
                claimed = connection.execute(
                    sa.select(trials.c.trial_id).where(trials.c.study_id == self.study_id,
                                                       trials.c.state == TrialState.WAITING)
                    .order_by(trials.c.trial_id).limit(1).with_for_update(skip_locked=True)).scalar()
                if claimed is not None:
                    connection.execute(trials.update().where(trials.c.trial_id == claimed).values(
                        state=TrialState.RUNNING, datetime_start=_utcnow()))
                else:
                    self._lock_study(connection)
                    budget = self._budget(connection)
                    used = connection.execute(sa.select(sa.func.count()).where(self._current())).scalar()
                    if budget is None or used >= budget:
                        return None
                    claimed = self._new_trial(connection, TrialState.RUNNING, start=_utcnow())
                upsert = _insert(connection)(heartbeats).values(trial_id=claimed, heartbeat=sa.func.now())
                connection.execute(upsert.on_conflict_do_update(index_elements=["trial_id"],
                                                                set_={"heartbeat": sa.func.now()}))
                self._set_system_attrs(connection, claimed, {keys.OWNER: token}, encoded=True)
                return claimed

        def resolve() -> int | Any:
            with self.engine.connect() as connection:
                found = connection.execute(sa.select(system_attrs.c.trial_id).where(
                    system_attrs.c.key == keys.OWNER, system_attrs.c.value_json == token)).scalar()
            return UNKNOWN if found is None else found

        return self.database.retrying(attempt, resolve)

    def requeue(self, failed_id: int, cause: str, stale_before: datetime | None = None) -> int | None:
        """Fail a RUNNING trial and queue its continuation in the same transaction.

        The continuation is a retry (same params, user attrs, intermediate values; the
        checkpoint pointer moves to it) or, once the slot has crashed MAX_CRASHES times, a
        fresh trial. ``cause`` "stale" counts as a crash, "stopped" does not. With
        ``stale_before``, a trial whose heartbeat is newer than that is left alone. Returns
        the continuation's number, or None when the trial was no longer RUNNING."""

        def attempt() -> int | None:
            with self.engine.begin() as connection:
                row = connection.execute(sa.select(trials.c.state, trials.c.number).where(
                    trials.c.trial_id == failed_id).with_for_update()).first()
                if row is None or row.state != TrialState.RUNNING:
                    return None
                if stale_before is not None:
                    beat = connection.execute(sa.select(heartbeats.c.heartbeat).where(
                        heartbeats.c.trial_id == failed_id)).scalar()
                    if beat is not None and beat >= stale_before:
                        return None
                attrs = {key: json.loads(value) for key, value in connection.execute(
                    sa.select(system_attrs.c.key, system_attrs.c.value_json).where(
                        system_attrs.c.trial_id == failed_id))}
                crashes = int(attrs.get(keys.CRASHES, 0)) + (cause == "stale")
                connection.execute(trials.update().where(trials.c.trial_id == failed_id).values(
                    state=TrialState.FAIL, datetime_complete=_utcnow()))
                # Weights listed just before the worker died: unlisted here, their file is swept.
                connection.execute(system_attrs.delete().where(
                    system_attrs.c.trial_id == failed_id, system_attrs.c.key.startswith(keys.ARTIFACTS_PREFIX),
                    system_attrs.c.value_json.contains(keys.WEIGHTS_SUFFIX)))
                self._lock_study(connection)
                successor = self._new_trial(connection, TrialState.WAITING)
                pointer = (user_attrs.c.trial_id == failed_id) & (user_attrs.c.key == keys.CHECKPOINT)
                if crashes > MAX_CRASHES:
                    connection.execute(user_attrs.delete().where(pointer))  # its file is swept
                    new_attrs = {keys.REPLACES: row.number}
                else:
                    self._copy_rows(connection, failed_id, successor)
                    connection.execute(user_attrs.update().where(pointer).values(trial_id=successor))
                    new_attrs = {keys.FAILED_TRIAL: attrs.get(keys.FAILED_TRIAL, row.number),
                                 keys.RETRY_HISTORY: [*attrs.get(keys.RETRY_HISTORY, []), row.number],
                                 keys.CRASHES: crashes}
                    if keys.FIXED_PARAMS in attrs:
                        new_attrs[keys.FIXED_PARAMS] = attrs[keys.FIXED_PARAMS]
                number = connection.execute(sa.select(trials.c.number).where(trials.c.trial_id == successor)).scalar()
                self._set_system_attrs(connection, successor, new_attrs)
                self._set_system_attrs(connection, failed_id, {keys.CONTINUED_BY: number, keys.FAIL_CAUSE: cause})
                return number

        def resolve() -> int | Any:
            with self.engine.connect() as connection:
                found = connection.execute(sa.select(system_attrs.c.value_json).where(
                    system_attrs.c.trial_id == failed_id, system_attrs.c.key == keys.CONTINUED_BY)).scalar()
            return UNKNOWN if found is None else json.loads(found)

        return self.database.retrying(attempt, resolve)

    def requeue_stale(self, grace_s: float) -> list[int]:
        """Requeue every RUNNING trial whose heartbeat is older than ``grace_s`` (database
        clock), or that has none and started longer ago than that; returns their numbers."""

        def scan() -> tuple[datetime, list[tuple[int, int]]]:
            with self.engine.connect() as connection:
                now = connection.execute(sa.select(sa.func.now())).scalar()
                cutoff = now.replace(tzinfo=None) - timedelta(seconds=grace_s)
                beaten = sa.select(heartbeats.c.heartbeat).where(heartbeats.c.trial_id == trials.c.trial_id)
                stale = connection.execute(sa.select(trials.c.trial_id, trials.c.number).where(
                    trials.c.study_id == self.study_id, trials.c.state == TrialState.RUNNING,
                    sa.or_(beaten.scalar_subquery() < cutoff,
                           ~sa.exists(beaten) & (trials.c.datetime_start < _utcnow() - timedelta(seconds=grace_s))),
                )).all()
            return cutoff, [tuple(row) for row in stale]

        cutoff, stale = self.database.retrying(scan)
        return [number for trial_id_, number in stale
                if self.requeue(trial_id_, "stale", stale_before=cutoff) is not None]

    def references(self) -> References:
        """Storage-wide: every live checkpoint pointer, running trial and listed artifact."""

        def read() -> References:
            live = (TrialState.RUNNING, TrialState.WAITING)
            with self.engine.connect() as connection:
                pointers = connection.execute(sa.select(user_attrs.c.value_json).join(
                    trials, trials.c.trial_id == user_attrs.c.trial_id).where(
                    user_attrs.c.key == keys.CHECKPOINT, trials.c.state.in_(live))).scalars()
                running = connection.execute(sa.select(trials.c.trial_id).where(
                    trials.c.state == TrialState.RUNNING)).scalars()
                listed = [key for table in (system_attrs, study_system_attrs) for key in connection.execute(
                    sa.select(table.c.key).where(table.c.key.startswith(keys.ARTIFACTS_PREFIX))).scalars()]
                files = {json.loads(value).get("file") for value in pointers if value != "null"}
                return References(checkpoints={file for file in files if file}, running=set(running),
                                  listed={key[len(keys.ARTIFACTS_PREFIX):] for key in listed})
        return self.database.retrying(read)

    def unregister_artifact(self, owner_trial_id: int, artifact_id: str) -> None:
        def delete() -> None:
            with self.engine.begin() as connection:
                connection.execute(system_attrs.delete().where(
                    system_attrs.c.trial_id == owner_trial_id,
                    system_attrs.c.key == keys.ARTIFACTS_PREFIX + artifact_id))
        self.database.retrying(delete)

    # --- inside a transaction -----------------------------------------------------
    def _lock_study(self, connection: sa.Connection) -> None:
        # The lock Optuna's own trial creation takes: trial numbers stay dense and unique.
        connection.execute(sa.select(studies.c.study_id).where(studies.c.study_id == self.study_id).with_for_update())

    def _new_trial(self, connection: sa.Connection, state: TrialState, start: datetime | None = None) -> int:
        number = connection.execute(sa.select(sa.func.count()).where(trials.c.study_id == self.study_id)).scalar()
        return connection.execute(trials.insert().values(number=number, study_id=self.study_id, state=state,
                                                         datetime_start=start).returning(trials.c.trial_id)).scalar()

    @staticmethod
    def _copy_rows(connection: sa.Connection, source: int, target: int) -> None:
        for table, columns in ((params, ("param_name", "param_value", "distribution_json")),
                               (intermediate, ("step", "intermediate_value", "intermediate_value_type")),
                               (user_attrs, ("key", "value_json"))):
            selected = [table.c[name] for name in columns]
            query = sa.select(sa.literal(target), *selected).where(table.c.trial_id == source)
            if table is user_attrs:
                query = query.where(table.c.key != keys.CHECKPOINT)  # moved, not copied
            connection.execute(table.insert().from_select(["trial_id", *columns], query))

    @staticmethod
    def _set_system_attrs(connection: sa.Connection, target: int, values: dict[str, Any],
                          encoded: bool = False) -> None:
        for key, value in values.items():
            upsert = _insert(connection)(system_attrs).values(
                trial_id=target, key=key, value_json=value if encoded else json.dumps(value))
            connection.execute(upsert.on_conflict_do_update(index_elements=["trial_id", "key"],
                                                            set_={"value_json": upsert.excluded.value_json}))
