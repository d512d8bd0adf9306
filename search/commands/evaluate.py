"""``search evaluate``: the test-set and per-class accuracy of an exported file."""

from __future__ import annotations

import json

from models import ExportedModelError, load_exported, read_exported
from objectives.datasets import load_dataset, names
from objectives.training.trainer import predict, share_correct


def evaluate(path: str, data_dir: str | None, as_json: bool) -> int:
    metadata = read_exported(path)["metadata"]
    dataset = metadata.get("objective")
    if dataset not in names():
        raise ExportedModelError(f"{path}: its metadata names objective {dataset!r}, not one of "
                                 f"{', '.join(names())}; give a file written by search best --export")
    model = load_exported(path)
    outputs = model[-1].out_features
    class_names = metadata.get("class_names") or [str(index) for index in range(outputs)]
    if len(class_names) != outputs:
        raise ExportedModelError(f"{path}: its metadata names {len(class_names)} classes, but the model has "
                                 f"{outputs} outputs; the file was edited or mixes two models: export it again")
    test = load_dataset(dataset, data_dir, metadata.get("data_options") or {}).test
    width = model[1].in_features if len(model) > 1 else None
    if width != test.features.shape[1]:
        raise ExportedModelError(f"{path}: the model takes {width} inputs, but {dataset} test samples "
                                 f"have {test.features.shape[1]}; the file was edited or mixes two models: "
                                 f"export it again")
    predictions = predict(model, test.features)
    per_class = {}
    for index, name in enumerate(class_names):
        members = test.labels == index
        per_class[name] = (predictions[members] == index).float().mean().item() if members.any() else None
    result = {"path": str(path), "objective": dataset, "trial_number": metadata.get("trial_number"),
              "test_accuracy": share_correct(predictions, test.labels),  # what retraining recorded
              "n_test": len(test), "per_class_accuracy": per_class}
    if as_json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"{path}: {dataset} trial {result['trial_number']}, "
          f"test accuracy {result['test_accuracy']:.2%} on {len(test):,} samples")
    for name, value in per_class.items():
        print(f"  {name:<20} {'-' if value is None else f'{value:.2%}'}")
    return 0
