"""The ``search`` command as a user runs it: a whole study, and one clear line for bad input."""

from __future__ import annotations

import gzip
import json
import re
import shutil
import subprocess
import sys
import time

import optuna
import pytest

from objectives import space
from search import keys
from tests.support.postgres import free_port
from tests.support.workers import dashboard, one_error_line, run_search, search_env, system_attrs


def test_run_on_the_embedded_default_prints_epochs_and_a_summary(tmp_path, fashion_dir):
    done = run_search("run", "--data-dir", str(fashion_dir), "--n-trials", "3", "--epochs", "2",
                      "--device", "cpu", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert (tmp_path / "search.db").exists() and (tmp_path / "search-artifacts").is_dir()
    for trial in range(3):
        assert f"trial {trial} epoch 1/2: val_acc" in out
    assert "study fashion_mnist: objective fashion_mnist, 2 epochs per trial, budget 3" in out
    assert "finished 3 (" in out
    assert "best: trial" in out and "search best --study fashion_mnist" in out
    study = optuna.load_study(study_name="fashion_mnist", storage=f"sqlite:///{tmp_path / 'search.db'}")
    assert len(study.trials) == 3
    assert study.metric_names == [keys.METRIC_NAME]  # the dashboard labels the value "val_accuracy"

    status = run_search("status", "--study", "fashion_mnist", cwd=tmp_path)
    assert status.returncode == 0 and "complete 3" in status.stdout.replace("  ", " ")

    again = run_search("run", "--data-dir", str(fashion_dir), "--n-trials", "5", "--epochs", "2",
                       "--device", "cpu", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert len(optuna.load_study(study_name="fashion_mnist", storage=f"sqlite:///{tmp_path / 'search.db'}").trials) == 5


@pytest.mark.parametrize("args, expected", [
    (["run", "--objective", "imagenet"], "unknown objective 'imagenet'; choose one of: fashion_mnist, covtype"),
    (["run", "--storage", "postgresql//nohost"], "malformed storage URL"),
    (["run", "--storage", "mysql://u@localhost/db"], "unsupported storage URL"),
    (["run", "--data-dir", "/nonexistent/fashion"], "data directory /nonexistent/fashion does not exist"),
    (["evaluate", "/nonexistent/model.pt"], "no such file"),
    (["status", "--study", "x", "--storage", "sqlite:////nonexistent/dir/s.db"], "no SQLite file /nonexistent/dir/s.db"),
    (["run", "--storage", "sqlite:////nonexistent/dir/s.db"], "directory /nonexistent/dir does not exist"),
])
def test_bad_input_gives_one_clear_line(tmp_path, args, expected):
    line = one_error_line(run_search(*args, cwd=tmp_path))
    assert expected in line


@pytest.mark.parametrize("pruner", ["successive-halving", "hyperband"])
def test_the_pruner_is_recorded_with_the_study_and_used_by_every_worker(tmp_path, fashion_dir, pruner):
    # The shipped space trains every trial to 100 % on the generated images: nothing to prune.
    # Learning rates down to 1e-6 make some trials plainly worse, as a real search's are.
    wide = tmp_path / "wide.toml"
    text, replaced = re.subn(r"\[learning_rate\]\nlow = [^\n]+\nhigh = [^\n]+",
                             "[learning_rate]\nlow = 1e-6\nhigh = 1e-1", space.DEFAULT_FILE.read_text())
    assert replaced == 1, "the shipped space's [learning_rate] table changed shape: update this test"
    wide.write_text(text)
    common = ("--data-dir", str(fashion_dir), "--device", "cpu", "--seed", "1", "--space", str(wide))
    done = run_search("run", "--pruner", pruner, "--n-trials", "6", "--epochs", "3", *common, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert f"3 epochs/trial, {pruner} pruner" in done.stdout
    # A worker without --pruner (or --epochs) takes the study's.
    joined = run_search("worker", "--study", "fashion_mnist", "--n-trials", "9", *common, cwd=tmp_path)
    assert joined.returncode == 0, joined.stderr
    assert f"3 epochs/trial, {pruner} pruner" in joined.stdout
    study = optuna.load_study(study_name="fashion_mnist", storage=f"sqlite:///{tmp_path / 'search.db'}")
    assert study.user_attrs[keys.PRUNER] == pruner
    states = [trial.state for trial in study.trials]
    assert len(states) == 9 and set(states) <= {optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED}
    if pruner == "successive-halving":
        # The median rule waits for 5 finished trials; successive halving prunes from the second.
        assert optuna.trial.TrialState.PRUNED in states[:5], states


def test_corrupt_idx_file_names_the_file(tmp_path, fashion_dir):
    broken = tmp_path / "broken"
    shutil.copytree(fashion_dir, broken)
    with gzip.open(broken / "train-images-idx3-ubyte.gz", "wb") as handle:
        handle.write(bytes([0, 0, 8, 3]) + (100).to_bytes(4, "big") + (28).to_bytes(4, "big") * 2 + b"\x00" * 99)
    line = one_error_line(run_search("run", "--data-dir", str(broken), cwd=tmp_path))
    assert "train-images-idx3-ubyte.gz: corrupt IDX file" in line and "download it again" in line


def test_unreachable_database_fails_fast_naming_host_and_port(tmp_path, fashion_dir):
    port = free_port()
    started = time.monotonic()
    line = one_error_line(run_search("worker", "--storage", f"postgresql://user:secret@127.0.0.1:{port}/db",
                                     "--data-dir", str(fashion_dir), cwd=tmp_path))
    assert time.monotonic() - started < 10
    assert f"cannot reach PostgreSQL at 127.0.0.1:{port}" in line and "secret" not in line


def database_snapshot(url: str) -> list[tuple]:
    snapshot = []
    for summary in optuna.get_all_study_summaries(url):
        study = optuna.load_study(study_name=summary.study_name, storage=url)
        trials = [(t.number, t.state, t.params, t.user_attrs) for t in study.get_trials()]
        system = system_attrs(url, summary.study_name)
        snapshot.append((summary.study_name, study.directions, study.user_attrs, system, trials))
    return snapshot


def test_a_study_left_undescribed_by_a_dead_join_is_taken_up(tmp_path, fashion_dir):
    """A join that died between creating the study and describing it left a bare study:
    the next worker describes it and works."""
    storage = f"sqlite:///{tmp_path / 'search.db'}"
    optuna.create_study(study_name="bare", storage=storage, direction="maximize")
    done = run_search("worker", "--study", "bare", "--n-trials", "1", "--epochs", "1", "--data-dir", str(fashion_dir),
                      "--device", "cpu", cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    study = optuna.load_study(study_name="bare", storage=storage)
    assert study.user_attrs[keys.DATASET] == "fashion_mnist" and study.user_attrs[keys.EPOCHS] == 1
    assert [trial.state for trial in study.trials] == [optuna.trial.TrialState.COMPLETE]


def test_mismatched_study_is_refused_and_the_database_is_unchanged(postgres, tmp_path, fashion_dir):
    url = postgres.new_database()
    common = ["--storage", url, "--data-dir", str(fashion_dir), "--artifacts", str(tmp_path / "a"),
              "--device", "cpu"]
    done = run_search("worker", "--study", "shared", "--n-trials", "2", "--epochs", "1", *common)
    assert done.returncode == 0, done.stderr
    minimized = optuna.create_study(study_name="loss", storage=url, direction="minimize")
    minimized.set_user_attr(keys.DATASET, "fashion_mnist")
    minimized.set_user_attr(keys.EPOCHS, 1)
    before = database_snapshot(url)
    assert dict((s[0], s[3]) for s in before)["shared"][keys.WORKERS] == 1

    line = one_error_line(run_search("worker", "--study", "shared", "--objective", "covtype", "--n-trials", "4",
                                     "--epochs", "1", *common))
    assert "study 'shared' exists with objective 'fashion_mnist', not 'covtype'" in line
    line = one_error_line(run_search("worker", "--study", "shared", "--n-trials", "4", "--epochs", "3", *common))
    assert "trains 1 epoch per trial, not 3; drop --epochs (and SEARCH_EPOCHS) to take the study's" in line
    line = one_error_line(run_search("worker", "--study", "loss", "--n-trials", "4", "--epochs", "1", *common))
    assert "exists with direction minimize" in line
    narrower = tmp_path / "space.toml"
    narrower.write_text(space.DEFAULT_FILE.read_text().replace("high = 3", "high = 2"))
    line = one_error_line(run_search("worker", "--study", "shared", "--n-trials", "4", "--epochs", "1",
                                     "--space", str(narrower), *common))
    assert "samples another search space than --space gives ([n_layers] is" in line
    assert line.endswith("drop --space (and SEARCH_SPACE) to take the study's, or choose another --study name")
    line = one_error_line(run_search("worker", "--study", "shared", "--n-trials", "4", "--epochs", "1",
                                     "--pruner", "hyperband", *common))
    assert "study 'shared' prunes with median, not hyperband; drop --pruner (and SEARCH_PRUNER)" in line
    assert database_snapshot(url) == before
    assert optuna.load_study(study_name="shared", storage=url).user_attrs[keys.SPACE] == space.load_space(None, "fashion_mnist")
    assert optuna.load_study(study_name="shared", storage=url).user_attrs[keys.PRUNER] == "median"

    # A worker without --n-trials takes the study's budget (2), not the default for a new study
    # (and without --epochs, the study's epochs).
    done = run_search("worker", "--study", "shared", *common)
    assert done.returncode == 0 and "budget 2, 2 finished" in done.stdout, done.stdout + done.stderr
    assert optuna.load_study(study_name="shared", storage=url).user_attrs[keys.BUDGET] == 2

    # The storage URL from a secret file (Docker and Kubernetes mount secrets as files).
    secret = tmp_path / "storage-secret"
    secret.write_text(url + "\n")
    done = run_search("status", "--study", "shared", env={"SEARCH_STORAGE_FILE": str(secret)})
    assert done.returncode == 0 and "finished 2 " in done.stdout, done.stdout + done.stderr


def test_dashboard_serves_the_study_and_only_the_kept_weights(tmp_path, fashion_dir):
    storage = f"sqlite:///{tmp_path / 'dash.db'}"
    done = run_search("run", "--storage", storage, "--study", "shown", "--data-dir", str(fashion_dir),
                      "--n-trials", "3", "--epochs", "1", "--keep-best", "1", "--device", "cpu", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    with dashboard(storage, tmp_path / "search-artifacts", tmp_path) as get:
        listed = json.loads(get("/api/studies"))
        assert [summary["study_name"] for summary in listed["study_summaries"]] == ["shown"]
        study_id = listed["study_summaries"][0]["study_id"]
        trials = json.loads(get(f"/api/studies/{study_id}"))["trials"]
        offered = [(trial["trial_id"], artifact) for trial in trials for artifact in trial["artifacts"]]
        assert len(trials) == 3 and len(offered) == 1  # --keep-best 1: the others left the list too
        trial_id, artifact = offered[0]
        assert len(get(f"/artifacts/{study_id}/{trial_id}/{artifact['artifact_id']}")) > 1000


def test_time_budget_stops_claiming_and_leaves_the_rest_of_the_budget(tmp_path, fashion_dir):
    storage = f"sqlite:///{tmp_path / 'timed.db'}"
    done = run_search("worker", "--storage", storage, "--study", "timed", "--data-dir", str(fashion_dir),
                      "--n-trials", "200", "--epochs", "1", "--timeout", "4", "--device", "cpu", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    study = optuna.load_study(study_name="timed", storage=storage)
    trials = study.get_trials(deepcopy=False)
    # Trials are created as they are claimed: the rest of the budget is still to come.
    assert study.user_attrs[keys.BUDGET] == 200 and 0 < len(trials) < 200
    assert all(t.state.is_finished() for t in trials)


def test_status_and_report_load_no_torch(tmp_path):
    """The read-only commands that need no model start without importing torch (seconds on
    a small machine): a user polls `search status` often."""
    storage = f"sqlite:///{tmp_path / 'plain.db'}"
    study = optuna.create_study(study_name="light", storage=storage, direction="maximize")
    study.set_user_attr(keys.DATASET, "fashion_mnist")
    study.set_user_attr(keys.EPOCHS, 1)
    study.add_trial(optuna.trial.create_trial(params={"x": 0.5}, distributions={
        "x": optuna.distributions.FloatDistribution(0, 1)}, value=0.5, intermediate_values={1: 0.5}))
    for command in (["status"], ["best"], ["best", "--json"], ["report", "--out", str(tmp_path / "report")]):
        probe = ("import sys; from search.cli import main; code = main(sys.argv[1:]); "
                 "assert 'torch' not in sys.modules, 'torch was imported'; sys.exit(code)")
        done = subprocess.run([sys.executable, "-c", probe, *command, "--storage", storage], capture_output=True,
                              text=True, cwd=tmp_path, env=search_env(), timeout=120)
        assert done.returncode == 0, done.stdout + done.stderr
