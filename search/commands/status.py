"""``search status``: a text table of one study's progress. Only reads the storage."""

from __future__ import annotations

from datetime import datetime

import optuna
from sqlalchemy.engine import URL

from search import keys
from search.storage import open_storage
from search.storage.optuna_adapter import Progress, Results, database_now
from search.study.join import load_existing
from search.study.pruner import study_pruner
from search.study.summary import best_or_none
from search.wording import counted, format_params


def status(storage: URL, study_name: str | None) -> int:
    opened = open_storage(storage, writable=False)
    study = load_existing(opened, study_name)
    print(study_report(study, opened.slots(study).progress(), opened.results(study), database_now(opened.rdb.engine)))
    return 0


def study_report(study: optuna.Study, progress: Progress, results: Results, now: datetime) -> str:
    """The study's table; ``now`` by the clock trials are timed by (the database's). Reads
    what it prints (counts, the best trial, the running ones), not every trial."""
    attrs = study.user_attrs
    epochs = attrs.get(keys.EPOCHS, "?")
    retried = results.continued()
    lines = [
        f"study {study.study_name}: objective {attrs.get(keys.DATASET, '?')}, "
        f"{counted(epochs, 'epoch')} per trial, "
        f"budget {progress.budget}, {study_pruner(study)} pruner",
        f"  finished {progress.finished} (complete {progress.complete}, pruned {progress.pruned}, "
        f"failed {progress.failed}), running {progress.running}, waiting {progress.waiting}",
    ]
    if retried:
        lines.append(f"  {counted(retried, 'trial')} failed by a dead or stopped worker and continued by a retry")
    best = best_or_none(study)
    if best is not None:
        lines.append(f"best: trial {best.number}, val_acc {best.value:.2%}")
        lines.append(f"  params: {format_params(best.params)}")
    else:
        lines.append("best: no completed trial yet")
    running = results.running()
    if running:
        lines.append(f"{'running':>9}  {'epoch':>7}  {'last val_acc':>12}  {'for':>7}  worker")
        for trial in running:
            steps = trial.intermediate_values
            epoch = max(steps) if steps else 0
            last = f"{steps[epoch]:.2%}" if steps else "-"
            age = max(0.0, (now - trial.datetime_start).total_seconds()) if trial.datetime_start else 0.0
            lines.append(f"{trial.number:>9}  {epoch:>3}/{epochs!s:<3}  {last:>12}  "
                         f"{age:>6.0f}s  {trial.user_attrs.get(keys.WORKER, '?')}")
    for reason, count in results.failures(3):
        lines.append(f"failed x{count}: {reason}")
    return "\n".join(lines)
