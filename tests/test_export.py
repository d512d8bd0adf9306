"""Best-model export: a real study, a safe file, reproduced in a process with torch + models only."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import torch

from objectives import space
from objectives.datasets import load_dataset
from search import keys
from tests.support.workers import REPO, one_error_line, run_search


# Every training-only option on, so export and --retrain are tested with all of them.
TRAINING_ONLY = {"warmup_epochs": 0.5, "label_smoothing": 0.1, "max_shift": 1, "flip": True}


@pytest.fixture(scope="module")
def finished_study(tmp_path_factory: pytest.TempPathFactory, fashion_dir: Path) -> dict[str, str]:
    root = tmp_path_factory.mktemp("study")
    storage, artifacts = f"sqlite:///{root / 'study.db'}", str(root / "artifacts")
    space_file = root / "space.toml"
    space_file.write_text(space.DEFAULT_FILE.read_text() + "".join(
        f"\n[fashion_mnist.{name}]\nvalue = {str(value).lower()}\n" for name, value in TRAINING_ONLY.items()))
    done = run_search("run", "--storage", storage, "--artifacts", artifacts, "--study", "export",
                      "--data-dir", str(fashion_dir), "--n-trials", "3", "--epochs", "2", "--device", "cpu",
                      "--space", str(space_file))
    assert done.returncode == 0, done.stdout + done.stderr
    return {"storage": storage, "artifacts": artifacts, "data_dir": str(fashion_dir), "root": str(root)}


def best_args(study: dict[str, str], *extra: str) -> list[str]:
    return ["best", "--study", "export", "--storage", study["storage"], "--artifacts", study["artifacts"],
            "--data-dir", study["data_dir"], *extra]


CHILD = """
import sys, json, torch
import models
payload = torch.load(sys.argv[1], weights_only=True)
model = models.load_exported(sys.argv[1])
split = torch.load(sys.argv[2], weights_only=True)
with torch.no_grad():
    predictions = model(split["features"].float()).argmax(1)
accuracy = (predictions == split["labels"]).sum().item() / len(split["labels"])
loaded = sorted(name for name in sys.modules if name.split(".")[0] in ("search", "objectives", "optuna"))
print(json.dumps({"accuracy": accuracy, "recorded": payload["metadata"]["validation_accuracy"],
                  "training": model.training, "loaded": loaded}))
"""


def test_exported_model_reproduces_validation_accuracy_in_a_fresh_process(finished_study, tmp_path):
    export = tmp_path / "model.pt"
    done = run_search(*best_args(finished_study, "--export", str(export)))
    assert done.returncode == 0, done.stderr
    payload = torch.load(export, weights_only=True)
    assert set(payload) == {"model_state_dict", "model_hyperparameters", "metadata"}
    metadata = payload["metadata"]
    study = optuna.load_study(study_name="export", storage=finished_study["storage"])
    assert metadata["trial_number"] == study.best_trial.number
    assert metadata["validation_accuracy"] == study.best_value
    assert metadata["objective"] == "fashion_mnist" and metadata["study"] == "export"
    assert metadata["class_names"][0] == "T-shirt/top" and len(metadata["class_names"]) == 10
    assert set(metadata["library_versions"]) >= {"torch", "optuna", "python"}
    assert json.loads(json.dumps(payload["model_hyperparameters"])) == payload["model_hyperparameters"]

    validation = load_dataset("fashion_mnist", finished_study["data_dir"]).validation
    split_file = tmp_path / "validation.pt"
    torch.save({"features": validation.features, "labels": validation.labels}, split_file)
    child = subprocess.run([sys.executable, "-c", CHILD, str(export), str(split_file)], capture_output=True,
                           text=True, cwd=tmp_path, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert child.returncode == 0, child.stderr
    result = json.loads(child.stdout)
    assert result["accuracy"] == result["recorded"]
    assert result["training"] is False
    assert result["loaded"] == []


# Started with -S -s (no site, no .pth files: this project's editable install is not on
# the path), in an empty directory, with only the directory torch is installed in on
# PYTHONPATH: torch (and what sits beside it, never imported).
PROGRAM_CHILD = """
import importlib.util, json, sys
assert not any(importlib.util.find_spec(name) for name in ("models", "search", "objectives"))
import torch
extra = {"hpsearch.json": ""}
program = torch.export.load(sys.argv[1], extra_files=extra)
features = torch.load(sys.argv[2], weights_only=True)
with torch.no_grad():
    logits = program.module()(features.float())
torch.save(logits, sys.argv[2] + ".logits")
assert not [name for name in sys.modules if name.split(".")[0] == "optuna"]
print(json.dumps(json.loads(extra["hpsearch.json"])))
"""


def test_program_export_runs_with_torch_alone_and_predicts_the_same(finished_study, tmp_path):
    from models import load_exported

    state, program = tmp_path / "model.pt", tmp_path / "model.pt2"
    for path in state, program:
        done = run_search(*best_args(finished_study, "--export", str(path)))
        assert done.returncode == 0, done.stderr
    assert "torch.export program" in done.stdout
    features = load_dataset("fashion_mnist", finished_study["data_dir"]).validation.features[:300]
    inputs = tmp_path / "inputs.pt"
    torch.save(features, inputs)
    site_packages = str(Path(torch.__file__).parents[1])
    child = subprocess.run([sys.executable, "-S", "-s", "-c", PROGRAM_CHILD, str(program), str(inputs)],
                           capture_output=True, text=True, cwd=tmp_path,
                           env={"PATH": "/usr/bin:/bin", "PYTHONPATH": site_packages})
    assert child.returncode == 0, child.stderr
    metadata = json.loads(child.stdout)
    assert metadata == torch.load(state, weights_only=True)["metadata"]
    assert metadata["layout"][0].startswith("0: Standardize") and metadata["layout"][-1] == "output: 10 logits (argmax = class index)"
    with torch.no_grad():
        expected = load_exported(state)(features.float())
    logits = torch.load(f"{inputs}.logits", weights_only=True)
    assert torch.equal(logits.argmax(1), expected.argmax(1))
    torch.testing.assert_close(logits, expected)

    notes = tmp_path / "notes.pt2"
    notes.write_text("not a program")
    line = one_error_line(run_search(*best_args(finished_study, "--export", str(notes))))
    assert "is not a model exported by search; pass --force" in line
    assert run_search(*best_args(finished_study, "--export", str(program))).returncode == 0  # replaces its own


def test_best_prints_the_best_trial_as_json(finished_study):
    done = run_search(*best_args(finished_study, "--json"))
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    study = optuna.load_study(study_name="export", storage=finished_study["storage"])
    assert summary["trial_number"] == study.best_trial.number
    assert summary["params"] == study.best_trial.params
    assert summary["epochs"] == 2 and summary["duration_s"] > 0


def test_retrain_reports_test_accuracy_that_evaluate_reproduces(finished_study, tmp_path):
    export = tmp_path / "retrained.pt"
    done = run_search(*best_args(finished_study, "--export", str(export), "--retrain"))
    assert done.returncode == 0, done.stderr
    metadata = torch.load(export, weights_only=True)["metadata"]
    assert metadata["trained_on"] == "train+validation"
    assert 0.5 < metadata["test_accuracy"] <= 1.0
    # Retrained with warm-up, label smoothing, shifts and flips; none of them is in the model.
    assert metadata["params"].items() >= TRAINING_ONLY.items()
    assert not any(word in line.lower() for line in metadata["layout"] for word in ("shift", "flip", "augment"))
    evaluated = run_search("evaluate", str(export), "--data-dir", finished_study["data_dir"], "--json")
    assert evaluated.returncode == 0, evaluated.stderr
    result = json.loads(evaluated.stdout)
    assert result["test_accuracy"] == pytest.approx(metadata["test_accuracy"], abs=1e-9)
    assert set(result["per_class_accuracy"]) == set(metadata["class_names"])


class RunsCode:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def test_a_file_carrying_a_pickled_callable_is_refused_and_nothing_runs(tmp_path, fashion_dir):
    marker = tmp_path / "executed"
    evil = tmp_path / "evil.pt"
    torch.save({"model_state_dict": {}, "model_hyperparameters": RunsCode(marker), "metadata": {}}, evil)
    done = run_search("evaluate", str(evil), "--data-dir", str(fashion_dir))
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "refused to load" in lines[0] and "posix.system" in lines[0], done.stderr
    assert not marker.exists()


def test_export_errors_are_one_clear_line(finished_study, tmp_path):
    line = one_error_line(run_search(*best_args(finished_study, "--export", "/sys/model.pt")))
    assert "not writable" in line and "/sys" in line
    line = one_error_line(run_search(*best_args(finished_study, "--export", str(tmp_path / "no" / "m.pt"))))
    assert "does not exist" in line
    line = one_error_line(run_search("best", "--study", "nope", "--storage", finished_study["storage"]))
    assert "no study named 'nope'" in line and "export" in line

    empty = f"sqlite:///{tmp_path / 'empty.db'}"
    study = optuna.create_study(study_name="fresh", storage=empty, direction="maximize")
    study.set_user_attr(keys.DATASET, "fashion_mnist")
    study.set_user_attr(keys.EPOCHS, 2)
    line = one_error_line(run_search("best", "--study", "fresh", "--storage", empty))
    assert "no completed trial" in line

    other_artifacts = tmp_path / "elsewhere"
    other_artifacts.mkdir()
    line = one_error_line(run_search("best", "--study", "export", "--storage", finished_study["storage"],
                                     "--artifacts", str(other_artifacts), "--export", str(tmp_path / "m.pt")))
    assert f"are not in {other_artifacts}" in line and "--retrain" in line
    assert not (tmp_path / "m.pt").exists()


def test_covtype_trains_exports_and_retrains_from_a_file_in_the_real_format(tmp_path, covtype_dir):
    """CoverType end to end on a generated ``covtype.data.gz`` (UCI's format; the real file is
    not available offline here): the default covtype space (no image augmentation), a
    retrained export, and ``evaluate`` reproducing its test accuracy."""
    storage = f"sqlite:///{tmp_path / 'cover.db'}"
    common = ("--storage", storage, "--artifacts", str(tmp_path / "artifacts"), "--data-dir", str(covtype_dir))
    done = run_search("run", "--objective", "covtype", "--study", "cover", "--n-trials", "2", "--epochs", "2",
                      "--device", "cpu", *common)
    assert done.returncode == 0, done.stdout + done.stderr
    # A worker given no study joins the storage's only one, and takes its objective and epochs.
    done = run_search("worker", "--n-trials", "3", "--device", "cpu", *common)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "joined study 'cover' (covtype, 2 epochs/trial," in done.stdout
    study = optuna.load_study(study_name="cover", storage=storage)
    assert all((trial.params["max_shift"], trial.params["flip"]) == (0, False) for trial in study.trials)
    assert {trial.params["batch_size"] for trial in study.trials} <= {512, 1024, 2048}
    export = tmp_path / "cover.pt"
    done = run_search("best", "--study", "cover", "--export", str(export), "--retrain", *common)
    assert done.returncode == 0, done.stdout + done.stderr
    payload = torch.load(export, weights_only=True)
    assert payload["model_hyperparameters"]["n_inputs"] == 54 and payload["model_hyperparameters"]["n_classes"] == 7
    assert payload["metadata"]["objective"] == "covtype"
    evaluated = run_search("evaluate", str(export), "--data-dir", str(covtype_dir), "--json")
    assert evaluated.returncode == 0, evaluated.stderr
    assert json.loads(evaluated.stdout)["test_accuracy"] == pytest.approx(payload["metadata"]["test_accuracy"],
                                                                          abs=1e-9)
