"""The report's files: ``report.html`` (one self-contained page), ``trials.csv``.

plotly's JavaScript (4.8 MB) is in the page gzipped (1.4 MB), unpacked by the browser
(``DecompressionStream``: Chrome 80, Firefox 113, Safari 16.4 and later), so the page
stays under 5 MB and still needs no network; the figures are plain JSON in the page."""

from __future__ import annotations

import base64
import gzip
import html
import json
from pathlib import Path
from typing import Any

from optuna.trial import FrozenTrial, TrialState

from search import keys
from search.study.summary import epochs_run, slot_time
from search.wording import format_params

TOP = 10

LOADER = """<script>
async function unpack(id) {
  const bytes = Uint8Array.from(atob(document.getElementById(id).textContent), c => c.charCodeAt(0));
  const stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream("gzip"));
  return await new Response(stream).text();
}
(async () => {
  const script = document.createElement("script");
  script.text = await unpack("plotly-js");
  document.head.appendChild(script);
  const figures = JSON.parse(document.getElementById("figures").textContent);
  for (const [id, figure] of Object.entries(figures)) {
    Plotly.newPlot(id, figure.data, figure.layout, {responsive: true});
  }
  document.getElementById("needs-browser").remove();
})();
</script>"""


def top_trials_table(trials: list[FrozenTrial], by_number: dict[int, FrozenTrial], maximize: bool) -> str:
    complete = sorted((trial for trial in trials if trial.state == TrialState.COMPLETE),
                      key=lambda trial: trial.value, reverse=maximize)[:TOP]
    rows = []
    for trial in complete:
        seconds, attempts = slot_time(trial, by_number)
        cells = (trial.number, f"{trial.value:.4f}", epochs_run(trial), f"{seconds or 0:.0f}", attempts,
                 trial.user_attrs.get(keys.WORKER, ""), format_params(trial.params))
        rows.append("<tr>" + "".join(f"<td>{html.escape(str(cell))}</td>" for cell in cells) + "</tr>")
    header = "".join(f"<th>{name}</th>" for name in ("trial", "value", "epochs", "seconds", "attempts",
                                                    "worker", "params"))
    return f"<table><tr>{header}</tr>{''.join(rows)}</table>"


def write_csv(trials: list[FrozenTrial], by_number: dict[int, FrozenTrial], metric_names: list[str] | None,
              path: Path) -> None:
    """Every trial, one row each: the columns of Optuna's ``Study.trials_dataframe`` (number,
    state, value, times, params_*, user_attrs_*), the epochs run and the slot's seconds
    (its failed attempts included; none for a failed attempt, counted in its successor)."""
    import pandas as pd

    value = "value" if not metric_names else f"value_{metric_names[0]}"
    names: dict[str, set[str]] = {"params": set(), "user_attrs": set()}
    records = []
    for trial in trials:
        record = {"number": trial.number, "state": trial.state.name, value: trial.value,
                  "datetime_start": trial.datetime_start, "datetime_complete": trial.datetime_complete}
        for kind, attrs in (("params", trial.params), ("user_attrs", trial.user_attrs)):
            for key, item in attrs.items():
                record[f"{kind}_{key}"] = item
                names[kind].add(key)
        record["epochs"] = epochs_run(trial)
        record["slot_seconds"] = None if trial.state == TrialState.FAIL else slot_time(trial, by_number)[0]
        records.append(record)
    columns = ["number", "state", value, "datetime_start", "datetime_complete",
               *(f"{kind}_{key}" for kind in names for key in sorted(names[kind])), "epochs", "slot_seconds"]
    pd.DataFrame(records, columns=columns).to_csv(path, index=False)


def write_html(study_name: str, objective: str, trials: list[FrozenTrial], table: str, interactive: dict[str, Any],
               notes: list[str], path: Path) -> None:
    from plotly.offline import get_plotlyjs

    counts = {state.name.lower(): sum(trial.state == state for trial in trials)
              for state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.RUNNING)}
    summary = ", ".join(f"{count} {state}" for state, count in counts.items() if count)
    sections = "".join(f'<h2>{name.replace("_", " ")}</h2><div id="{name}" style="height:520px"></div>'
                       for name in interactive)
    # "</" cannot end the script element early: JSON allows "<\/" for it.
    figures = json.dumps({name: json.loads(figure.to_json()) for name, figure in interactive.items()},
                         separators=(",", ":")).replace("</", "<\\/")
    packed = base64.b64encode(gzip.compress(get_plotlyjs().encode(), mtime=0)).decode()
    title = html.escape(f"study {study_name}")
    said = "".join(f"<p>{html.escape(note)}</p>" for note in notes)
    path.write_text(f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>{title}</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:left;font-size:90%}}</style></head>
<body><h1>{title}</h1><p>objective {html.escape(objective)}, {summary}</p>{said}
<p id="needs-browser">The plots need JavaScript and a browser from 2023 or later; the PNGs beside this page
show the same.</p>
<h2>top trials</h2>{table}{sections}
<script id="plotly-js" type="application/octet-stream">{packed}</script>
<script id="figures" type="application/json">{figures}</script>
{LOADER}</body></html>
""", encoding="utf-8")
