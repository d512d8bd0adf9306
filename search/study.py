"""One shared study: race-free joining, a study-wide trial budget, compatibility checks.

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
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.study import StudyDirection

from search import keys, optuna_adapter
from search.artifacts import new_token
from search.errors import UserError
from search.locking import named_lock
from search.options import DEFAULT_BUDGET, DEFAULT_EPOCHS, DEFAULT_OBJECTIVE
from search.pruners import DEFAULT_PRUNER, make_pruner
from search.storage import ResilientStorage
from search.wording import counted


@dataclass(frozen=True)
class StudySpec:
    name: str
    objective: str
    epochs: int
    space: dict[str, Any] | None = None  # from --space; None: the study's own (the default for a new one)
    pruner: str | None = None  # from --pruner; None: the study's own (median for a new one)


def study_lock(storage: ResilientStorage, study_name: str) -> contextlib.AbstractContextManager[None]:
    return named_lock(storage.database.url, f"study-{study_name}", engine=storage.transactions)


def worker_seed(base_seed: int, index: int) -> int:
    """Worker ``index``'s sampler seed: workers must not propose the same trials."""
    return (base_seed + index) % 2**32


def make_sampler(seed: int | None, gamma: Callable[[int], int] | None = None) -> optuna.samplers.BaseSampler:
    """The study's TPE; ``gamma`` sizes its "good" set (Optuna's default if None)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        # ``gamma`` is deprecated since Optuna 4.9, to go in 6 (pyproject keeps optuna<6): the
        # bounded sampler needs it to size TPE's good set from the whole history.
        warnings.simplefilter("ignore", FutureWarning)
        # constant_liar: running trials count as bad guesses, so parallel workers spread out.
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True, constant_liar=True,
                                          gamma=gamma)


def load_existing(storage: optuna.storages.BaseStorage, name: str | None,
                  sampler: optuna.samplers.BaseSampler | None = None) -> optuna.Study:
    """The study called ``name``; with no name, the storage's only study (what a user of
    one study means by ``search status``)."""
    if name is None:
        name = only_study(storage)
        if name is None:
            raise UserError("this storage holds no study yet; start one with search run or search worker, "
                            "or check --storage")
    try:
        return optuna.load_study(study_name=name, storage=storage, sampler=sampler, pruner=make_pruner())
    except KeyError:
        known = optuna.study.get_all_study_names(storage)
        raise UserError(
            f"no study named {name!r} in this storage (studies: {', '.join(known) or 'none'}); "
            f"check --study and --storage"
        ) from None


def only_study(storage: optuna.storages.BaseStorage) -> str | None:
    """The name of the storage's one study, None if it holds none; several is one line."""
    known = optuna.study.get_all_study_names(storage)
    if len(known) > 1:
        raise UserError(f"this storage holds {len(known)} studies ({', '.join(known)}); pass --study NAME "
                        f"(or set SEARCH_STUDY)")
    return known[0] if known else None


def drop_to_inherit(option: str) -> str:
    """The fix for a setting that differs from the study's: without it a worker takes the study's."""
    return (f"drop --{option} (and SEARCH_{option.upper()}) to take the study's, or choose another "
            f"--study name")


def check_compatible(study: optuna.Study, spec: StudySpec) -> None:
    """Refuse to mix trials of another objective, direction or epoch count into a study."""
    if study.directions != [StudyDirection.MAXIMIZE]:
        raise UserError(
            f"study {spec.name!r} exists with direction {study.directions[0].name.lower()}, but "
            f"validation accuracy is maximised; choose another --study name"
        )
    recorded = study.user_attrs.get(keys.OBJECTIVE)
    if recorded is None:
        if not study.get_trials(deepcopy=False):
            return  # created by a join that died before describing it: the next join describes it
        raise UserError(f"study {spec.name!r} holds trials that search did not make (no objective recorded); "
                        f"choose another --study name")
    if recorded != spec.objective:
        raise UserError(
            f"study {spec.name!r} exists with objective {recorded!r}, not {spec.objective!r}; "
            f"{drop_to_inherit('objective')}"
        )
    epochs = study.user_attrs.get(keys.EPOCHS)
    if epochs != spec.epochs:
        raise UserError(
            f"study {spec.name!r} trains {counted(epochs, 'epoch')} per trial, not {spec.epochs}; "
            f"{drop_to_inherit('epochs')}"
        )
    if spec.pruner is not None and (recorded_pruner := study_pruner(study)) != spec.pruner:
        raise UserError(
            f"study {spec.name!r} prunes with {recorded_pruner}, not {spec.pruner}; {drop_to_inherit('pruner')}"
        )
    if spec.space is not None and (recorded_space := study_space(study)) != spec.space:
        differs = next(name for name in [*recorded_space, *spec.space]
                       if recorded_space.get(name) != spec.space.get(name))
        raise UserError(
            f"study {spec.name!r} samples another search space than --space gives ([{differs}] is "
            f"{recorded_space.get(differs)} there, {spec.space.get(differs)} in the file); "
            f"{drop_to_inherit('space')}"
        )


def find_study(storage: optuna.storages.BaseStorage, name: str) -> optuna.Study | None:
    # Names only: the summaries would also find every study's best trial.
    if name not in optuna.study.get_all_study_names(storage):
        return None
    return load_existing(storage, name)


def study_to_join(storage: optuna.storages.BaseStorage | None, objective: str | None) -> str:
    """The study a worker without ``--study`` joins: one named after ``--objective`` if
    given; else the storage's only study (the one a user of one study means), or in an
    empty storage a new one named after the default objective."""
    if objective is not None:
        return objective
    return (only_study(storage) if storage is not None else None) or DEFAULT_OBJECTIVE


def inherit(recorded: dict[str, Any], objective: str | None, epochs: int | None) -> tuple[str, int]:
    """``--objective`` and ``--epochs``, where not given, from the study's recorded user
    attrs (or for a new study the defaults): ``search worker --study NAME`` just joins."""
    return (objective or recorded.get(keys.OBJECTIVE, DEFAULT_OBJECTIVE),
            epochs or recorded.get(keys.EPOCHS, DEFAULT_EPOCHS))


def study_space(study: optuna.Study) -> dict[str, Any]:
    """The space the study samples: stored with it (studies from before the space file
    sampled what was then the default, kept as ``space.UNSTORED_FILE``)."""
    from objectives.space import UNSTORED_FILE, load_space  # here: read-only commands never need torch

    return study.user_attrs.get(keys.SPACE) or load_space(UNSTORED_FILE, study.user_attrs.get(keys.OBJECTIVE))


def study_pruner(study: optuna.Study) -> str:
    """The study's pruner (studies from before the choice existed used the median rule)."""
    return study.user_attrs.get(keys.PRUNER, DEFAULT_PRUNER)


def describe_study(study: optuna.Study, spec: StudySpec) -> None:
    from objectives.space import load_space

    study.set_user_attr(keys.OBJECTIVE, spec.objective)
    study.set_user_attr(keys.EPOCHS, spec.epochs)
    study.set_user_attr(keys.SPACE, spec.space or load_space(None, spec.objective))
    study.set_user_attr(keys.PRUNER, spec.pruner or DEFAULT_PRUNER)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names([keys.METRIC_NAME])


def join_study(storage: ResilientStorage, spec: StudySpec, n_trials: int | None,
               base_seed: int) -> tuple[optuna.Study, int, str]:
    """Create or load the study, check it fits ``spec``, raise its budget, register a worker.

    Returns the study (with a sampler seeded by base seed + worker index), the index, and
    the study's token for its files in the artifact directory. Only a join that has
    something to set up (create or describe the study, raise its budget, make its token)
    takes the study's lock; the rest only read and take an index (one statement), so
    hundreds of workers starting together do not queue behind one lock.
    """

    def settled(study: optuna.Study | None) -> bool:
        if study is None or keys.OBJECTIVE not in study.user_attrs:
            return False
        budget = study.user_attrs.get(keys.BUDGET)
        has_token = keys.TOKEN in storage.get_study_system_attrs(optuna_adapter.study_id(study))
        return has_token and budget is not None and (n_trials is None or budget >= n_trials)

    def set_up() -> None:
        with study_lock(storage, spec.name):
            study = find_study(storage, spec.name)
            if study is None:
                study = optuna.create_study(study_name=spec.name, storage=storage, direction="maximize",
                                            pruner=make_pruner())
                describe_study(study, spec)
            elif keys.OBJECTIVE not in study.user_attrs and not study.get_trials(deepcopy=False):
                describe_study(study, spec)  # created by a join that died before describing it
            check_compatible(study, spec)
            budget = study.user_attrs.get(keys.BUDGET)
            if budget is None or (n_trials is not None and n_trials > budget):
                study.set_user_attr(keys.BUDGET, n_trials or DEFAULT_BUDGET)
            study_id = optuna_adapter.study_id(study)
            if keys.TOKEN not in storage.get_study_system_attrs(study_id):
                storage.set_study_system_attr(study_id, keys.TOKEN, new_token())

    study = find_study(storage, spec.name)
    if not settled(study):
        # Only the lock's own connection errors reach this retry (storage calls retry inside).
        storage.database.retrying(set_up)
        study = load_existing(storage, spec.name)
    check_compatible(study, spec)
    index = storage.slots(study).register_worker()
    token = storage.get_study_system_attrs(optuna_adapter.study_id(study))[keys.TOKEN]
    study.sampler = make_sampler(worker_seed(base_seed, index))
    return study, index, token
