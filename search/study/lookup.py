"""Which study a command means: the one named, else the storage's only study; one line
when there is none. Shared by the commands that load a study through Optuna
(``join.load_existing``) and those that read it without (``find_study``: status, best).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from search.errors import UserError

if TYPE_CHECKING:
    from search.storage import Reading
    from search.storage.optuna_adapter import StudyRecord

NO_STUDY = ("this storage holds no study yet; start one with search run or search worker, "
            "or check --storage")


def only(names: list[str]) -> str | None:
    """The storage's one study of ``names``, None if it holds none; several is one line."""
    if len(names) > 1:
        raise UserError(f"this storage holds {len(names)} studies ({', '.join(names)}); pass --study NAME "
                        f"(or set SEARCH_STUDY)")
    return names[0] if names else None


def missing(name: str, names: list[str]) -> UserError:
    return UserError(f"no study named {name!r} in this storage (studies: {', '.join(names) or 'none'}); "
                     f"check --study and --storage")


def find_study(reading: Reading, name: str | None) -> StudyRecord:
    """The study called ``name`` (with no name, the storage's only study), read without Optuna."""
    if name is None:
        name = only(reading.study_names())
        if name is None:
            raise UserError(NO_STUDY)
    study = reading.study(name)
    if study is None:
        raise missing(name, reading.study_names())
    return study
