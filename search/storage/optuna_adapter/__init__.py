"""Every contact with Optuna beyond its public API, in this one package: the innermost
module of the storage layer (it imports nothing of this project but ``search.keys`` and
``search.errors``).

The rest of ``search/`` uses public Optuna and this package (its modules: ``schema``,
Optuna's tables; ``slots``, the slot transitions; ``writes``, a running trial's writes;
``tpe``, the sampler's history and TPE's log Phi; ``results``, what the result commands
read; ``reader``, a read-only storage for them without Optuna's ORM; ``records``, a study's trials and
progress as plain records, read without importing Optuna at all (status, best); ``bulk``, whole trials
stored at once for tests and benches). Each private touch,
and why no public call does the job:

* ``_CachedStorage`` wraps the ``RDBStorage`` under ``search.storage.resilient.ResilientStorage`` for whole-study
  reads of a storage opened for writing (a worker's); the read-only commands (status, best,
  report, the dashboard) read through ``Reader`` instead. Optuna applies it to a bare ``RDBStorage`` itself
  (``optuna.storages.get_storage``); a storage wrapper of our own would lose it.
* ``trial._trial_id`` / ``study._study_id``: storage calls take ids; the public lookup
  (``get_trial_id_from_study_id_trial_number``) costs a query for what the object knows.
* ``optuna.Trial(study, trial_id)``: ``Study.ask`` builds its trial this way after
  popping a WAITING trial or creating one; ``claim`` does that step itself (below), so
  it builds the trial the same way. ``study._storage`` there is the worker's
  ``ResilientStorage``, told which trial it now runs (``search.storage.own_trials``).
* ``RDBStorage._get_trials(study_id, states, included_ids, greater_than)``: reads only
  new trials and the given ones: the unfinished trials whose state changed, found by one
  query on the trials table (``changed_trials``); the public ``get_all_trials`` reads,
  sorts and copies every trial each time.
* ``optuna.study._frozen.FrozenStudy``: what ``Reader.get_all_studies`` returns, as
  ``RDBStorage`` does; ``optuna.study`` does not export the class.
* ``StudyView`` overrides ``Study._get_trials``, which Optuna's samplers call to read
  history, so that TPE fits a bounded part of it (``search.study.sampler.BoundedSampler``).
* ``_truncnorm._log_ndtr``: TPE evaluates log Phi element by element in Python; with a
  few hundred trials that was most of a trial's sampling time (530,000 calls for 10
  trials at 1,000). ``log_ndtr`` is the same function on whole arrays (agreeing to
  3e-15, tests/test_sampling.py); ``faster_tpe`` puts it in place only while the
  worker's sampler runs, never process-wide.
* ``RDBStorage.engine`` and Optuna's table schema (version 12), through SQLAlchemy Core,
  for operations that must each be one transaction, which no public call is:

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
    The claim counts slots from an index and a counter (``hpsearch:continued``) and
    finds WAITING trials through an index of its own on unfinished trials.
  - ``write_own``: what a worker writes to its running trial (parameters, attributes,
    an intermediate value) in one transaction; ``RDBStorage`` takes one per item, with
    lookups, one of which grows with the study. ``TrialIntermediateValueModel`` gives
    Optuna's stored form of an intermediate value (inf, nan).
  - ``finish_own``: a worker's trial ends as ``set_trial_state_values`` ends it, but timed
    by the database's clock, which timed its start too: ``RDBStorage`` writes the end by
    the finishing host's clock, and hosts' clocks disagree (``TrialValueModel`` gives the
    stored form of a value). ``database_now`` reads that clock, for ``status``.
  - ``Results``: counts, the best trials' ids, failure reasons by SQL aggregates, and
    trials (a few, the dashboard's cut, every one for the report's CSV) by one Core
    query per table, where ``get_all_trials`` builds each trial through the ORM, ten
    times slower; ``Reader``, the same reads behind Optuna's storage interface, so that
    ``status``, ``best`` and ``report`` load a study without the ORM and alembic
    (``schema.to_stored`` writes Optuna's stored form of values for the same reason); ``add_trials`` (``bulk``) the
    other way round, for tests and benches.
  - ``unregister_artifact``: Optuna lists artifacts in trial system attrs and has no call
    to remove an entry; weights deleted by ``--keep-best`` must leave the dashboard's
    list too. ``register_artifact`` writes the same entry ``upload_artifact`` does, but
    after the file is complete (``upload_artifact`` lists it before writing it).
"""

from __future__ import annotations

import importlib
import json
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from search import keys
from search.storage.optuna_adapter.records import Progress, StudyRecord, TrialRecord, read_progress, read_records
from search.storage.optuna_adapter.schema import (
    SCHEMA_VERSION, create_indexes, database_now, has_indexes, schema_state, study_id, trial_id,
)

if TYPE_CHECKING:
    import optuna
    from optuna.storages import RDBStorage
    from optuna.trial import FrozenTrial

    from search.storage.optuna_adapter.reader import Reader
    from search.storage.optuna_adapter.results import Results
    from search.storage.optuna_adapter.slots import MAX_CRASHES, References, Retrying, Slots
    from search.storage.optuna_adapter.tpe import STOCK_LOG_NDTR, StudyView, changed_trials, faster_tpe, log_ndtr
    from search.storage.optuna_adapter.writes import OwnWrite, finish_own, write_own

# The modules that import Optuna are loaded on first use of a name of theirs: ``records``
# and ``schema`` read a study without it (``search status``, ``search best``).
_HOMES = {"Reader": "reader", "Results": "results", "MAX_CRASHES": "slots", "References": "slots",
          "Retrying": "slots", "Slots": "slots", "STOCK_LOG_NDTR": "tpe", "StudyView": "tpe",
          "changed_trials": "tpe", "faster_tpe": "tpe", "log_ndtr": "tpe", "OwnWrite": "writes",
          "finish_own": "writes", "write_own": "writes"}

__all__ = ["MAX_CRASHES", "SCHEMA_VERSION", "STOCK_LOG_NDTR", "OwnWrite", "Progress", "Reader", "References", "Results",
           "Retrying", "Slots", "StudyRecord", "StudyView", "TrialRecord", "cached", "changed_trials", "create_indexes",
           "database_now", "faster_tpe", "finish_own", "has_indexes", "log_ndtr", "open_trial", "read_progress",
           "read_records", "register_artifact", "schema_state", "study_id", "trial_id", "write_own"]


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_HOMES[name]}"), name)


def cached(rdb: RDBStorage | Reader) -> optuna.storages.BaseStorage:
    """The storage whole-study reads go through: Optuna's trial cache over an
    ``RDBStorage``; a ``Reader`` as it is (it builds every trial afresh)."""
    from optuna.storages._cached_storage import _CachedStorage

    from search.storage.optuna_adapter.reader import Reader

    return rdb if isinstance(rdb, Reader) else _CachedStorage(rdb)


def open_trial(study: optuna.Study, claimed_id: int, claimed: FrozenTrial | None = None) -> optuna.Trial:
    """The ``Trial`` of a claimed trial; ``claimed`` is that trial as just read, which the
    storage then keeps up to date in memory (``search.storage.own_trials``)."""
    import optuna

    if claimed is not None:
        study._storage.own.adopt(claimed_id, study._study_id, claimed)
    return optuna.Trial(study, claimed_id)


def register_artifact(storage: optuna.storages.BaseStorage, owner_trial_id: int, artifact_id: str,
                      filename: str) -> None:
    from optuna.artifacts import ArtifactMeta  # it imports boto3 where installed: 0.2 s every command paid

    meta = ArtifactMeta(artifact_id=artifact_id, filename=filename, mimetype="application/octet-stream",
                        encoding=None)
    storage.set_trial_system_attr(owner_trial_id, keys.ARTIFACTS_PREFIX + artifact_id, json.dumps(asdict(meta)))
