"""The report's four plots, each as a plotly figure (the page) and a matplotlib one (the
PNG), from ``Drawn``: the optimization history and the learning curves drawn here (so a
big study gives a readable plot: the best trials by name, the rest as points or a band),
the parameter importances and parallel coordinates by ``optuna.visualization`` on the
sample. A plot that cannot be made yet (importances need two complete trials with varied
parameters) is left out, and said."""

from __future__ import annotations

import statistics
import warnings
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import optuna

from search import keys
from search.commands.report.drawn import CURVES, Drawn, best_so_far

LIGHT, STRONG, BAND = "rgba(99,110,250,0.35)", "#d62728", "rgba(120,120,120,0.25)"
SIZE = (10, 5.5)  # inches of each matplotlib figure: 1,200 x 660 px at the report's 120 dpi


def _of(count: int, total: int, what: str) -> str:
    return f"{count:,} of {total:,} {what}" if count < total else f"all {total:,} {what}"


def history(drawn: Drawn) -> tuple[Any, Any]:
    import plotly.graph_objects as go
    from matplotlib.figure import Figure

    points = drawn.shown
    steps_x, steps_y = best_so_far(drawn.complete, drawn.maximize)
    if steps_x and drawn.finished[-1].number > steps_x[-1]:
        steps_x, steps_y = [*steps_x, drawn.finished[-1].number], [*steps_y, steps_y[-1]]
    title = (f"optimization history ({_of(len(points), len(drawn.complete), 'complete trials')} drawn; "
             f"the best so far from every trial)")
    page = go.Figure(layout={"title": title, "xaxis_title": "trial", "yaxis_title": keys.METRIC_NAME})
    page.add_scatter(x=[t.number for t in points], y=[t.value for t in points], mode="markers", name="trial",
                     marker={"color": LIGHT, "size": 5})
    page.add_scatter(x=[t.number for t in drawn.best], y=[t.value for t in drawn.best], mode="markers",
                     name=f"best {len(drawn.best)}", marker={"color": STRONG, "size": 8},
                     text=[f"Trial{t.number}" for t in drawn.best])
    page.add_scatter(x=steps_x, y=steps_y, mode="lines", line_shape="hv", name="best so far",
                     line={"color": STRONG})
    still = Figure(figsize=SIZE)
    axes = still.subplots()
    axes.scatter([t.number for t in points], [t.value for t in points], s=6, color="#636efa", alpha=0.35,
                 label="trial")
    axes.scatter([t.number for t in drawn.best], [t.value for t in drawn.best], s=20, color=STRONG,
                 label=f"best {len(drawn.best)}")
    axes.step(steps_x, steps_y, where="post", color=STRONG, label="best so far")
    axes.set(title=title, xlabel="trial", ylabel=keys.METRIC_NAME)
    axes.legend(loc="lower right")
    return page, still


def curves(drawn: Drawn) -> tuple[Any, Any]:
    import plotly.graph_objects as go
    from matplotlib.figure import Figure

    reported = [trial for trial in drawn.finished if trial.intermediate_values]
    if not reported:
        raise ValueError("no trial reported an epoch yet")
    named = reported if len(reported) <= CURVES else [t for t in drawn.best if t.intermediate_values]
    page = go.Figure(layout={"xaxis_title": "epoch", "yaxis_title": keys.METRIC_NAME})
    still = Figure(figsize=SIZE)
    axes = still.subplots()
    if len(reported) > CURVES:
        by_step: dict[int, list[float]] = defaultdict(list)
        for trial in reported:
            for step, value in trial.intermediate_values.items():
                by_step[step].append(value)
        steps = sorted(step for step, found in by_step.items() if len(found) >= 2)
        cuts = [statistics.quantiles(by_step[step], n=10) for step in steps]
        low, high = [cut[0] for cut in cuts], [cut[-1] for cut in cuts]
        middle = [statistics.median(by_step[step]) for step in steps]
        page.add_scatter(x=steps, y=high, mode="lines", line={"width": 0}, showlegend=False, hoverinfo="skip")
        page.add_scatter(x=steps, y=low, mode="lines", line={"width": 0}, fill="tonexty", fillcolor=BAND,
                         name=f"10-90 % of {len(reported):,} trials")
        page.add_scatter(x=steps, y=middle, mode="lines", line={"color": "gray", "dash": "dash"}, name="median")
        axes.fill_between(steps, low, high, color="gray", alpha=0.25, label=f"10-90 % of {len(reported):,} trials")
        axes.plot(steps, middle, color="gray", linestyle="--", label="median")
        title = f"intermediate values (the best {len(named)} by name; the band: every trial)"
    else:
        title = f"intermediate values ({_of(len(named), len(reported), 'trials')})"
    for trial in named:
        steps_of = sorted(trial.intermediate_values)
        values = [trial.intermediate_values[step] for step in steps_of]
        page.add_scatter(x=steps_of, y=values, mode="lines+markers", name=f"Trial{trial.number}")
        axes.plot(steps_of, values, marker="o", markersize=3, label=f"Trial{trial.number}")
    page.update_layout(title=title)
    axes.set(title=title, xlabel="epoch", ylabel=keys.METRIC_NAME)
    axes.legend(loc="lower right", fontsize="small", ncols=2 if len(named) > 10 else 1)
    return page, still


def _sample_study(drawn: Drawn) -> optuna.Study:
    """The sample as a study of its own (in memory), for Optuna's plots."""
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study = optuna.create_study(direction="maximize" if drawn.maximize else "minimize")
    finally:
        optuna.logging.set_verbosity(verbosity)
    study.add_trials(drawn.shown)
    return study


def _by_optuna(name: str, drawn: Drawn) -> tuple[Any, Any]:
    from optuna import visualization
    from optuna.visualization import matplotlib as static

    study = _sample_study(drawn)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the matplotlib backend is "experimental"
        page = getattr(visualization, f"plot_{name}")(study)
        still = getattr(static, f"plot_{name}")(study)
    title = f"{name.replace('_', ' ')} ({_of(len(drawn.shown), len(drawn.complete), 'complete trials')}"
    title += ": the best, the record setters and a random sample)" if drawn.cut else ")"
    page.update_layout(title=title)
    still.set_title(title)
    return page, still.figure


PLOTS: dict[str, Callable[[Drawn], tuple[Any, Any]]] = {
    "optimization_history": history,
    "intermediate_values": curves,
    "param_importances": lambda drawn: _by_optuna("param_importances", drawn),
    "parallel_coordinate": lambda drawn: _by_optuna("parallel_coordinate", drawn),
}


def figures(drawn: Drawn, say: Callable[[str], None], step: Callable[[], None]) -> tuple[dict, dict]:
    """Each plot as a plotly figure and a matplotlib one, by name."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    interactive, still = {}, {}
    for name, draw in PLOTS.items():
        say(f"report: {name.replace('_', ' ')}")
        try:
            interactive[name], still[name] = draw(drawn)
        except (ValueError, RuntimeError) as error:
            say(f"report: no {name.replace('_', ' ')} plot ({error})")
        step()
    return interactive, still
