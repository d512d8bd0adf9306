"""``search report``: a study as files a user can share, without a running server.

Into ``--out`` (default ``report-<study>``):

* ``report.html``: one self-contained page (plotly's JavaScript embedded once, no CDN,
  works offline) with the optimization history, the intermediate values (pruned trials
  visible), parameter importances and parallel coordinates, all from Optuna's own
  ``optuna.visualization``, and a table of the top trials;
* the same four plots as PNGs (``optuna.visualization.matplotlib``, no browser needed);
* ``trials.csv``: every trial (``Study.trials_dataframe``), with the worker, epochs and
  the whole time of each slot across its attempts.

Read-only on the storage: nothing is created or changed there.
"""

from __future__ import annotations

import functools
import html
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from sqlalchemy.engine import URL

from search import keys
from search.errors import UserError
from search.storage import open_storage
from search.study.join import load_existing
from search.study.summary import epochs_run, slot_time
from search.wording import format_params

TOP = 10
PLOTS = ("optimization_history", "intermediate_values", "param_importances", "parallel_coordinate")


def check_output_directory(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; give a directory (it is created if missing)")
    parent = out if out.exists() else out.parent
    if not parent.is_dir():
        raise UserError(f"--out {out}: directory {parent} does not exist; create it or choose another --out")


def make_output_directory(out: Path) -> None:
    """Create ``out`` and prove it writable, before the slow plots."""
    try:
        out.mkdir(exist_ok=True)
        tempfile.TemporaryFile(dir=out).close()
    except OSError as error:
        raise UserError(f"--out {out}: cannot write there ({error.strerror}); choose another --out") from None


def figures(study: optuna.Study, say: Callable[[str], None]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Each plot as a plotly figure and a matplotlib one; a plot the study cannot have yet
    (importances need two completed trials with varied params) is left out, and said."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    from optuna import visualization
    from optuna.visualization import matplotlib as static

    interactive, still = {}, {}
    for name in PLOTS:
        say(f"report: {name.replace('_', ' ')}")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the matplotlib backend is "experimental"
                interactive[name] = getattr(visualization, f"plot_{name}")(study)
                still[name] = getattr(static, f"plot_{name}")(study)
        except (ValueError, RuntimeError) as error:
            say(f"report: no {name.replace('_', ' ')} plot ({error})")
    return interactive, still


def top_trials_table(study: optuna.Study, trials: list[FrozenTrial]) -> str:
    by_number = {trial.number: trial for trial in trials}
    complete = sorted((trial for trial in trials if trial.state == TrialState.COMPLETE),
                      key=lambda trial: trial.value, reverse=study.direction.name == "MAXIMIZE")[:TOP]
    rows = []
    for trial in complete:
        seconds, attempts = slot_time(trial, by_number)
        cells = (trial.number, f"{trial.value:.4f}", epochs_run(trial), f"{seconds or 0:.0f}", attempts,
                 trial.user_attrs.get(keys.WORKER, ""), format_params(trial.params))
        rows.append("<tr>" + "".join(f"<td>{html.escape(str(cell))}</td>" for cell in cells) + "</tr>")
    header = "".join(f"<th>{name}</th>" for name in ("trial", "value", "epochs", "seconds", "attempts",
                                                    "worker", "params"))
    return f"<table><tr>{header}</tr>{''.join(rows)}</table>"


def write_csv(study: optuna.Study, trials: list[FrozenTrial], path: Path) -> None:
    frame = study.trials_dataframe(attrs=("number", "state", "value", "datetime_start", "datetime_complete",
                                          "params", "user_attrs"))
    by_number = {trial.number: trial for trial in trials}
    frame["epochs"] = [epochs_run(by_number[number]) for number in frame["number"]]
    # FAIL attempts are counted in the trial that continued them.
    frame["slot_seconds"] = [None if by_number[number].state == TrialState.FAIL
                             else slot_time(by_number[number], by_number)[0] for number in frame["number"]]
    frame.to_csv(path, index=False)


def write_html(study: optuna.Study, trials: list[FrozenTrial], interactive: dict[str, Any], path: Path) -> None:
    from plotly.offline import get_plotlyjs

    counts = {state.name.lower(): sum(trial.state == state for trial in trials)
              for state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.RUNNING)}
    summary = ", ".join(f"{count} {state}" for state, count in counts.items() if count)
    sections = "".join(f"<h2>{name.replace('_', ' ')}</h2>"
                       + figure.to_html(full_html=False, include_plotlyjs=False, default_width="100%")
                       for name, figure in interactive.items())
    title = html.escape(f"study {study.study_name}")
    objective = html.escape(str(study.user_attrs.get(keys.DATASET, "")))
    path.write_text(f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>{title}</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:left;font-size:90%}}</style>
<script type="text/javascript">{get_plotlyjs()}</script></head>
<body><h1>{title}</h1><p>objective {objective}, {summary}</p>
<h2>top trials</h2>{top_trials_table(study, trials)}{sections}</body></html>
""", encoding="utf-8")


def report(storage: URL, study_name: str | None, out_dir: str | None) -> int:
    study = load_existing(open_storage(storage, writable=False), study_name)
    out = Path(out_dir or f"report-{study.study_name}")
    check_output_directory(out)
    trials = study.get_trials(deepcopy=False)
    if not any(trial.state in (TrialState.COMPLETE, TrialState.PRUNED) for trial in trials):
        raise UserError(f"study {study.study_name!r} has no finished trial to report yet; "
                        f"see: search status --study {study.study_name}")

    make_output_directory(out)
    say = functools.partial(print, flush=True)
    interactive, still = figures(study, say)
    for name, axes in still.items():
        axes.figure.savefig(out / f"{name}.png", dpi=120, bbox_inches="tight")
    write_csv(study, trials, out / "trials.csv")
    write_html(study, trials, interactive, out / "report.html")
    say(f"report: {out / 'report.html'}, {len(still)} PNGs and trials.csv in {out}")
    return 0
