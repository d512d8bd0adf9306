"""Whether a worker may join a study: the same data set, epochs, search space, pruner and
data, so that every trial of the study means the same thing."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import optuna
from optuna.study import StudyDirection

from search import keys
from search.errors import UserError
from search.study.pruner import study_pruner
from search.study.spec import StudySpec
from search.wording import counted


def drop_to_inherit(option: str) -> str:
    """The fix for a setting that differs from the study's: without it a worker takes the study's."""
    return (f"drop --{option} (and SEARCH_{option.upper()}) to take the study's, or choose another "
            f"--study name")


def study_space(study: optuna.Study) -> dict[str, Any]:
    """The space the study samples: stored with it (studies from before the space file
    sampled what was then the default, kept as ``space.UNSTORED_FILE``)."""
    from objectives.space import UNSTORED_FILE, load_space  # torch: read-only commands never need it

    return study.user_attrs.get(keys.SPACE) or load_space(UNSTORED_FILE, study.user_attrs.get(keys.DATASET))


def first_difference(recorded: Mapping[str, Any], given: Mapping[str, Any]) -> str:
    return next(name for name in [*recorded, *given] if recorded.get(name) != given.get(name))


def shortened(value: Any, most: int = 6) -> str:
    """A recorded value for a one-line message: a long list shows its first entries."""
    if isinstance(value, list) and len(value) > most:
        return f"[{', '.join(map(str, value[:most]))}, ... ({len(value)} in all)]"
    return str(value)


def check_compatible(study: optuna.Study, spec: StudySpec) -> None:
    """Refuse to mix trials of another data set, direction, epoch count, space, pruner or
    data options into a study."""
    if study.directions != [StudyDirection.MAXIMIZE]:
        raise UserError(
            f"study {spec.name!r} exists with direction {study.directions[0].name.lower()}, but "
            f"validation accuracy is maximised; choose another --study name"
        )
    recorded = study.user_attrs.get(keys.DATASET)
    if recorded is None:
        if not study.get_trials(deepcopy=False):
            return  # created by a join that died before describing it: the next join describes it
        raise UserError(f"study {spec.name!r} holds trials that search did not make (no objective recorded); "
                        f"choose another --study name")
    if recorded != spec.dataset:
        raise UserError(
            f"study {spec.name!r} exists with objective {recorded!r}, not {spec.dataset!r}; "
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
        differs = first_difference(recorded_space, spec.space)
        raise UserError(
            f"study {spec.name!r} samples another search space than --space gives ([{differs}] is "
            f"{recorded_space.get(differs)} there, {spec.space.get(differs)} in the file); "
            f"{drop_to_inherit('space')}"
        )
    recorded_options = study.user_attrs.get(keys.DATA_OPTIONS, {})
    if dict(spec.data_options) != recorded_options:
        option = first_difference(recorded_options, spec.data_options)
        raise UserError(
            f"study {spec.name!r} reads its data with --{option} {recorded_options.get(option)!r}, not "
            f"{spec.data_options.get(option)!r}; {drop_to_inherit(option)}"
        )


def check_same_data(study: optuna.Study, spec: StudySpec, data_dir: str | None) -> None:
    """Refuse a worker whose data file holds other columns or classes than the study's
    (for data sets described by their file): its trials would train another problem."""
    recorded = study.user_attrs.get(keys.DATA)
    if recorded is None or spec.data is None or dict(spec.data) == recorded:
        return
    part = first_difference(recorded, spec.data)
    raise UserError(
        f"study {spec.name!r} trains on data whose {part} are {shortened(recorded.get(part))}, but "
        f"{data_dir or 'the data'} holds {shortened(spec.data.get(part))}; point --data-dir at the study's data, "
        f"or choose another --study name"
    )
