"""The Optuna objective and the trainer, end to end on CPU with tiny real-format data."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
import pytest
import torch
from optuna.trial import TrialState

from models import build_mlp
from objectives import space
from objectives.data import Dataset, Split
from objectives.datasets import load_dataset
from objectives.objective import EpochHooks, ObjectiveSettings, make_objective
from objectives.training.augmentation import Augmenter
from objectives.training.trainer import Trainer, TrainingDiverged, TrainingSettings
from search.study.pruner import make_pruner

CPU = torch.device("cpu")
GOOD: dict[str, Any] = {
    "n_layers": 1, "n_units_l0": 128, "activation": "relu", "dropout": 0.0, "batch_norm": False,
    "optimizer": "adam", "learning_rate": 3e-3, "weight_decay": 1e-5, "batch_size": 64,
    "warmup_epochs": 0.0, "label_smoothing": 0.0, "max_shift": 0, "flip": False,
}
BAD: dict[str, Any] = {**GOOD, "optimizer": "sgd", "learning_rate": 1e-5, "batch_size": 1024}


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """These models are tiny: a second intra-op thread only adds synchronisation on a busy CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def fashion(fashion_dir: Path) -> Dataset:
    return load_dataset("fashion_mnist", fashion_dir)


@pytest.fixture(scope="module")
def cover(covtype_dir: Path) -> Dataset:
    return load_dataset("covtype", covtype_dir)


def wide(dataset: Dataset) -> space.Space:
    """The former, wider space (GOOD's small batch and BAD's SGD are in it) with the default
    file's optional training tables."""
    default = space.load_space(None, dataset.name)
    return {**space.load_space(space.UNSTORED_FILE, dataset.name),
            **{name: entry for name, entry in default.items() if name in space.OPTIONAL}}


def new_study(seed: int = 0) -> optuna.Study:
    return optuna.create_study(direction="maximize", pruner=make_pruner(),
                               sampler=optuna.samplers.RandomSampler(seed=seed))


class Recorder(EpochHooks):
    """Keeps what the objective hands its hooks: per-epoch losses and the final weights."""

    def __init__(self) -> None:
        self.losses: dict[int, list[float]] = {}
        self.weights: dict[int, dict[str, torch.Tensor]] = {}
        self.checkpoints: dict[int, bytes] = {}
        self.seeds: dict[int, int] = {}

    def trial_seed(self, trial: optuna.Trial, base_seed: int) -> int:
        self.seeds[trial.number] = super().trial_seed(trial, base_seed)
        return self.seeds[trial.number]

    def epoch_end(self, trial: optuna.Trial, trainer: Trainer, val_accuracy: float,
                  train_loss: float, last: bool) -> None:
        self.losses.setdefault(trial.number, []).append(train_loss)
        buffer = io.BytesIO()
        torch.save(trainer.state_dict(), buffer)  # as search.artifacts.ArtifactStore.save_checkpoint does
        self.checkpoints[trial.number] = buffer.getvalue()

    def finished(self, trial: optuna.Trial, trainer: Trainer, val_accuracy: float) -> None:
        self.weights[trial.number] = {k: v.clone() for k, v in trainer.model.state_dict().items()}


@pytest.mark.parametrize("name", ["fashion_mnist", "covtype"])
def test_objective_end_to_end(name: str, fashion: Dataset, cover: Dataset) -> None:
    dataset = fashion if name == "fashion_mnist" else cover
    epochs = 2
    study = new_study()
    study.enqueue_trial(GOOD)
    recorder = Recorder()
    study.optimize(make_objective(dataset, ObjectiveSettings(epochs=epochs, device=CPU, space=wide(dataset)), recorder), n_trials=3)

    trials = study.get_trials()
    assert len(trials) == 3
    assert all(t.state == TrialState.COMPLETE for t in trials)  # no pruning before 5 trials
    for trial in trials:
        assert 0.0 <= trial.value <= 1.0
        assert sorted(trial.intermediate_values) == list(range(1, epochs + 1))
        assert trial.intermediate_values[epochs] == trial.value
        assert all(0.0 <= v <= 1.0 for v in trial.intermediate_values.values())
        assert recorder.seeds[trial.number] == trial.number  # base seed 0
    good = trials[0]
    assert good.params == GOOD
    chance = 1 / dataset.n_classes
    assert good.value >= max(0.6, 3 * chance), good.intermediate_values


def test_pruning_stops_a_bad_trial(fashion: Dataset) -> None:
    epochs = 3
    study = new_study()
    for _ in range(5):
        study.enqueue_trial(GOOD)
    study.enqueue_trial(BAD)
    study.optimize(make_objective(fashion, ObjectiveSettings(epochs=epochs, device=CPU, space=wide(fashion))), n_trials=6)

    trials = study.get_trials()
    assert [t.state for t in trials[:5]] == [TrialState.COMPLETE] * 5
    bad = trials[5]
    assert bad.params == BAD
    assert bad.state == TrialState.PRUNED
    assert bad.intermediate_values, "the pruned trial reported nothing"
    assert max(bad.intermediate_values) < epochs
    assert bad.intermediate_values[1] < min(t.intermediate_values[1] for t in trials[:5])


def run_one(dataset: Dataset, params: dict[str, Any], seed: int, epochs: int = 2,
            hooks: EpochHooks | None = None) -> tuple[optuna.trial.FrozenTrial, Recorder]:
    recorder = hooks if isinstance(hooks, Recorder) else Recorder()
    study = new_study()
    study.enqueue_trial(params)
    study.optimize(make_objective(dataset, ObjectiveSettings(epochs=epochs, device=CPU, seed=seed, space=wide(dataset)),
                                  recorder), n_trials=1)
    return study.trials[0], recorder


@pytest.mark.parametrize("name", ["fashion_mnist", "covtype"])
def test_same_seed_same_result(name: str, fashion: Dataset, cover: Dataset) -> None:
    dataset = fashion if name == "fashion_mnist" else cover
    params = {**GOOD, "dropout": 0.2, "batch_norm": True}  # the global RNG matters too
    first, rec1 = run_one(dataset, params, seed=7)
    second, rec2 = run_one(dataset, params, seed=7)
    assert first.state == second.state == TrialState.COMPLETE
    assert first.value == second.value
    assert first.intermediate_values == second.intermediate_values
    assert rec1.losses[0] == rec2.losses[0]
    assert rec1.weights[0].keys() == rec2.weights[0].keys()
    for key in rec1.weights[0]:
        assert torch.equal(rec1.weights[0][key], rec2.weights[0][key]), key

    other, rec3 = run_one(dataset, params, seed=8)
    assert rec3.seeds[0] != rec1.seeds[0]
    assert rec3.losses[0] != rec1.losses[0]
    assert not torch.equal(rec3.weights[0]["1.weight"], rec1.weights[0]["1.weight"])


def test_resume_through_objective_hooks(fashion: Dataset) -> None:
    """A trial resumed from its epoch-1 checkpoint ends with the uninterrupted run's weights."""
    params = {**GOOD, "dropout": 0.2, "batch_norm": True}
    full, full_rec = run_one(fashion, params, seed=3, epochs=2)
    _, partial = run_one(fashion, params, seed=3, epochs=1)

    class Resume(Recorder):
        def resume(self, trial: optuna.Trial, trainer: Trainer) -> None:
            trainer.load_state_dict(torch.load(io.BytesIO(partial.checkpoints[0]), weights_only=True))

    resumed, resumed_rec = run_one(fashion, params, seed=3, epochs=2, hooks=Resume())
    assert sorted(resumed.intermediate_values) == [2]  # only the remaining epoch ran
    assert resumed.value == full.value
    for key, value in full_rec.weights[0].items():
        assert torch.equal(resumed_rec.weights[0][key], value), key


# --- divergence ----------------------------------------------------------------------------


def poisoned_dataset(bad_value: float, seed: int = 0) -> Dataset:
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn(300, 54, generator=generator)
    labels = torch.randint(0, 7, (300,), generator=generator)
    train_features = features[:200].clone()
    train_features[5] = bad_value  # one whole row
    train_features[77, 3] = bad_value  # and one cell
    return Dataset(
        name="covtype",
        train=Split(train_features, labels[:200]),
        validation=Split(features[200:250], labels[200:250]),
        test=Split(features[250:], labels[250:]),
        class_names=tuple(f"c{i}" for i in range(7)),
        input_mean=(0.0,) * 54,
        input_std=(1.0,) * 54,
    )


@pytest.mark.parametrize("bad_value", [float("inf"), float("nan")], ids=["inf", "nan"])
def test_trainer_detects_divergence(bad_value: float) -> None:
    dataset = poisoned_dataset(bad_value)
    torch.manual_seed(0)
    model = build_mlp(space.model_hyperparameters(GOOD, dataset))
    trainer = Trainer(model, space.training_settings(GOOD, 3), dataset.train, CPU, seed=0)
    with pytest.raises(TrainingDiverged, match="loss"):
        trainer.run_epoch()


def test_trainer_clean_data_does_not_diverge() -> None:
    dataset = poisoned_dataset(0.0)
    model = build_mlp(space.model_hyperparameters(GOOD, dataset))
    trainer = Trainer(model, space.training_settings(GOOD, 3), dataset.train, CPU, seed=0)
    loss = trainer.run_epoch()
    assert 0.0 < loss < 10.0 and trainer.epochs_done == 1


def test_diverging_trial_is_pruned_with_the_reason() -> None:
    study = new_study()
    study.enqueue_trial(GOOD)
    poisoned = poisoned_dataset(float("inf"))
    objective = make_objective(poisoned, ObjectiveSettings(epochs=3, device=CPU, space=wide(poisoned)))
    trial = study.ask()
    with pytest.raises(optuna.TrialPruned, match="loss.*epoch 1"):
        objective(trial)
    study.tell(trial, state=TrialState.PRUNED)
    assert study.trials[0].state == TrialState.PRUNED
    assert study.trials[0].intermediate_values == {}


def test_learning_rate_decays_on_a_cosine_over_the_trial() -> None:
    settings = space.training_settings(GOOD, 4)
    rates = [settings.learning_rate_at(epoch) for epoch in range(4)]
    assert rates[0] == GOOD["learning_rate"]
    assert rates == sorted(rates, reverse=True) and rates[-1] < 0.2 * rates[0]
    assert rates[2] == pytest.approx(0.5 * GOOD["learning_rate"])
    constant = TrainingSettings("adam", 1e-3, 0.0, 64)
    assert {constant.learning_rate_at(epoch) for epoch in range(5)} == {1e-3}


def test_warm_up_rises_linearly_then_the_cosine_takes_over() -> None:
    warm = TrainingSettings("adam", 1e-3, 0.0, 64, schedule_epochs=10, warmup_epochs=2)
    cold = TrainingSettings("adam", 1e-3, 0.0, 64, schedule_epochs=10)
    assert warm.learning_rate_at(0, 0.0) == 0
    assert warm.learning_rate_at(0, 0.5) == pytest.approx(0.25 * cold.learning_rate_at(0))
    assert warm.learning_rate_at(1, 0.5) == pytest.approx(0.75 * cold.learning_rate_at(1))
    assert [warm.learning_rate_at(e, f) for e, f in ((1, 1.0), (2, 0.3), (9, 0.9))] == [
        cold.learning_rate_at(e) for e in (1, 2, 9)]


def test_augmentation_flips_and_shifts_each_image_by_one_offset() -> None:
    generator = torch.Generator().manual_seed(0)
    images = torch.zeros(2000, 12, 10, dtype=torch.uint8)
    # Random content inside a blank 2-pixel border: a shift of up to 2 loses nothing.
    images[:, 2:-2, 2:-2] = torch.randint(1, 256, (2000, 8, 6), generator=generator, dtype=torch.uint8)
    features = images.flatten(1).clone()
    Augmenter((12, 10), max_shift=2, flip=True, n=2000, device=CPU, dtype=torch.uint8)(features, generator)
    seen = set()
    for original, augmented in zip(images, features.view(2000, 12, 10)):
        matches = [(dy, dx, flipped) for flipped in (False, True) for dy in range(-2, 3) for dx in range(-2, 3)
                   if torch.equal(torch.roll(original.flip(-1) if flipped else original, (dy, dx), (0, 1)),
                                  augmented)]
        assert len(matches) == 1
        seen.add(matches[0])
    assert len(seen) == 50  # every offset, flipped and not


def test_augmenting_rows_that_are_not_images_is_refused(cover: Dataset) -> None:
    with pytest.raises(ValueError, match="shifts and flips need images"):
        Trainer(build_mlp(space.model_hyperparameters(GOOD, cover)),
                space.training_settings({**GOOD, "flip": True}, 2), cover.train, CPU, seed=0)


# --- trainer checkpoint --------------------------------------------------------------------


AUGMENTED = {"warmup_epochs": 1.5, "label_smoothing": 0.1, "max_shift": 2, "flip": True}


@pytest.mark.parametrize("extra", [{}, AUGMENTED], ids=["plain", "augmented"])
def test_trainer_checkpoint_round_trip(fashion: Dataset, extra: dict[str, Any]) -> None:
    params = {**GOOD, "dropout": 0.2, "batch_norm": True, **extra}
    hyperparameters = space.model_hyperparameters(params, fashion)
    settings = space.training_settings(params, 4)
    assert settings == TrainingSettings("adam", 3e-3, 1e-5, 64, schedule_epochs=4, **extra)

    torch.manual_seed(11)
    trainer = Trainer(build_mlp(hyperparameters), settings, fashion.train, CPU, seed=11,
                      image_shape=fashion.image_shape)
    trainer.run_epoch()
    buffer = io.BytesIO()
    torch.save(trainer.state_dict(), buffer)  # serialised, as the worker's checkpoints are
    loss_a = trainer.run_epoch()
    result_a = {k: v.clone() for k, v in trainer.model.state_dict().items()}

    def resumed_trainer(load: bool) -> tuple[Trainer, float]:
        torch.manual_seed(999)  # a different global RNG and init: the state must restore both
        fresh = Trainer(build_mlp(hyperparameters), settings, fashion.train, CPU, seed=999,
                        image_shape=fashion.image_shape)
        if load:
            buffer.seek(0)
            fresh.load_state_dict(torch.load(buffer, weights_only=True))
            assert fresh.epochs_done == 1
        return fresh, fresh.run_epoch()

    resumed, loss_b = resumed_trainer(load=True)
    assert resumed.epochs_done == 2
    assert loss_b == loss_a
    state_b = resumed.model.state_dict()
    assert state_b.keys() == result_a.keys()
    for key, value in result_a.items():
        assert torch.equal(state_b[key], value), key

    # Control: without the checkpoint the same epoch gives other weights.
    unrelated, _ = resumed_trainer(load=False)
    assert not torch.equal(unrelated.model.state_dict()["1.weight"], result_a["1.weight"])
