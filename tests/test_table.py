"""The table data set: a user's own CSV or Parquet file with a named label column, read as
the docstring of objectives/datasets/table.py says, and searched, exported, retrained and
evaluated through the command line like the built-in data sets."""

from __future__ import annotations

import json

import numpy as np
import optuna
import pytest
import torch

from objectives.datasets import load_dataset, table
from objectives.errors import DataError
from search import keys
from tests.support.datafiles import synthetic_table, write_table
from tests.support.workers import one_error_line, run_search

LABEL = {"label": "species"}


def test_numbers_are_standardised_text_is_one_hot_and_the_split_is_fixed(tmp_path):
    path = write_table(tmp_path)
    dataset = load_dataset("table", path, LABEL)
    assert dataset.class_names == ("setosa", "versicolor", "virginica")
    assert dataset.inputs == ("height_cm", "weight_kg", "colour=blue", "colour=green", "colour=red", "count",
                              "outdoor")
    sizes = (len(dataset.train), len(dataset.validation), len(dataset.test))
    assert sum(sizes) == 600 and abs(sizes[0] - 480) <= 3 and abs(sizes[1] - 60) <= 3, sizes  # 80/10/10 per class
    for split in (dataset.train, dataset.validation, dataset.test):  # stratified: every class in every split
        assert set(split.labels.tolist()) == {0, 1, 2}
    train = dataset.train.features.double()
    numeric = [0, 1, 5, 6]
    assert np.allclose(dataset.input_mean, [train[:, i].mean().item() if i in numeric else 0.0 for i in range(7)])
    assert np.allclose(dataset.input_std, [train[:, i].std().item() if i in numeric else 1.0 for i in range(7)])
    one_hot = dataset.train.features[:, 2:5]
    assert set(one_hot.unique().tolist()) == {0.0, 1.0} and torch.all(one_hot.sum(1) == 1)
    # The same file splits the same way every time (every worker trains the same rows).
    again = load_dataset("table", tmp_path, LABEL)  # the directory holding it works too
    assert torch.equal(again.train.features, dataset.train.features) and torch.equal(again.test.labels,
                                                                                     dataset.test.labels)
    assert dataset.described() == {"class_names": ["setosa", "versicolor", "virginica"],
                                   "inputs": list(dataset.inputs), "input": dataset.input_description}


def test_parquet_reads_as_the_same_table(tmp_path):
    csv = load_dataset("table", write_table(tmp_path, "plants.csv"), LABEL)
    parquet = load_dataset("table", write_table(tmp_path / "p", "plants.parquet"), LABEL)
    assert parquet.inputs == csv.inputs and parquet.class_names == csv.class_names
    assert torch.equal(parquet.train.features, csv.train.features)
    assert torch.equal(parquet.test.labels, csv.test.labels)


def test_a_text_column_with_too_many_values_is_refused_by_name(tmp_path):
    frame = synthetic_table(300)
    frame["name"] = [f"plant-{i}" for i in range(300)]
    frame.to_csv(tmp_path / "named.csv", index=False)
    with pytest.raises(DataError, match=r"column 'name' has 300 distinct text values; one-hot encoding allows 100"):
        load_dataset("table", tmp_path / "named.csv", LABEL)


def test_a_table_searches_exports_retrains_and_evaluates_end_to_end(tmp_path):
    data = write_table(tmp_path / "data")
    storage = f"sqlite:///{tmp_path / 'plants.db'}"
    common = ("--storage", storage, "--artifacts", str(tmp_path / "artifacts"), "--device", "cpu")
    done = run_search("run", "--objective", "table", "--label", "species", "--data-dir", str(data), "--study",
                      "plants", "--n-trials", "3", "--epochs", "3", *common)
    assert done.returncode == 0, done.stdout + done.stderr
    study = optuna.load_study(study_name="plants", storage=storage)
    assert study.user_attrs[keys.DATASET] == "table" and study.user_attrs[keys.DATA_OPTIONS] == LABEL
    assert study.user_attrs[keys.DATA]["class_names"] == ["setosa", "versicolor", "virginica"]
    assert all((trial.params["max_shift"], trial.params["flip"]) == (0, False) for trial in study.trials)
    assert max(trial.value for trial in study.trials) > 0.8

    # Another worker takes the study's label column; one that names another, or brings
    # another table, is refused before it writes anything.
    done = run_search("worker", "--study", "plants", "--data-dir", str(data), "--n-trials", "4", *common)
    assert done.returncode == 0 and "budget 4, 3 finished" in done.stdout, done.stdout + done.stderr
    line = one_error_line(run_search("worker", "--study", "plants", "--data-dir", str(data), "--label", "colour",
                                     *common))
    assert "study 'plants' reads its data with --label 'species', not 'colour'; drop --label" in line
    other = tmp_path / "other.csv"
    synthetic_table(600).drop(columns=["count"]).to_csv(other, index=False)
    line = one_error_line(run_search("worker", "--study", "plants", "--data-dir", str(other), *common))
    assert "study 'plants' trains on data whose inputs are" in line and "point --data-dir" in line

    stored, retrained = tmp_path / "stored.pt", tmp_path / "retrained.pt"
    done = run_search("best", "--study", "plants", "--export", str(stored), *common)
    assert done.returncode == 0, done.stderr
    done = run_search("best", "--study", "plants", "--export", str(retrained), "--retrain", "--data-dir", str(data),
                      *common)
    assert done.returncode == 0, done.stdout + done.stderr
    for path in stored, retrained:
        metadata = torch.load(path, weights_only=True)["metadata"]
        assert metadata["class_names"] == ["setosa", "versicolor", "virginica"]
        assert metadata["preprocessing"]["inputs"][2:5] == ["colour=blue", "colour=green", "colour=red"]
        assert metadata["data_options"] == LABEL
    evaluated = run_search("evaluate", str(retrained), "--data-dir", str(data), "--json")
    assert evaluated.returncode == 0, evaluated.stderr
    result = json.loads(evaluated.stdout)
    assert result["test_accuracy"] == pytest.approx(torch.load(retrained, weights_only=True)["metadata"]["test_accuracy"],
                                                    abs=1e-9)
    assert set(result["per_class_accuracy"]) == {"setosa", "versicolor", "virginica"}


def test_the_table_module_is_the_only_place_that_knows_it():
    """Adding the data set was one module: the registry finds it, the command line offers it."""
    assert table.DATASET.name == "table" and table.DATASET.options == (table.LABEL,)
    done = run_search("run", "--help")
    assert "--label COLUMN" in done.stdout and "table" in done.stdout
