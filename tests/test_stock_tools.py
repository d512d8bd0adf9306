"""Stock Optuna tools read a study `search` wrote, with the same URL: the plain
``postgresql://USER@HOST:PORT/DB`` form the README shows.

SQLAlchemy 2.1 maps ``postgresql://`` to psycopg 3, which this project therefore installs
beside psycopg2 (which `search` itself uses, whatever the URL says).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from tests.support.postgres import free_port
from tests.support.workers import run_search, search_env

BIN = Path(sys.executable).parent


def test_optuna_cli_and_dashboard_read_the_study_with_the_readme_url(postgres, tmp_path, fashion_dir):
    url = postgres.new_database().replace("postgresql+psycopg2://", "postgresql://")
    done = run_search("run", "--storage", url, "--study", "stock", "--data-dir", str(fashion_dir), "--n-trials", "2",
                      "--epochs", "1", "--device", "cpu", "--artifacts", str(tmp_path / "a"))
    assert done.returncode == 0, done.stderr

    studies = subprocess.run([BIN / "optuna", "studies", "--storage", url, "-f", "json"], capture_output=True,
                             text=True, timeout=120, env=search_env())
    assert studies.returncode == 0, studies.stderr
    assert [study["name"] for study in json.loads(studies.stdout)] == ["stock"]
    best = subprocess.run([BIN / "optuna", "best-trial", "--study-name", "stock", "--storage", url, "-f", "json"],
                          capture_output=True, text=True, timeout=120, env=search_env())
    assert best.returncode == 0, best.stderr
    trial = json.loads(best.stdout)
    assert trial["state"] == "COMPLETE" and 0 < trial["value"]["val_accuracy"] <= 1  # named by the study

    port = free_port()
    dashboard = subprocess.Popen([BIN / "optuna-dashboard", url, "--host", "127.0.0.1", "--port", str(port)],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=search_env())
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=5) as response:
                    listed = json.load(response)
                break
            except OSError:
                assert dashboard.poll() is None, dashboard.stderr.read().decode()
                assert time.monotonic() < deadline, "optuna-dashboard did not answer in 60 s"
                time.sleep(0.5)
        assert [study["study_name"] for study in listed["study_summaries"]] == ["stock"]
    finally:
        dashboard.terminate()
        dashboard.wait(timeout=30)
