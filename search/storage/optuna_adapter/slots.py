"""A study's slots: claim, requeue, progress, the artifact references. See the package
docstring for why these are transactions of their own."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import optuna
import sqlalchemy as sa
from optuna.trial import TrialState

from search import keys
from search.storage.optuna_adapter.records import Progress, continued_counts, read_progress
from search.storage.optuna_adapter.schema import (
    _insert, _now, _set_attrs, heartbeats, intermediate, params, studies, study_system_attrs, study_user_attrs,
    system_attrs, trials, user_attrs,
)

# How a slot transition is run: ``retrying(call, resolve)`` repeats ``call`` after a lost
# connection, first asking ``resolve`` whether the lost call's write happened (None: it did
# not). The storage's retry policy (``search.storage.failures.RetryPolicy.retrying``).
Retrying = Callable[..., Any]

MAX_CRASHES = 3  # stale failures of one slot before it starts over with fresh parameters


@dataclass(frozen=True)
class References:
    """What every trial of the storage still points at, for the artifact sweep."""

    checkpoints: set[str]  # files named by the pointer of a WAITING or RUNNING trial
    running: set[int]  # trial ids
    listed: set[str]  # artifact ids in any study's or trial's artifact list


class Slots:
    """A study's slot transitions, each one transaction; all safe to repeat after a lost reply."""

    def __init__(self, engine: sa.Engine, retrying: Retrying, study: optuna.Study) -> None:
        self.engine = engine
        self.retrying = retrying
        self.study_id = study._study_id

    def _current(self) -> Any:
        """The trials that are their slot's latest (not failed and continued by a successor)."""
        continued = sa.select(system_attrs.c.trial_id).where(
            system_attrs.c.trial_id == trials.c.trial_id, system_attrs.c.key == keys.CONTINUED_BY)
        return sa.and_(trials.c.study_id == self.study_id, ~sa.exists(continued))

    def _budget(self, connection: sa.Connection) -> int | None:
        value = connection.execute(sa.select(study_user_attrs.c.value_json).where(
            study_user_attrs.c.study_id == self.study_id, study_user_attrs.c.key == keys.BUDGET)).scalar()
        return None if value is None else int(json.loads(value))

    def register_worker(self) -> int:
        """A new worker's index: the study's worker counter, incremented in one statement, so
        joins need no lock. A retry after a lost reply may skip an index; none is ever shared."""

        def increment() -> int:
            counter = sa.cast(sa.cast(study_system_attrs.c.value_json, sa.Integer) + 1, sa.Text)
            with self.engine.begin() as connection:
                upsert = _insert(connection)(study_system_attrs).values(
                    study_id=self.study_id, key=keys.WORKERS, value_json="1")
                registered = connection.execute(upsert.on_conflict_do_update(
                    index_elements=["study_id", "key"], set_={"value_json": counter},
                ).returning(study_system_attrs.c.value_json)).scalar()
            return int(json.loads(registered)) - 1
        return self.retrying(increment)

    def progress(self) -> Progress:
        def read() -> Progress:
            with self.engine.connect() as connection:
                return read_progress(connection, self.study_id)
        return self.retrying(read)

    def claim(self, owner: str, labels: dict[str, str] | None = None) -> int | None:
        """Move the oldest WAITING trial, or a new one while the budget has room, to RUNNING
        with its first heartbeat, ``owner`` and ``labels`` (user attrs); returns its id, or
        None if there is none."""
        token = json.dumps(f"{owner}#{uuid.uuid4().hex}")

        def attempt() -> int | None:
            with self.engine.begin() as connection:
                claimed = connection.execute(
                    sa.select(trials.c.trial_id).where(trials.c.study_id == self.study_id,
                                                       trials.c.state == TrialState.WAITING)
                    .order_by(trials.c.trial_id).limit(1).with_for_update(skip_locked=True)).scalar()
                if claimed is not None:
                    connection.execute(trials.update().where(trials.c.trial_id == claimed).values(
                        state=TrialState.RUNNING, datetime_start=_now(connection)))
                else:
                    self._lock_study(connection)
                    budget = self._budget(connection)
                    # Slots opened: every trial but those continued by a successor. Both
                    # counts are cheap (an index, a counter): a claim costs the same at any
                    # study size.
                    used = self._count(connection) - self._continued(connection)
                    if budget is None or used >= budget:
                        return None
                    claimed = self._new_trial(connection, TrialState.RUNNING, start=_now(connection))
                upsert = _insert(connection)(heartbeats).values(trial_id=claimed, heartbeat=sa.func.now())
                connection.execute(upsert.on_conflict_do_update(index_elements=["trial_id"],
                                                                set_={"heartbeat": sa.func.now()}))
                _set_attrs(connection, system_attrs, claimed, {keys.OWNER: token}, encoded=True)
                _set_attrs(connection, user_attrs, claimed, labels or {})
                return claimed

        def resolve() -> int | None:
            with self.engine.connect() as connection:
                return connection.execute(sa.select(system_attrs.c.trial_id).where(
                    system_attrs.c.key == keys.OWNER, system_attrs.c.value_json == token)).scalar()

        return self.retrying(attempt, resolve)

    def requeue(self, failed_id: int, cause: keys.FailCause, stale_before: datetime | None = None) -> int | None:
        """Fail a RUNNING trial and queue its continuation in the same transaction.

        The continuation is a retry (same params, user attrs, intermediate values; the
        checkpoint pointer moves to it) or, once the slot has crashed MAX_CRASHES times, a
        fresh trial. ``cause`` STALE counts as a crash, STOPPED does not. With
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
                crashes = int(attrs.get(keys.CRASHES, 0)) + (cause == keys.FailCause.STALE)
                connection.execute(trials.update().where(trials.c.trial_id == failed_id).values(
                    state=TrialState.FAIL, datetime_complete=_now(connection)))
                # Weights listed just before the worker died: unlisted here, their file is swept.
                connection.execute(system_attrs.delete().where(
                    system_attrs.c.trial_id == failed_id, system_attrs.c.key.startswith(keys.ARTIFACTS_PREFIX),
                    system_attrs.c.value_json.contains(keys.WEIGHTS_SUFFIX)))
                number = self._queue_continuation(connection, failed_id, row.number, attrs, crashes)
                continued = self._continued(connection)  # read before this trial counts
                _set_attrs(connection, system_attrs, failed_id, {keys.CONTINUED_BY: number,
                                                                 keys.FAIL_CAUSE: keys.FailCause(cause).value})
                _set_attrs(connection, study_system_attrs, self.study_id, {keys.CONTINUED_COUNT: continued + 1})
                return number

        def resolve() -> int | None:
            with self.engine.connect() as connection:
                found = connection.execute(sa.select(system_attrs.c.value_json).where(
                    system_attrs.c.trial_id == failed_id, system_attrs.c.key == keys.CONTINUED_BY)).scalar()
            return None if found is None else json.loads(found)

        return self.retrying(attempt, resolve)

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
                           ~sa.exists(beaten) & (trials.c.datetime_start < _now(connection) - timedelta(seconds=grace_s))),
                )).all()
            return cutoff, [tuple(row) for row in stale]

        cutoff, stale = self.retrying(scan)
        return [number for trial_id_, number in stale
                if self.requeue(trial_id_, keys.FailCause.STALE, stale_before=cutoff) is not None]

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
                files = {pointer.file for value in pointers if (pointer := keys.Checkpoint.read(json.loads(value)))}
                return References(checkpoints=files, running=set(running),
                                  listed={key[len(keys.ARTIFACTS_PREFIX):] for key in listed})
        return self.retrying(read)

    def unregister_artifact(self, owner_trial_id: int, artifact_id: str) -> None:
        def delete() -> None:
            with self.engine.begin() as connection:
                connection.execute(system_attrs.delete().where(
                    system_attrs.c.trial_id == owner_trial_id,
                    system_attrs.c.key == keys.ARTIFACTS_PREFIX + artifact_id))
        self.retrying(delete)

    # --- inside a transaction -----------------------------------------------------
    def _queue_continuation(self, connection: sa.Connection, failed_id: int, failed_number: int,
                            attrs: dict[str, Any], crashes: int) -> int:
        """The failed trial's successor, WAITING: its retry (params, user attrs and
        intermediate values copied, the checkpoint pointer moved) or, past MAX_CRASHES, a
        fresh trial. Returns its number."""
        self._lock_study(connection)
        successor = self._new_trial(connection, TrialState.WAITING)
        pointer = (user_attrs.c.trial_id == failed_id) & (user_attrs.c.key == keys.CHECKPOINT)
        if crashes > MAX_CRASHES:
            connection.execute(user_attrs.delete().where(pointer))  # its file is swept
            new_attrs = {keys.REPLACES: failed_number}
        else:
            self._copy_rows(connection, failed_id, successor)
            connection.execute(user_attrs.update().where(pointer).values(trial_id=successor))
            new_attrs = {keys.FAILED_TRIAL: attrs.get(keys.FAILED_TRIAL, failed_number),
                         keys.RETRY_HISTORY: [*attrs.get(keys.RETRY_HISTORY, []), failed_number],
                         keys.CRASHES: crashes}
            if keys.FIXED_PARAMS in attrs:
                new_attrs[keys.FIXED_PARAMS] = attrs[keys.FIXED_PARAMS]
        _set_attrs(connection, system_attrs, successor, new_attrs)
        return connection.execute(sa.select(trials.c.number).where(trials.c.trial_id == successor)).scalar()

    def _lock_study(self, connection: sa.Connection) -> None:
        # The lock Optuna's own trial creation takes: trial numbers stay dense and unique.
        connection.execute(sa.select(studies.c.study_id).where(studies.c.study_id == self.study_id).with_for_update())

    def _count(self, connection: sa.Connection) -> int:
        """The study's trials: numbers are 0..n-1 (each new one takes the count, under the
        study lock), so the highest number, read from an index, says how many."""
        highest = connection.execute(sa.select(sa.func.max(trials.c.number)).where(
            trials.c.study_id == self.study_id)).scalar()
        return 0 if highest is None else highest + 1

    def _continued(self, connection: sa.Connection) -> int:
        """How many trials of the study are continued by a successor: a counter kept with
        the study (under the study lock), counted once for a study that has none yet."""
        counter, counted = continued_counts(self.study_id)
        value, stored = connection.execute(sa.select(sa.func.coalesce(counter, counted), counter)).one()
        if stored is None:
            _set_attrs(connection, study_system_attrs, self.study_id, {keys.CONTINUED_COUNT: value})
        return value

    def _new_trial(self, connection: sa.Connection, state: TrialState, start: Any = None) -> int:
        number = self._count(connection)
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
