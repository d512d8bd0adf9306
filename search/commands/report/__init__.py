"""``search report``: a study as files a user can share, without a running server.

Into ``--out`` (default ``report-<study>``):

* ``report.html``: one self-contained page (plotly's JavaScript inside, no CDN, works
  offline) with the optimization history, the intermediate values, parameter importances
  and parallel coordinates, and a table of the top trials;
* the same four plots as PNGs (matplotlib, no browser needed);
* ``trials.csv``: every trial, with the worker, epochs and the whole time of each slot
  across its attempts.

However big the study, the plots stay readable and the page small: past 1,000 finished
trials they draw the best trials by name, every trial that set a new best, and a fixed
random sample (the learning curves: the best by name over a band of every trial), and
say so in their titles; the CSV keeps every trial. Read-only on the storage: nothing is
created or changed there.
"""

from __future__ import annotations

import functools
import sys
import tempfile
from pathlib import Path

from sqlalchemy.engine import URL

from search import keys
from search.commands.report.drawn import SAMPLE, choose
from search.commands.report.figures import PLOTS, figures
from search.commands.report.page import top_trials_table, write_csv, write_html
from search.errors import UserError
from search.storage import open_storage
from search.study.join import load_existing

DPI = 120


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


def report(storage: URL, study_name: str | None, out_dir: str | None) -> int:
    from tqdm import tqdm

    opened = open_storage(storage, writable=False)
    study = load_existing(opened, study_name)
    out = Path(out_dir or f"report-{study.study_name}")
    check_output_directory(out)
    progress = opened.slots(study).progress()
    if progress.complete + progress.pruned == 0:
        raise UserError(f"study {study.study_name!r} has no finished trial to report yet; "
                        f"see: search status --study {study.study_name}")

    make_output_directory(out)
    say = functools.partial(print, flush=True)
    # A bar on a terminal only: its redrawn line would clutter a log.
    bar = tqdm(total=3 + len(PLOTS), desc="report", unit="step", disable=None, file=sys.stderr, leave=False)
    say(f"report: reading the trials of study {study.study_name!r}")
    trials = opened.results(study).every_trial()
    bar.update()
    by_number = {trial.number: trial for trial in trials}
    maximize = study.direction.name == "MAXIMIZE"
    drawn = choose(trials, maximize)
    interactive, still = figures(drawn, say, bar.update)
    for name, figure in still.items():
        figure.savefig(out / f"{name}.png", dpi=DPI, bbox_inches="tight")
    say("report: trials.csv")
    write_csv(trials, by_number, study.metric_names, out / "trials.csv")
    bar.update()
    notes = []
    if drawn.cut:
        notes.append(f"{len(drawn.complete):,} complete trials: the plots draw the best, every trial that set a "
                     f"new best and a random {SAMPLE:,} (their titles say how many); trials.csv has every trial.")
    write_html(study.study_name, str(study.user_attrs.get(keys.DATASET, "")), trials,
               top_trials_table(trials, by_number, maximize), interactive, notes, out / "report.html")
    bar.update()
    bar.close()
    say(f"report: {out / 'report.html'}, {len(still)} PNGs and trials.csv in {out}")
    return 0
