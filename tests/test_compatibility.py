"""A study written by the code before the redesign (a2c0621) is joined, resumed, reported
and exported as it is. The study is made here by hand, with the stored keys and file
formats spelled out as that code wrote them (not through ``search.keys``, so a renamed or
re-encoded key fails this test): a complete trial with listed weights, a pruned one, and
a running one whose worker died after its epoch-1 checkpoint."""

from __future__ import annotations

import json
import time
from pathlib import Path

import optuna
import torch
from optuna.trial import TrialState

from models import build_mlp
from objectives.datasets import load_dataset
from objectives.recipe import Recipe, train
from tests.support.workers import one_error_line, run_search

TOKEN = "0123456789ab"
PARAMS = {"n_layers": 1, "n_units_l0": 64, "activation": "relu", "dropout": 0.0, "batch_norm": False,
          "optimizer": "adam", "learning_rate": 3e-3, "weight_decay": 1e-5, "batch_size": 128}
# The nine tables of the space studies stored then (no optional training tables).
SPACE = {"n_layers": {"choices": [1]}, "n_units": {"choices": [64]}, "activation": {"choices": ["relu"]},
         "dropout": {"choices": [0.0]}, "batch_norm": {"choices": [False]}, "optimizer": {"choices": ["adam"]},
         "learning_rate": {"choices": [3e-3]}, "weight_decay": {"choices": [1e-5]},
         "batch_size": {"choices": [128]}}


def distributions() -> dict[str, optuna.distributions.BaseDistribution]:
    return {name: optuna.distributions.CategoricalDistribution([value]) for name, value in PARAMS.items()}


def legacy_study(root: Path, data_dir: Path, running: bool = True) -> tuple[str, Path]:
    """The study in ``root``; with ``running``, the dead worker's trial too."""
    storage, artifacts = f"sqlite:///{root / 'legacy.db'}", root / "artifacts"
    (artifacts / "checkpoints").mkdir(parents=True)
    study = optuna.create_study(study_name="legacy", storage=storage, direction="maximize")
    for key, value in {"objective": "fashion_mnist", "epochs": 2, "search_space": SPACE, "pruner": "median",
                       "n_trials": 3}.items():
        study.set_user_attr(key, value)
    study.set_metric_names(["val_accuracy"])
    rdb = optuna.storages.RDBStorage(storage)
    study_id = rdb.get_study_id_from_name("legacy")
    rdb.set_study_system_attr(study_id, "hpsearch:workers", 1)
    rdb.set_study_system_attr(study_id, "hpsearch:token", TOKEN)

    dataset = load_dataset("fashion_mnist", data_dir)
    hyperparameters = {"n_inputs": 784, "hidden_sizes": [64], "n_classes": 10, "activation": "relu",
                       "dropout": 0.0, "batch_norm": False, "input_mean": list(dataset.input_mean),
                       "input_std": list(dataset.input_std)}
    weights = f"{TOKEN}-1-00000000-0000-4000-8000-000000000000"
    torch.save({"model_state_dict": build_mlp(hyperparameters).state_dict(), "model_hyperparameters": hyperparameters},
               artifacts / weights)
    study.add_trial(optuna.trial.create_trial(
        params=PARAMS, distributions=distributions(), value=0.5, intermediate_values={1: 0.4, 2: 0.5},
        user_attrs={"seed": 0, "worker": "old-host/1", "device": "cpu", "checkpoint": None},
        system_attrs={f"artifacts:{weights}": json.dumps(
            {"artifact_id": weights, "filename": "trial-0-weights.pt", "mimetype": "application/octet-stream",
             "encoding": None})}))
    study.add_trial(optuna.trial.create_trial(
        params=PARAMS, distributions=distributions(), state=TrialState.PRUNED, intermediate_values={1: 0.1},
        user_attrs={"seed": 1, "pruned_reason": "pruned at epoch 1 with validation accuracy 0.1000"}))
    if not running:
        return storage, artifacts

    # A running trial whose worker wrote its epoch-1 checkpoint, then died.
    trainer = Recipe.of(PARAMS, dataset, 2).trainer(dataset.train, torch.device("cpu"), seed=2)
    for _ in train(trainer, 1):
        pass
    checkpoint = f"{TOKEN}-3-e1-deadbeef.pt"
    torch.save(trainer.state_dict(), artifacts / "checkpoints" / checkpoint)
    running = study.ask(fixed_distributions=distributions())
    running.set_user_attr("seed", 2)
    running.set_user_attr("checkpoint", {"file": checkpoint, "epoch": 1, "trial": running.number})
    running.report(0.3, 1)
    return storage, artifacts


def test_a_study_written_before_the_redesign_is_joined_resumed_reported_and_exported(tmp_path, fashion_dir):
    storage, artifacts = legacy_study(tmp_path, fashion_dir)
    common = ("--storage", storage, "--artifacts", str(artifacts))
    status = run_search("status", *common[:2])
    assert status.returncode == 0, status.stderr
    assert "study legacy: objective fashion_mnist, 2 epochs per trial, budget 3, median pruner" in status.stdout
    assert "running 1" in status.stdout.replace("  ", " ")

    time.sleep(3)  # the dead worker's trial is older than the grace period
    done = run_search("worker", *common, "--data-dir", str(fashion_dir), "--device", "cpu",
                      "--heartbeat-interval", "1", "--grace-period", "2")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "joined study 'legacy' (fashion_mnist, 2 epochs/trial, median pruner, budget 3, 2 finished)" in done.stdout
    assert "trial 2: its worker sent no heartbeat for 2 s; queued its retry" in done.stdout
    assert "trial 3: resumed from the epoch-1 checkpoint written by trial 2" in done.stdout
    trials = optuna.load_study(study_name="legacy", storage=storage).get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.COMPLETE]
    assert trials[3].params == PARAMS and trials[3].user_attrs["resumed_from_epoch"] == 1
    assert trials[3].system_attrs["failed_trial"] == 2 and trials[2].system_attrs["hpsearch:fail_cause"] == "stale"
    assert not list((artifacts / "checkpoints").iterdir())

    report = run_search("report", *common[:2], "--out", str(tmp_path / "report"))
    assert report.returncode == 0 and (tmp_path / "report" / "trials.csv").is_file(), report.stderr
    done = run_search("best", *common, "--export", str(tmp_path / "retrained.pt"), "--retrain", "--data-dir",
                      str(fashion_dir))
    assert done.returncode == 0, done.stderr
    assert "retrain epoch 2/2" in done.stdout
    # Its space is the study's: a worker with another file is refused as before.
    line = one_error_line(run_search("worker", *common, "--space", str(Path(__file__).parents[1] / "objectives" /
                                                                     "space.toml")))
    assert "samples another search space than --space gives" in line


def test_weights_stored_before_the_redesign_are_exported(tmp_path, fashion_dir):
    storage, artifacts = legacy_study(tmp_path, fashion_dir, running=False)
    export = tmp_path / "legacy.pt"
    done = run_search("best", "--storage", storage, "--artifacts", str(artifacts), "--export", str(export))
    assert done.returncode == 0, done.stderr
    payload = torch.load(export, weights_only=True)
    assert payload["metadata"]["trial_number"] == 0 and payload["metadata"]["objective"] == "fashion_mnist"
    assert payload["model_hyperparameters"]["hidden_sizes"] == [64]
    assert payload["metadata"]["class_names"][0] == "T-shirt/top"
