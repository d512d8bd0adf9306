"""``search status``: a text table of one study's progress. Only reads the storage."""

from __future__ import annotations

from datetime import datetime
from sqlalchemy.engine import URL

from search import keys
from search.storage import open_reading
from search.storage.optuna_adapter import Progress, Results, StudyRecord
from search.study.lookup import find_study
from search.study.spec import DEFAULT_PRUNER
from search.wording import counted, format_params


def status(storage: URL, study_name: str | None) -> int:
    reading = open_reading(storage)  # no Optuna: its import would be a third of this command
    study = find_study(reading, study_name)
    print(study_report(study, reading.progress(study), reading.results(study), reading.now()))
    return 0


def study_report(study: StudyRecord, progress: Progress, results: Results, now: datetime) -> str:
    """The study's table; ``now`` by the clock trials are timed by (the database's). Reads
    what it prints (counts, the best trial, the running ones), not every trial."""
    attrs = study.user_attrs
    epochs = attrs.get(keys.EPOCHS, "?")
    retried = results.continued()
    lines = [
        f"study {study.study_name}: objective {attrs.get(keys.DATASET, '?')}, "
        f"{counted(epochs, 'epoch')} per trial, "
        f"budget {progress.budget}, {attrs.get(keys.PRUNER, DEFAULT_PRUNER)} pruner",
        f"  finished {progress.finished} (complete {progress.complete}, pruned {progress.pruned}, "
        f"failed {progress.failed}), running {progress.running}, waiting {progress.waiting}",
    ]
    if retried:
        lines.append(f"  {counted(retried, 'trial')} failed by a dead or stopped worker and continued by a retry")
    best = results.best(study.maximize)
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
