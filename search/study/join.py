"""One shared study: finding it, describing it, and joining it race-free.

The budget is a study user attr (``n_trials``): the number of trials that must finish
(complete, pruned, or failed by an error in training). Workers never pre-create them:
``Slots.claim`` creates a trial only while the budget has room, and a trial whose worker
died or stopped is continued by the one retry ``Slots.requeue`` queues in the same
transaction, so N workers finish exactly N trials. ``--n-trials`` raises the budget of
an existing study (never lowers it); a worker without it takes the study's.
"""

from __future__ import annotations

import contextlib
import warnings
from typing import TYPE_CHECKING

import optuna

from search import keys
from search.errors import UserError
from search.storage.locks import named_lock
from search.storage.optuna_adapter import study_id
from search.study import lookup
from search.study.compatibility import check_compatible
from search.study.pruner import DEFAULT_PRUNER, make_pruner
from search.study.spec import DEFAULT_BUDGET, DEFAULT_DATASET, StudySpec

if TYPE_CHECKING:
    from search.storage.resilient import ResilientStorage


def study_lock(storage: ResilientStorage, study_name: str) -> contextlib.AbstractContextManager[None]:
    return named_lock(storage.policy.url, f"study-{study_name}", engine=storage.transactions)


def load_existing(storage: optuna.storages.BaseStorage, name: str | None,
                  sampler: optuna.samplers.BaseSampler | None = None) -> optuna.Study:
    """The study called ``name``; with no name, the storage's only study (what a user of
    one study means by ``search report``)."""
    if name is None:
        name = only_study(storage)
        if name is None:
            raise UserError(lookup.NO_STUDY)
    try:
        return optuna.load_study(study_name=name, storage=storage, sampler=sampler, pruner=make_pruner())
    except KeyError:
        raise lookup.missing(name, optuna.study.get_all_study_names(storage)) from None


def only_study(storage: optuna.storages.BaseStorage) -> str | None:
    """The name of the storage's one study, None if it holds none; several is one line."""
    return lookup.only(optuna.study.get_all_study_names(storage))


def find_study(storage: optuna.storages.BaseStorage, name: str) -> optuna.Study | None:
    # Names only: the summaries would also find every study's best trial.
    if name not in optuna.study.get_all_study_names(storage):
        return None
    return load_existing(storage, name)


def study_to_join(storage: optuna.storages.BaseStorage, dataset: str | None) -> str:
    """The study a worker without ``--study`` joins: one named after ``--objective`` if
    given; else the storage's only study (the one a user of one study means), or in an
    empty storage a new one named after the default data set."""
    if dataset is not None:
        return dataset
    return only_study(storage) or DEFAULT_DATASET


def describe_study(study: optuna.Study, spec: StudySpec) -> None:
    from objectives.space import load_space  # torch: only a worker describes a study

    study.set_user_attr(keys.DATASET, spec.dataset)
    study.set_user_attr(keys.EPOCHS, spec.epochs)
    study.set_user_attr(keys.SPACE, spec.space or load_space(None, spec.dataset))
    study.set_user_attr(keys.PRUNER, spec.pruner or DEFAULT_PRUNER)
    if spec.data_options:
        study.set_user_attr(keys.DATA_OPTIONS, dict(spec.data_options))
    if spec.data is not None:
        study.set_user_attr(keys.DATA, dict(spec.data))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names([keys.METRIC_NAME])


def join_study(storage: ResilientStorage, spec: StudySpec) -> tuple[optuna.Study, int, str]:
    """Create or load the study, check it fits ``spec``, raise its budget, register a worker;
    first, in a storage without them, Optuna's tables are created.

    Returns the study, this worker's index and the study's token for its files in the
    artifact store. Only a join that has something to set up (create or describe the
    study, raise its budget, make its token) takes the study's lock; the rest only read
    and take an index (one statement), so hundreds of workers starting together do not
    queue behind one lock.
    """
    n_trials = spec.n_trials

    def settled(study: optuna.Study | None) -> bool:
        if study is None or keys.DATASET not in study.user_attrs:
            return False
        budget = study.user_attrs.get(keys.BUDGET)
        has_token = keys.TOKEN in storage.get_study_system_attrs(study_id(study))
        return has_token and budget is not None and (n_trials is None or budget >= n_trials)

    def set_up() -> None:
        with study_lock(storage, spec.name):
            study = find_study(storage, spec.name)
            if study is None:
                study = optuna.create_study(study_name=spec.name, storage=storage, direction="maximize",
                                            pruner=make_pruner())
                describe_study(study, spec)
            elif keys.DATASET not in study.user_attrs and not study.get_trials(deepcopy=False):
                describe_study(study, spec)  # created by a join that died before describing it
            check_compatible(study, spec)
            budget = study.user_attrs.get(keys.BUDGET)
            if budget is None or (n_trials is not None and n_trials > budget):
                study.set_user_attr(keys.BUDGET, n_trials or DEFAULT_BUDGET)
            if keys.TOKEN not in storage.get_study_system_attrs(study_id(study)):
                storage.set_study_system_attr(study_id(study), keys.TOKEN, keys.new_token())

    storage.prepare()
    study = find_study(storage, spec.name)
    if not settled(study):
        # Only the lock's own connection errors reach this retry (storage calls retry inside).
        storage.policy.retrying(set_up)
        study = load_existing(storage, spec.name)
    check_compatible(study, spec)
    index = storage.slots(study).register_worker()
    token = storage.get_study_system_attrs(study_id(study))[keys.TOKEN]
    return study, index, token
