"""``search best``: the best trial, its model file (``--export``), and retraining it on
train+validation with its test accuracy (``--retrain``). Only reads the storage."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sqlalchemy.engine import URL

from search.storage import open_reading
from search.storage.optuna_adapter import StudyRecord, TrialRecord
from search.study.lookup import find_study
from search.study.summary import attempts_of, no_completed_trial, trial_summary
from search.wording import counted


def show(study: StudyRecord, trial: TrialRecord, summary: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(summary, indent=2))
        return
    attempts = f" over {summary['attempts']} attempts" if summary["attempts"] > 1 else ""
    print(f"best trial {trial.number} of study {study.study_name!r}: val_acc {trial.value:.2%} "
          f"after {counted(summary['epochs'], 'epoch')} in {summary['duration_s'] or 0:.0f} s{attempts}")
    for key, value in trial.params.items():
        print(f"  {key} = {value}")


def best(storage: URL, study_name: str | None, artifacts: str, data_dir: str | None, device: str,
         precision: str, as_json: bool, export: str | None, force: bool, retrained: bool) -> int:
    path = Path(export) if export is not None else None
    if path is not None:
        from objectives.training.device import choose_device
        from search.commands import exports

        exports.check_writable(path, force)
        if retrained:
            choose_device(device)  # refused before anything is read
    reading = open_reading(storage)  # no Optuna: its import would be a third of a plain `search best`
    study = find_study(reading, study_name)
    results = reading.results(study)
    trial = results.best(study.maximize)
    if trial is None:
        raise no_completed_trial(study.study_name)
    summary = trial_summary(study, trial, results.by_numbers(attempts_of(trial)))
    show(study, trial, summary, as_json)
    if path is None:
        return 0
    from search.commands.best_model import export  # torch: only for a model file

    return export(study, trial, summary, path, artifacts, data_dir, device, precision, as_json, retrained)
