"""Every bad input a user can give ``search``: one row each, the same four checks for all.

For each row of ``tests/bad_inputs.py``: exit status 2, exactly one line on stderr that
starts ``search: error:``, names the input and a fix, no traceback, and a snapshot of
every file in the test's world (databases, data, artifacts, exports) and of the
PostgreSQL databases taken before equals the one taken after: bad input changes and
creates nothing. Then the cases that are not a plain row: SIGINT, a pickle in the data,
and the read-only commands on a read-only copy.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import joblib
import numpy as np
import optuna
import pytest
import sqlalchemy

from objectives.datasets import covtype
from tests.bad_inputs import ROWS, Evil, build_world, read_only_mount
from tests.support.workers import REPO, dashboard, run_search, search_env, wait_until


@pytest.fixture(scope="module")
def world(tmp_path_factory, postgres, s3, fashion_dir, covtype_dir):
    yield from build_world(tmp_path_factory.mktemp("world"), postgres, s3, fashion_dir, covtype_dir)


def snapshot(world: Path, stores: list) -> dict[str, str]:
    """Every file (and directory) under the world, by content; every PostgreSQL table, by
    rows; every object of a bucket (``(server, name)``), by content."""
    state = {}
    for path in sorted(world.rglob("*")):
        if path.is_file():
            state[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
        elif path.is_dir():
            state[str(path)] = "dir"
    for server, bucket in [store for store in stores if isinstance(store, tuple)]:
        client = server.client()
        for key in sorted(server.objects(bucket)):
            body = client.get_object(Bucket=bucket, Key=key)["Body"].read()
            state[f"s3://{bucket}/{key}"] = hashlib.sha256(body).hexdigest()
    for url in [store for store in stores if isinstance(store, str)]:
        engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
        with engine.connect() as connection:
            for table in sorted(sqlalchemy.inspect(connection).get_table_names()):
                rows = connection.execute(sqlalchemy.text(f'SELECT * FROM "{table}"')).all()
                state[f"{url}/{table}"] = hashlib.sha256(repr(sorted(map(repr, rows))).encode()).hexdigest()
        engine.dispose()
    return state


@pytest.mark.parametrize("name, argv, expected, env", ROWS, ids=[row[0] for row in ROWS])
def test_bad_input_is_one_line_exit_2_and_changes_nothing(world, name, argv, expected, env):
    root, places, pg_urls = world
    argv = [arg.format(**places) for arg in argv]
    before = snapshot(root, pg_urls)
    done = run_search(*argv, cwd=root / "cwd", timeout=120,
                      env={key: value.format(**places) for key, value in env.items()})
    assert done.returncode == 2, (done.returncode, done.stdout, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("search: error: "), done.stderr
    assert expected.format(**places) in lines[0], lines[0]
    assert "; " in lines[0], f"no fix after the problem: {lines[0]}"  # "<what is wrong>; <what to do>"
    assert "Traceback" not in done.stdout + done.stderr
    assert snapshot(root, pg_urls) == before
    assert not (root / "pwned").exists(), "a data or model file ran code"


def test_at_least_sixty_rows():
    assert len(ROWS) >= 60


def start_long_run(tmp_path: Path, data: Path) -> tuple[str, subprocess.Popen[str]]:
    """``search run`` of 20-epoch trials, its output piped to the test."""
    storage = f"sqlite:///{tmp_path / 's.db'}"
    return storage, subprocess.Popen([sys.executable, "-m", "search.cli", "run", "--storage", storage, "--data-dir",
                                      str(data), "--n-trials", "2", "--epochs", "20", "--device", "cpu", "--artifacts",
                                      str(tmp_path / "a")], cwd=tmp_path, env=search_env(), stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)


def test_sigint_exits_130_with_one_line_and_requeues(tmp_path, medium_fashion_dir):
    storage, process = start_long_run(tmp_path, medium_fashion_dir)
    def training() -> bool:  # read-only: the test must not race the worker creating the tables
        try:
            with contextlib.closing(sqlite3.connect(f"file:{tmp_path / 's.db'}?mode=ro", uri=True)) as db:
                return db.execute("SELECT count(*) FROM trial_intermediate_values").fetchone()[0] > 0
        except sqlite3.Error:
            return False

    wait_until(training, timeout=120)
    time.sleep(1)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 130, (out, err)
    lines = err.strip().splitlines()
    assert lines == ["search: stopped by SIGINT; the current trial was re-queued"], err
    trials = optuna.load_study(study_name="fashion_mnist", storage=storage).get_trials()
    assert [t.state for t in trials] == [optuna.trial.TrialState.FAIL, optuna.trial.TrialState.WAITING]


def test_a_closed_output_stops_the_worker_like_sigpipe_and_requeues(tmp_path, medium_fashion_dir):
    """`search run | head`: the reader goes away mid-trial; the trial is re-queued, not failed."""
    storage, process = start_long_run(tmp_path, medium_fashion_dir)
    assert process.stdout is not None and process.stderr is not None
    while "epoch 1/20" not in (line := process.stdout.readline()):
        assert line, process.stderr.read()
    process.stdout.close()
    assert process.wait(timeout=120) == 128 + signal.SIGPIPE
    lines = process.stderr.read().strip().splitlines()
    assert lines == ["search: stopped by SIGPIPE (its output was closed); the current trial was re-queued"], lines
    trials = optuna.load_study(study_name="fashion_mnist", storage=storage).get_trials()
    assert [t.state for t in trials] == [optuna.trial.TrialState.FAIL, optuna.trial.TrialState.WAITING]
    # A reader of a read-only command's output may go away too: no traceback.
    status = subprocess.Popen([sys.executable, "-m", "search.cli", "status", "--storage", storage], cwd=tmp_path,
                              env=search_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert status.stdout is not None and status.stderr is not None
    status.stdout.close()
    assert status.wait(timeout=60) == 128 + signal.SIGPIPE and status.stderr.read() == b""


def test_a_good_run_writes_nothing_to_stderr(tmp_path, fashion_dir):
    done = run_search("run", "--data-dir", str(fashion_dir), "--n-trials", "6", "--epochs", "1", "--device",
                      "cpu", cwd=tmp_path)
    assert done.returncode == 0 and done.stderr == "", done.stderr


def test_a_study_name_with_a_slash_works_and_one_study_needs_no_name(tmp_path, fashion_dir):
    done = run_search("run", "--study", "team/exp-1", "--data-dir", str(fashion_dir), "--n-trials", "1",
                      "--epochs", "1", "--device", "cpu", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert run_search("status", "--study", "team/exp-1", cwd=tmp_path).returncode == 0
    # The storage holds one study: status, best and report read it without --study.
    status = run_search("status", cwd=tmp_path)
    assert status.returncode == 0 and "team/exp-1" in status.stdout, status.stderr
    best = run_search("best", "--json", cwd=tmp_path)
    assert best.returncode == 0 and json.loads(best.stdout)["study"] == "team/exp-1", best.stderr
    report = run_search("report", "--out", str(tmp_path / "report"), cwd=tmp_path)
    assert report.returncode == 0 and (tmp_path / "report" / "report.html").is_file(), report.stderr


def test_an_unrelated_bad_variable_does_not_break_status(world):
    root, places, _ = world
    done = subprocess.run([sys.executable, "-m", "search.cli", "status", "--study", "ready", "--storage",
                           places["db"]], capture_output=True, text=True, cwd=REPO,
                          env={**search_env(), "SEARCH_N_TRIALS": "abc", "SEARCH_TIMEOUT": "soon"})
    assert done.returncode == 0, done.stderr
    assert "budget 2" in done.stdout


def test_a_pickle_in_the_covtype_cache_never_runs(tmp_path):
    marker = tmp_path / "marker"
    cache = tmp_path / "data" / covtype.SKLEARN_SAMPLES.parent
    cache.mkdir(parents=True)
    joblib.dump(Evil(marker), cache / covtype.SKLEARN_SAMPLES.name, compress=9)
    joblib.dump(np.arange(3), cache / covtype.SKLEARN_TARGETS.name, compress=9)
    done = run_search("run", "--objective", "covtype", "--data-dir", str(tmp_path / "data"), cwd=tmp_path)
    assert done.returncode == 2 and "nothing in it was run" in done.stderr
    assert not marker.exists()
    # An object array hides its pickle one level down: refused too.
    joblib.dump(np.array([Evil(marker)], dtype=object), cache / covtype.SKLEARN_SAMPLES.name, compress=3)
    done = run_search("run", "--objective", "covtype", "--data-dir", str(tmp_path / "data"), cwd=tmp_path)
    assert done.returncode == 2 and "an array of Python objects" in done.stderr
    assert not marker.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]  # no database, no artifacts


def test_status_best_and_dashboard_only_read(world, tmp_path, postgres):
    """On a path that does not exist, a foreign database and a read-only copy: nothing is
    created or changed, and a study that is there is read."""
    root, places, _ = world
    copy = tmp_path / "copy"
    copy.mkdir()
    shutil.copy(root / "ready.db", copy / "ready.db")
    shutil.copytree(root / "artifacts", copy / "artifacts")
    with read_only_mount(copy, tmp_path / "ro"):
        ro = f"sqlite:///{tmp_path / 'ro' / 'ready.db'}"
        before = hashlib.sha256((copy / "ready.db").read_bytes()).hexdigest()
        status = run_search("status", "--study", "ready", "--storage", ro, cwd=tmp_path)
        assert status.returncode == 0 and "budget 2" in status.stdout, status.stderr
        best = run_search("best", "--study", "ready", "--storage", ro, "--json", cwd=tmp_path)
        assert best.returncode == 0 and json.loads(best.stdout)["study"] == "ready", best.stderr
        with dashboard(ro, tmp_path / "ro" / "artifacts", tmp_path) as get:
            listed = json.loads(get("/api/studies"))
            assert [s["study_name"] for s in listed["study_summaries"]] == ["ready"]
        assert hashlib.sha256((copy / "ready.db").read_bytes()).hexdigest() == before
        assert sorted(p.name for p in copy.iterdir()) == ["artifacts", "ready.db"]

    # PostgreSQL: a study is read through a user who may only read; nothing is written.
    url = postgres.new_database()
    done = run_search("run", "--storage", url, "--study", "pg", "--data-dir", places["data"], "--n-trials", "1",
                      "--epochs", "1", "--device", "cpu", "--artifacts", str(tmp_path / "a"), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    with sqlalchemy.create_engine(url, isolation_level="AUTOCOMMIT").connect() as connection:
        connection.execute(sqlalchemy.text("DROP ROLE IF EXISTS reader; CREATE ROLE reader LOGIN; "
                                           "GRANT SELECT ON ALL TABLES IN SCHEMA public TO reader"))
    reader = url.replace("postgres@", "reader@")
    status = run_search("status", "--study", "pg", "--storage", reader, cwd=tmp_path)
    assert status.returncode == 0 and "budget 1" in status.stdout, status.stderr
    best = run_search("best", "--study", "pg", "--storage", reader, cwd=tmp_path)
    assert best.returncode == 0, best.stderr
    # A fresh database stays empty after every read-only command.
    fresh = postgres.new_database()
    for args in (["status", "--study", "pg"], ["best", "--study", "pg"]):
        done = run_search(*args, "--storage", fresh, cwd=tmp_path)
        assert done.returncode == 2 and "holds no Optuna study storage" in done.stderr
    assert postgres.rows(fresh, "SELECT tablename FROM pg_tables WHERE schemaname = 'public'") == []
