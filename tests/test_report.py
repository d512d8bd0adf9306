"""``search report`` on a real study: a self-contained HTML page with every trial in its
plots, non-trivial PNGs, a CSV of every trial, and the storage left as it was.
(scripts/report-screenshot renders the page in headless Chromium, outside CI.)"""

from __future__ import annotations

import csv
import hashlib
import json

import optuna

from tests.support.workers import one_error_line, run_search

PNG = b"\x89PNG\r\n\x1a\n"


def test_report_has_every_trial_and_changes_nothing(tmp_path, fashion_dir):
    database = tmp_path / "study.db"
    storage = f"sqlite:///{database}"
    done = run_search("run", "--storage", storage, "--artifacts", str(tmp_path / "a"), "--study", "rep",
                      "--data-dir", str(fashion_dir), "--n-trials", "8", "--epochs", "3", "--device", "cpu")
    assert done.returncode == 0, done.stderr
    before = hashlib.sha256(database.read_bytes()).hexdigest()

    out = tmp_path / "report"
    done = run_search("report", "--study", "rep", "--storage", storage, "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert "report: parallel coordinate" in done.stdout  # progress for the slow steps
    assert hashlib.sha256(database.read_bytes()).hexdigest() == before

    trials = optuna.load_study(study_name="rep", storage=storage).trials
    page = (out / "report.html").read_text()
    assert "<script src=" not in page and "Plotly.newPlot" in page  # plotly.js is inside, not fetched
    for trial in trials:
        assert f'"name":"Trial{trial.number}"' in page  # its curve, pruned or not
        if trial.value is not None:
            assert json.dumps(trial.value) in page
    for name in ("optimization history", "intermediate values", "param importances", "parallel coordinate"):
        assert f"<h2>{name}</h2>" in page
        png = out / f"{name.replace(' ', '_')}.png"
        assert png.read_bytes()[:8] == PNG and png.stat().st_size > 10_000, png

    with open(out / "trials.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [int(row["number"]) for row in rows] == [trial.number for trial in trials]
    assert all(row["epochs"] and row["slot_seconds"] for row in rows)

    file = tmp_path / "notes.txt"
    file.write_text("not a directory")
    line = one_error_line(run_search("report", "--study", "rep", "--storage", storage, "--out", str(file)))
    assert "is a file; give a directory" in line
    line = one_error_line(run_search("report", "--study", "nope", "--storage", storage, "--out", str(out)))
    assert "no study named 'nope'" in line
