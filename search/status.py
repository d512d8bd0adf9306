"""``search status``: a text table of one study's progress."""

from __future__ import annotations

import time
from collections import Counter

import optuna
from optuna.trial import TrialState

from search.study import EPOCHS_ATTR, OBJECTIVE_ATTR


def format_params(params: dict[str, object]) -> str:
    return ", ".join(f"{key}={value:.4g}" if isinstance(value, float) else f"{key}={value}"
                     for key, value in params.items())


def study_report(study: optuna.Study) -> str:
    trials = study.get_trials(deepcopy=False)
    counts = Counter(trial.state for trial in trials)
    attrs = study.user_attrs
    lines = [
        f"study {study.study_name}: objective {attrs.get(OBJECTIVE_ATTR, '?')}, "
        f"{attrs.get(EPOCHS_ATTR, '?')} epochs per trial, {len(trials)} trials",
        "  " + "  ".join(f"{state.name.lower()} {counts.get(state, 0)}" for state in TrialState),
    ]
    completed = [trial for trial in trials if trial.state == TrialState.COMPLETE]
    if completed:
        best = study.best_trial
        lines.append(f"best: trial {best.number}, val_acc {best.value:.2%}")
        lines.append(f"  params: {format_params(best.params)}")
    else:
        lines.append("best: no completed trial yet")
    running = [trial for trial in trials if trial.state == TrialState.RUNNING]
    if running:
        lines.append(f"{'running':>9}  {'epoch':>7}  {'last val_acc':>12}  {'for':>7}  worker")
        for trial in running:
            steps = trial.intermediate_values
            epoch = max(steps) if steps else 0
            last = f"{steps[epoch]:.2%}" if steps else "-"
            age = time.time() - trial.datetime_start.timestamp() if trial.datetime_start else 0.0
            lines.append(f"{trial.number:>9}  {epoch:>3}/{attrs.get(EPOCHS_ATTR, '?'):<3}  {last:>12}  "
                         f"{age:>6.0f}s  {trial.user_attrs.get('worker', '?')}")
    return "\n".join(lines)
