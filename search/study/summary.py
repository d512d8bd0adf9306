"""What a finished study says about its trials: the best one, epochs, the whole time of a
slot across its attempts. Shared by ``best``, ``report`` and ``status``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from search import keys
from search.errors import UserError

if TYPE_CHECKING:  # these functions read trials and studies by attribute: records do as well
    import optuna
    from optuna.trial import FrozenTrial


def best_or_none(study: optuna.Study) -> FrozenTrial | None:
    """The best completed trial (one query: Optuna's ``best_trial``), or None."""
    try:
        return study.best_trial
    except ValueError:  # no completed trial
        return None


def best_trial(study: optuna.Study) -> FrozenTrial:
    best = best_or_none(study)
    if best is None:
        raise no_completed_trial(study.study_name)
    return best


def no_completed_trial(study_name: str) -> UserError:
    return UserError(f"study {study_name!r} has no completed trial yet; "
                     f"let the workers finish one (see: search status --study {study_name})")


def epochs_run(trial: FrozenTrial) -> int:
    return max(trial.intermediate_values, default=0)


def slot_time(trial: FrozenTrial, by_number: dict[int, FrozenTrial]) -> tuple[float | None, int]:
    """Seconds and attempts of the trial's slot: a trial that continues failed attempts (a
    dead worker's, resumed from their checkpoint) took all of their time too, and
    ``retry_history`` lists them."""
    attempts = [by_number[number] for number in attempts_of(trial) if number in by_number]
    # Never negative: trials timed by different hosts' clocks (before they were timed by
    # the database's) may end before they start.
    seconds = [max(0.0, attempt.duration.total_seconds()) for attempt in attempts if attempt.duration]
    return (sum(seconds) if seconds else None), len(attempts)


def attempts_of(trial: FrozenTrial) -> set[int]:
    """The numbers of the trials of ``trial``'s slot: its own and its failed attempts'."""
    return {*trial.system_attrs.get(keys.RETRY_HISTORY, []), trial.number}


def trial_summary(study: optuna.Study, trial: FrozenTrial,
                  earlier: dict[int, FrozenTrial] | None = None) -> dict[str, Any]:
    """``earlier``: the study's trials by number, at least ``attempts_of(trial)`` (a big
    study's caller reads just those); by default every trial."""
    if earlier is None:
        earlier = {other.number: other for other in study.get_trials(deepcopy=False)}
    seconds, attempts = slot_time(trial, earlier)
    return {
        "study": study.study_name, "trial_number": trial.number, "validation_accuracy": trial.value,
        "params": trial.params, "epochs": epochs_run(trial), "duration_s": seconds, "attempts": attempts,
        "objective": study.user_attrs.get(keys.DATASET),
    }
