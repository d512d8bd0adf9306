"""Putting a worker together: everything is checked before the first write.

In order: the storage is opened once (reachable, Optuna's schema, nothing written); the
study is looked up and the request settled against it (``search.study.spec.settle``)
and checked for compatibility; the data is read and checked; the artifact store is
proven writable. Only then is the study joined (Optuna's tables created first in a new
storage), and the artifact store made. Bad input at any step is one line, and nothing was written.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import optuna

from search.artifacts import ArtifactStore
from search.artifacts import backend as artifact_backend
from search.storage import ResilientStorage, open_storage
from search.study.compatibility import check_compatible, check_same_data, study_space
from search.study.history import History
from search.study.join import find_study, join_study, study_to_join
from search.study.pruner import make_pruner, study_pruner
from search.study.sampler import BoundedSampler, worker_seed
from search.study.spec import StudyRequest, StudySpec, settle
from search.worker.config import WorkerConfig
from search.worker.loop import Worker
from search.worker.signals import StopSignals, Voice
from search.worker.workload import Joined, Workload


def settled(storage: ResilientStorage, request: StudyRequest) -> tuple[StudySpec, optuna.Study | None]:
    """The study to join, every setting decided, and the study itself if it exists
    (refused here if it cannot take this worker's trials)."""
    name = request.name or study_to_join(storage, request.dataset)
    study = find_study(storage, name)
    spec = settle(request, name, study.user_attrs if study is not None else {})
    if study is not None:
        check_compatible(study, spec)  # before any slow set-up
    return spec, study


def assemble(config: WorkerConfig, request: StudyRequest, say: Callable[[str], None],
             workload: Workload | None = None) -> Worker:
    signals = StopSignals()
    voice = Voice(say, signals)
    storage = open_storage(config.storage, patience=config.db_patience, notify=voice, deferred=True,
                           reply_timeout=config.reply_timeout)
    spec, existing = settled(storage, request)
    if workload is None:
        from search.worker.training import Training  # torch is imported here, not for the loop

        workload = Training(config.data_dir, config.device, config.seed, config.checkpoint_every,
                            config.precision)
    spec = replace(spec, data=workload.check(spec))
    if existing is not None:
        check_same_data(existing, spec, config.data_dir)
    backend = artifact_backend(config.artifacts, config.reply_timeout)
    backend.check()

    study, index, token = join_study(storage, spec)  # the first write (a new storage's tables)
    backend.create()
    voice.tag = f"[worker {index}]"
    history = History(storage, study, seed=index)
    study.sampler = BoundedSampler.for_worker(history, worker_seed(config.seed, index))
    pruner = study_pruner(study)  # what every worker of the study prunes with
    study.pruner = make_pruner(pruner, spec.epochs, history)
    store = ArtifactStore(backend, token, config.db_patience, voice)
    objective = workload.objective(Joined(index, spec, study_space(study), store, voice))
    return Worker(config=config, spec=spec, storage=storage, study=study, slots=storage.slots(study), index=index,
                  store=store, history=history, pruner=pruner, objective=objective, device=workload.device,
                  precision=workload.precision,
                  say=voice, signals=signals)


def run_worker(config: WorkerConfig, request: StudyRequest, say: Callable[[str], None] = print,
               workload: Workload | None = None) -> Worker:
    worker = assemble(config, request, say, workload)
    worker.run()
    return worker
