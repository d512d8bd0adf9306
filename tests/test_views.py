"""Results at scale: ``status``, ``best`` and ``report`` print on a 1,000-trial study exactly
what they printed before they stopped reading whole studies (tests/golden/views); the
report of a study of thousands stays readable and small; the dashboard shows a big
study's cut, which only grows at its end, until it is cut again.

The studies are grown in bulk (``tests.support.studies``): seconds, not the hour
``add_trials`` would take.
"""

from __future__ import annotations

import csv
import json
import re
import struct
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from search.storage import open_storage
from search.storage.optuna_adapter import study_id
from search.storage.optuna_adapter.bulk import add_trials
from tests.support.studies import grow_study, grown_trials
from tests.support.workers import dashboard, run_search, search_env, wait_until

GOLDEN = Path(__file__).parent / "golden" / "views"
AGE = re.compile(r" +\d+s  node")  # the running trials' ages: now minus their start


@pytest.fixture(scope="module")
def thousand(tmp_path_factory) -> str:
    url = f"sqlite:///{tmp_path_factory.mktemp('views') / 'big.db'}"
    grow_study(url, "big", 1000, seed=7, running=3)
    return url


def test_status_and_best_print_what_they_did(thousand):
    status = run_search("status", "--storage", thousand, "--study", "big")
    assert status.returncode == 0, status.stderr
    assert AGE.sub(" Xs  node", status.stdout) == AGE.sub(" Xs  node", (GOLDEN / "status.txt").read_text())
    for arguments, golden in ((["--json"], "best.json"), ([], "best.txt")):
        best = run_search("best", "--storage", thousand, "--study", "big", *arguments)
        assert best.returncode == 0, best.stderr
        assert best.stdout == (GOLDEN / golden).read_text()


def test_status_and_best_read_without_loading_optuna(thousand):
    # Optuna's import (numpy, tqdm, its samplers) would be a third of these one-second
    # commands; they read through the adapter's records instead.
    probe = ("import sys; from search.cli import main; code = main(sys.argv[1:]); "
             "print(sorted(name for name in ('optuna', 'numpy', 'torch') if name in sys.modules)); sys.exit(code)")
    for arguments in (["status"], ["best"], ["best", "--json"]):
        done = subprocess.run([sys.executable, "-c", probe, *arguments, "--storage", thousand, "--study", "big"],
                              capture_output=True, text=True, env=search_env(), timeout=120)
        assert done.returncode == 0, done.stderr
        assert done.stdout.splitlines()[-1] == "[]", (arguments, done.stdout[-300:])


def test_report_keeps_its_table_and_csv(thousand, tmp_path):
    done = run_search("report", "--storage", thousand, "--study", "big", "--out", str(tmp_path / "r"))
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "r" / "trials.csv").read_text() == (GOLDEN / "trials.csv").read_text()
    page = (tmp_path / "r" / "report.html").read_text()
    table = re.search(r"<h2>top trials</h2>(<table>.*?</table>)", page, re.S).group(1)
    assert table + "\n" == (GOLDEN / "top_trials.html").read_text()


def png_size(path: Path) -> tuple[int, int]:
    return struct.unpack(">II", path.read_bytes()[16:24])


def test_the_report_of_thousands_of_trials_stays_readable(tmp_path):
    url = f"sqlite:///{tmp_path / 'many.db'}"
    grow_study(url, "many", 4000, seed=1, running=4)
    done = run_search("report", "--storage", url, "--study", "many", "--out", str(tmp_path / "r"))
    assert done.returncode == 0, done.stderr
    out = tmp_path / "r"
    for png in out.glob("*.png"):
        assert max(png_size(png)) <= 4000, (png, png_size(png))
    page = (out / "report.html").read_text()
    assert len(page.encode()) < 5_000_000
    assert "the plots draw the best, every trial that set a new best and a random 1,000" in page
    figures = json.loads(re.search(r'<script id="figures" type="application/json">(.*?)</script>', page, re.S)
                         .group(1).replace("<\\/", "</"))
    points = figures["optimization_history"]["data"][0]["x"]
    assert 1000 <= len(points) <= 1000 + 10 + 100  # a sample, the best, the record setters; not 2,400
    named = [trace["name"] for trace in figures["intermediate_values"]["data"] if trace.get("name", "").startswith("Trial")]
    assert len(named) == 10  # the best by name, the rest a band
    complete = sum(1 for row in csv.DictReader((out / "trials.csv").open()) if row["state"] == "COMPLETE")
    assert f"of {complete:,} complete trials: the best" in figures["param_importances"]["layout"]["title"]["text"]
    rows = (out / "trials.csv").read_text().splitlines()
    assert len(rows) == 1 + 4000


def test_the_dashboard_shows_a_big_studys_cut_and_cuts_again(tmp_path):
    url = f"sqlite:///{tmp_path / 'shown.db'}"
    grow_study(url, "shown", 1500, seed=3, running=5)
    n = 100
    study = optuna.load_study(study_name="shown", storage=url)
    trials = study.get_trials(deepcopy=False)
    complete = sorted((t for t in trials if t.state == TrialState.COMPLETE), key=lambda t: (-t.value, t.number))
    expected = ({t.number for t in complete[:n]} | {t.number for t in trials if not t.state.is_finished()}
                | {t.number for t in trials if t.number >= len(trials) - n})
    log = tmp_path / "dashboard.log"
    with dashboard(url, tmp_path / "artifacts", tmp_path, extra=["--view-trials", str(n)], log=log) as get:
        assert f"study 'shown': the dashboard shows {len(expected)} of its 1,500 trials" in log.read_text()
        shown = json.loads(get("/api/studies/1"))["trials"]
        assert [t["number"] for t in shown] == sorted(expected)

        # New trials join at the end; what was shown stays where it was.
        storage = open_storage(url)
        try:
            add_trials(storage.transactions, study_id(study), grown_trials(50, seed=4, first=1500))

            def grown() -> list[dict]:
                now = json.loads(get("/api/studies/1"))["trials"]
                return now if len(now) > len(shown) else []
            now = wait_until(grown, timeout=60, interval=1)
            assert [t["number"] for t in now] == sorted(expected) + list(range(1500, 1550))

            # n more after the cut: it is cut again, to the same bound, and said.
            add_trials(storage.transactions, study_id(study), grown_trials(60, seed=5, first=1550))
            wait_until(lambda: get("/api/studies/1") and "cut again" in log.read_text(), timeout=60, interval=1)
            again = json.loads(get("/api/studies/1"))["trials"]
            assert len(again) <= 2 * n + 5 and again[-1]["number"] == 1609
        finally:
            storage.close()
