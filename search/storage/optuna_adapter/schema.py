"""Optuna's table schema (version 12), for SQLAlchemy Core, and the helpers every
transaction of this package shares. See the package docstring for why."""

from __future__ import annotations

import json
import math
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from search.errors import StorageError

if TYPE_CHECKING:
    import optuna

SCHEMA_VERSION = 12  # Optuna 4.x-5.x; the tables below are checked against it on open

_meta = sa.MetaData()


class _State(sa.types.TypeDecorator):
    """Optuna's ``trialstate`` column: binds a ``TrialState`` or its name, reads a
    ``TrialState``, importing Optuna at the first state read. Reads that only filter or
    count by state (status, best) never load Optuna: its import (numpy, tqdm) is a
    third of a one-second command."""

    impl = sa.Enum("RUNNING", "COMPLETE", "PRUNED", "FAIL", "WAITING", name="trialstate", create_constraint=False,
                   native_enum=True)
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: sa.Dialect) -> str | None:
        return None if value is None else getattr(value, "name", value)

    def process_result_value(self, value: str | None, dialect: sa.Dialect) -> Any:
        from optuna.trial import TrialState

        return None if value is None else TrialState[value]


_state = _State()
studies = sa.Table("studies", _meta, sa.Column("study_id", sa.Integer, primary_key=True),
                   sa.Column("study_name", sa.String))
directions = sa.Table("study_directions", _meta, sa.Column("study_id", sa.Integer),
                      sa.Column("objective", sa.Integer), sa.Column("direction", sa.String))
study_user_attrs = sa.Table("study_user_attributes", _meta, sa.Column("study_id", sa.Integer),
                            sa.Column("key", sa.String), sa.Column("value_json", sa.Text))
study_system_attrs = sa.Table("study_system_attributes", _meta, sa.Column("study_id", sa.Integer),
                              sa.Column("key", sa.String), sa.Column("value_json", sa.Text))
trials = sa.Table("trials", _meta, sa.Column("trial_id", sa.Integer, primary_key=True),
                  sa.Column("number", sa.Integer), sa.Column("study_id", sa.Integer), sa.Column("state", _state),
                  sa.Column("datetime_start", sa.DateTime), sa.Column("datetime_complete", sa.DateTime))
# The row id comes last: _set_attrs takes a table's first column as its owner.
params = sa.Table("trial_params", _meta, sa.Column("trial_id", sa.Integer), sa.Column("param_name", sa.String),
                  sa.Column("param_value", sa.Float), sa.Column("distribution_json", sa.Text),
                  sa.Column("param_id", sa.Integer))
user_attrs = sa.Table("trial_user_attributes", _meta, sa.Column("trial_id", sa.Integer),
                      sa.Column("key", sa.String), sa.Column("value_json", sa.Text),
                      sa.Column("trial_user_attribute_id", sa.Integer))
system_attrs = sa.Table("trial_system_attributes", _meta, sa.Column("trial_id", sa.Integer),
                        sa.Column("key", sa.String), sa.Column("value_json", sa.Text),
                        sa.Column("trial_system_attribute_id", sa.Integer))
values = sa.Table("trial_values", _meta, sa.Column("trial_id", sa.Integer), sa.Column("objective", sa.Integer),
                  sa.Column("value", sa.Float), sa.Column("value_type", sa.String),
                  sa.Column("trial_value_id", sa.Integer))
intermediate = sa.Table("trial_intermediate_values", _meta, sa.Column("trial_id", sa.Integer),
                        sa.Column("step", sa.Integer), sa.Column("intermediate_value", sa.Float),
                        sa.Column("intermediate_value_type", sa.String),
                        sa.Column("trial_intermediate_value_id", sa.Integer))
# Each per-trial table's own row id: the order its rows were written in.
ROW_ID = {"trial_params": "param_id", "trial_user_attributes": "trial_user_attribute_id",
          "trial_system_attributes": "trial_system_attribute_id", "trial_values": "trial_value_id",
          "trial_intermediate_values": "trial_intermediate_value_id"}
heartbeats = sa.Table("trial_heartbeats", _meta, sa.Column("trial_id", sa.Integer),
                      sa.Column("heartbeat", sa.DateTime))
version_info = sa.Table("version_info", _meta, sa.Column("schema_version", sa.Integer))


# Optuna stores a value as a float column and its kind, None for the infinities (and NaN
# among intermediate values), as its ORM models' *_stored_repr methods do. Written out
# here so that reading a study needs no ORM: its import is a tenth of `search status`.
_SPECIAL = {"INF_POS": math.inf, "INF_NEG": -math.inf, "NAN": math.nan}


def to_stored(value: float) -> tuple[float | None, str]:
    """A trial's value or intermediate value as Optuna stores it: (value, kind)."""
    if math.isnan(value):
        return None, "NAN"  # intermediate values only: Optuna fails a trial whose value is NaN
    if math.isinf(value):
        return None, "INF_POS" if value > 0 else "INF_NEG"
    return value, "FINITE"


def from_stored(value: float | None, kind: str) -> float:
    return _SPECIAL[kind] if kind in _SPECIAL else value


def trial_id(trial: optuna.Trial | optuna.trial.FrozenTrial) -> int:
    return trial._trial_id


def study_id(study: optuna.Study) -> int:
    return study._study_id


OPTUNA_TABLES = {"studies", "study_directions", "study_user_attributes", "study_system_attributes", "trials",
                 "trial_params", "trial_values", "trial_intermediate_values", "trial_user_attributes",
                 "trial_system_attributes", "trial_heartbeats", "version_info", "alembic_version"}


def schema_state(engine: sa.Engine, described: str) -> str:
    """"blank" (no tables at all: a new database), "empty" (no Optuna tables), "partial"
    (some, all Optuna's) or "optuna" (complete, schema version checked); a database whose
    tables clash with Optuna's is refused, naming it as ``described``."""
    with engine.connect() as connection:
        tables = set(sa.inspect(connection).get_table_names())
        present = tables & OPTUNA_TABLES
        if not present:
            return "empty" if tables else "blank"
        for table in present & {"studies", "trials", "version_info"}:
            expected = set(_meta.tables[table].columns.keys())
            # The columns a query names (the inspector's reflection of them took 30-50 ms).
            if not expected <= set(connection.exec_driver_sql(f"SELECT * FROM {table} WHERE 1 = 0").keys()):
                raise StorageError(f"{described} has a table {table!r} that is not Optuna's; "
                                   f"point --storage at a separate database")
        if present != OPTUNA_TABLES:
            return "partial"
        version = connection.execute(sa.select(version_info.c.schema_version)).scalar()
    if version != SCHEMA_VERSION:
        raise StorageError(f"{described} has Optuna schema version {version}; this project "
                           f"reads version {SCHEMA_VERSION} (Optuna 5): upgrade it with `optuna storage upgrade`")
    return "optuna"


def _utcnow() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)  # Optuna 5 stores naive UTC


def _now(connection: sa.Connection) -> Any:
    """When a trial starts or ends, by one clock for every host: PostgreSQL's (naive UTC,
    as Optuna stores times). Workers on hosts whose clocks disagree would otherwise write
    a start by one clock and an end by another (a trial that ends before it starts).
    SQLite serves the processes of one host: its clock."""
    if connection.dialect.name == "postgresql":
        return sa.func.timezone("UTC", sa.func.now())
    return _utcnow()


def database_now(engine: sa.Engine) -> datetime:
    """The clock trials are timed by (``_now``), read."""
    with engine.connect() as connection:
        now = _now(connection)
        return now if isinstance(now, datetime) else connection.execute(sa.select(now)).scalar()


def _insert(connection: sa.Connection) -> Any:
    from sqlalchemy.dialects import postgresql, sqlite  # writes only: readers need neither

    return (postgresql if connection.dialect.name == "postgresql" else sqlite).insert


def _set_attrs(connection: sa.Connection, table: sa.Table, target: int, values: dict[str, Any],
               encoded: bool = False) -> None:
    """Upsert attrs of the trial (or study: the table's first column says) ``target``."""
    owner = next(iter(table.c.keys()))
    for key, value in values.items():
        upsert = _insert(connection)(table).values(
            {owner: target, "key": key, "value_json": value if encoded else json.dumps(value)})
        connection.execute(upsert.on_conflict_do_update(index_elements=[owner, "key"],
                                                        set_={"value_json": upsert.excluded.value_json}))


# Optuna indexes trials by study only. Claims look for a WAITING trial and stale checks
# for RUNNING ones, and a new trial takes the next number: with these indexes none of
# them reads the study's finished trials; a study's progress counts its ended trials
# that are not COMPLETE from an index (COMPLETE is the rest). The best trials (Optuna's best_trial, status,
# best, the dashboard's cut) are found by walking values in order, not by sorting them all:
# 50 ms -> 0.5 ms on a study of 100,000.
INDEXES = {
    "hpsearch_trials_unfinished": "trials (study_id, state, trial_id) WHERE state IN ('WAITING', 'RUNNING')",
    "hpsearch_trials_number": "trials (study_id, number)",
    "hpsearch_trials_ended": "trials (study_id, state) WHERE state IN ('FAIL', 'PRUNED')",
    "hpsearch_values_best": "trial_values (objective, value)",
}


def missing_indexes(engine: sa.Engine) -> list[str]:
    inspector = sa.inspect(engine)
    tables = {definition.split(" ", 1)[0] for definition in INDEXES.values()}
    found = {index["name"] for table in tables for index in inspector.get_indexes(table)}
    return [name for name in INDEXES if name not in found]


def has_indexes(engine: sa.Engine) -> bool:
    return not missing_indexes(engine)


def create_indexes(engine: sa.Engine) -> None:
    """Add the missing ones of this project's indexes to Optuna's tables (the caller holds
    the schema lock). Each in a transaction of its own, and none that exists: CREATE INDEX
    locks its table against writes (IF NOT EXISTS too, before it looks), and one
    transaction holding that lock on ``trials`` while it waits for ``trial_values`` deadlocks
    with a running worker's finish, which writes ``trial_values`` and then ``trials``. A
    role that may not create them (not the tables' owner) still works, only slower."""
    for name in missing_indexes(engine):
        try:
            with engine.begin() as connection:
                connection.exec_driver_sql(f"CREATE INDEX IF NOT EXISTS {name} ON {INDEXES[name]}")
        except sa.exc.DBAPIError:
            pass
