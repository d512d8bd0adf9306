"""One shared study: race-free joining, a study-wide trial budget, claiming trials.

The budget is a set of slots: ``--n-trials N`` tops the study up (under a lock) to N
queued WAITING trials, and workers only ever claim queued trials, never create new ones,
so N workers finish exactly N trials. A trial failed by heartbeat is re-queued by Optuna's
retry callback as a continuation of the same slot (it carries ``failed_trial``).
"""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages import RDBStorage
from optuna.study import StudyDirection
from optuna.trial import TrialState
from sqlalchemy.engine import make_url

from search.errors import UserError
from search.locking import named_lock

OBJECTIVE_ATTR = "objective"
EPOCHS_ATTR = "epochs"
WORKER_COUNT_ATTR = "hpsearch:workers"
RETRY_OF = "failed_trial"  # set by Optuna's RetryHeartbeatStaleTrialCallback


@dataclass(frozen=True)
class StudySpec:
    name: str
    objective: str
    epochs: int


def study_lock(storage: RDBStorage, study_name: str) -> contextlib.AbstractContextManager[None]:
    return named_lock(make_url(storage.url), f"study-{study_name}", engine=storage.engine)


def make_sampler(seed: int | None) -> optuna.samplers.BaseSampler:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        # constant_liar: running trials count as bad guesses, so parallel workers spread out.
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True, constant_liar=True)


def make_pruner() -> optuna.pruners.BasePruner:
    return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=0, interval_steps=1)


def load_existing(storage: RDBStorage, name: str, sampler: optuna.samplers.BaseSampler | None = None,
                  ) -> optuna.Study:
    try:
        return optuna.load_study(study_name=name, storage=storage, sampler=sampler, pruner=make_pruner())
    except KeyError:
        known = [summary.study_name for summary in optuna.get_all_study_summaries(storage)]
        raise UserError(
            f"no study named {name!r} in this storage (studies: {', '.join(known) or 'none'}); "
            f"check --study and --storage"
        ) from None


def check_compatible(study: optuna.Study, spec: StudySpec) -> None:
    """Refuse to mix trials of another objective, direction or epoch count into a study."""
    if study.directions != [StudyDirection.MAXIMIZE]:
        raise UserError(
            f"study {spec.name!r} exists with direction {study.directions[0].name.lower()}, but "
            f"validation accuracy is maximised; choose another --study name"
        )
    recorded = study.user_attrs.get(OBJECTIVE_ATTR)
    if recorded != spec.objective:
        raise UserError(
            f"study {spec.name!r} exists with objective {recorded!r}, not {spec.objective!r}; "
            f"pass --objective {recorded} or choose another --study name"
        )
    epochs = study.user_attrs.get(EPOCHS_ATTR)
    if epochs != spec.epochs:
        raise UserError(
            f"study {spec.name!r} trains {epochs} epochs per trial, not {spec.epochs}; "
            f"pass --epochs {epochs} or choose another --study name"
        )


def check_existing(storage: RDBStorage, spec: StudySpec) -> optuna.Study | None:
    """The study named in ``spec`` if it exists and fits it (read-only); None if it does not exist.

    Workers call it once early, so a mismatch is reported before any slow set-up.
    """
    if spec.name not in {summary.study_name for summary in optuna.get_all_study_summaries(storage)}:
        return None
    study = load_existing(storage, spec.name)
    check_compatible(study, spec)
    return study


def join_study(storage: RDBStorage, spec: StudySpec, n_trials: int | None,
               base_seed: int) -> tuple[optuna.Study, int]:
    """Create or load the study, check it fits ``spec``, top up its budget, register a worker.

    Returns the study (with a sampler seeded by base seed + worker index) and the index.
    """
    with study_lock(storage, spec.name):
        study = check_existing(storage, spec)
        if study is None:
            study = optuna.create_study(study_name=spec.name, storage=storage, direction="maximize",
                                        pruner=make_pruner())
            study.set_user_attr(OBJECTIVE_ATTR, spec.objective)
            study.set_user_attr(EPOCHS_ATTR, spec.epochs)
        if n_trials is not None:
            top_up_budget(study, n_trials)
        index = int(storage.get_study_system_attrs(study._study_id).get(WORKER_COUNT_ATTR, 0))
        storage.set_study_system_attr(study._study_id, WORKER_COUNT_ATTR, index + 1)
    sampler = make_sampler(base_seed + index)
    return optuna.load_study(study_name=spec.name, storage=storage, sampler=sampler,
                             pruner=make_pruner()), index


def slots_used(study: optuna.Study) -> int:
    """Trials that hold a budget slot: every trial except the retries of a failed one."""
    return sum(RETRY_OF not in trial.system_attrs for trial in study.get_trials(deepcopy=False))


def top_up_budget(study: optuna.Study, n_trials: int) -> int:
    """Queue trials until the study holds ``n_trials`` slots; returns how many were added."""
    missing = max(0, n_trials - slots_used(study))
    for _ in range(missing):
        study.enqueue_trial({}, skip_if_exists=False)
    return missing


def claim_queued_trial(study: optuna.Study) -> optuna.Trial | None:
    """Atomically move one WAITING trial to RUNNING (as ``Study.ask`` does, minus creating one)."""
    storage = study._storage
    for trial in storage.get_all_trials(study._study_id, deepcopy=False, states=(TrialState.WAITING,)):
        try:
            if storage.set_trial_state_values(trial._trial_id, state=TrialState.RUNNING):
                return optuna.Trial(study, trial._trial_id)
        except UpdateFinishedTrialError:
            continue
    return None


def has_unfinished(study: optuna.Study) -> bool:
    return bool(study.get_trials(deepcopy=False, states=(TrialState.WAITING, TrialState.RUNNING)))
