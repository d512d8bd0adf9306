"""The search space file: a file of the nine original tables reproduces the space that used
to be code, the optional tables add to it, an edited file changes what is sampled, and a bad
file is one clear line."""

from __future__ import annotations

import optuna
import pytest

from objectives import space
from search import keys
from search.study.compatibility import study_space


def former_suggest(trial: optuna.Trial) -> dict:
    """The search space as code, before the file (kept here as the reference)."""
    n_layers = trial.suggest_int("n_layers", 1, 3)
    for layer in range(n_layers):
        trial.suggest_int(f"n_units_l{layer}", 32, 1024, log=True)
    trial.suggest_categorical("activation", ("relu", "gelu", "silu"))
    trial.suggest_float("dropout", 0.0, 0.5)
    trial.suggest_categorical("batch_norm", (False, True))
    trial.suggest_categorical("optimizer", ("sgd", "adam", "adamw"))
    trial.suggest_float("learning_rate", 1e-5, 1e-1, log=True)
    trial.suggest_float("weight_decay", 1e-6, 1e-2, log=True)
    trial.suggest_categorical("batch_size", (64, 128, 256, 512, 1024))
    return dict(trial.params)


def sampled(suggest, n: int = 40, seed: int = 3) -> list[dict]:
    """Params of ``n`` TPE trials (random start, then the model) on a fixed toy value."""
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True,
                                                                   n_startup_trials=10))
    made = []
    for _ in range(n):
        trial = study.ask()
        params = suggest(trial)
        study.tell(trial, params["dropout"] + params["learning_rate"] * 10)
        made.append(params)
    return made




def test_the_file_studies_without_a_stored_space_sample_is_the_former_space_exactly():
    nine = space.load_space(space.UNSTORED_FILE, "fashion_mnist")
    assert list(nine) == list(space.KINDS)[:9]
    assert sampled(lambda trial: space.suggest(trial, nine)) == sampled(former_suggest)


def test_a_study_that_stored_no_space_keeps_sampling_the_former_default():
    study = optuna.create_study(direction="maximize")
    study.set_user_attr(keys.DATASET, "fashion_mnist")
    assert study_space(study) == space.load_space(space.UNSTORED_FILE, "fashion_mnist")
    assert study_space(study)["optimizer"] == {"choices": ["sgd", "adam", "adamw"]}


def test_the_default_space_fixes_what_measurably_helps():
    fashion = sampled(lambda trial: space.suggest(trial, space.load_space(None, "fashion_mnist")), n=20)
    # No augmentation (it lowered test accuracy), batch norm and AdamW always.
    assert {(params["max_shift"], params["flip"], params["batch_norm"], params["optimizer"])
            for params in fashion} == {(0, False, True, "adamw")}
    assert all(0 <= params["label_smoothing"] <= 0.15 and 0 <= params["warmup_epochs"] <= 2 for params in fashion)
    assert {params["n_layers"] for params in fashion} == {2, 3}
    covtype = sampled(lambda trial: space.suggest(trial, space.load_space(None, "covtype")), n=20)
    assert {(params["max_shift"], params["flip"]) for params in covtype} == {(0, False)}
    assert {params["batch_size"] for params in covtype} <= {512, 1024, 2048}
    # Trials of a space without the optional tables train as before them: none of each.
    settings = space.training_settings(sampled(lambda trial: space.suggest(
        trial, space.load_space(space.UNSTORED_FILE, "fashion_mnist")), n=1)[0], 5)
    assert (settings.warmup_epochs, settings.label_smoothing, settings.max_shift, settings.flip) == (0, 0, 0, False)


AUGMENTED = '[max_shift]         # training images shifted by up to this many pixels (0: none)\nvalue = 0\n'


def test_augmenting_table_rows_is_refused_with_the_fix(tmp_path):
    path = tmp_path / "space.toml"
    assert AUGMENTED in space.DEFAULT_FILE.read_text()
    path.write_text(space.DEFAULT_FILE.read_text().replace(AUGMENTED, "[max_shift]\nlow = 0\nhigh = 1\n"))
    with pytest.raises(space.SpaceError, match=r"\[max_shift\] augments images, and covtype rows are not images; "
                                                 r"add \[covtype.max_shift\] value = 0"):
        space.load_space(path, "covtype")
    assert space.load_space(path, "fashion_mnist")["max_shift"] == {"low": 0, "high": 1, "log": False}
    # A file without tables for a data set of rows leaves its shifts and flips off.
    path.write_text(path.read_text().replace("[covtype.batch_size]\nchoices = [512, 1024, 2048]\n", ""))
    assert space.load_space(path, "covtype")["max_shift"] == {"value": 0}


def test_an_edited_file_changes_what_is_sampled(tmp_path):
    edited = space.DEFAULT_FILE.read_text().replace('choices = ["gelu", "relu"]', 'value = "gelu"')
    edited += "\n[covtype.n_layers]\nlow = 2\nhigh = 2\n"
    path = tmp_path / "space.toml"
    path.write_text(edited)
    fashion = sampled(lambda trial: space.suggest(trial, space.load_space(path, "fashion_mnist")))
    assert {params["activation"] for params in fashion} == {"gelu"}
    assert {params["n_layers"] for params in fashion} == {2, 3}
    covtype = sampled(lambda trial: space.suggest(trial, space.load_space(path, "covtype")))
    assert {params["n_layers"] for params in covtype} == {2}


@pytest.mark.parametrize("edit, expected", [
    (lambda text: text + "\n[n_layers\n", "is not valid TOML"),
    (lambda text: text + "\n[depth]\nvalue = 3\n", "unknown table [depth]"),
    (lambda text: text + "\n[covtype.depth]\nvalue = 3\n", "unknown parameter [covtype.depth]"),
    (lambda text: text.replace("low = 5e-4", "low = 1.0"), "[learning_rate] low 1.0 is above high 0.004"),
    (lambda text: text.replace("low = 1e-5", "low = 0.0"), "[weight_decay] a log range needs low > 0"),
    (lambda text: text.replace('value = "adamw"', 'choices = ["lion", "adamw"]'),
     "[optimizer] 'lion' is not one of sgd, adam, adamw"),
    (lambda text: text.replace("high = 0.45", "high = 1.5"), "[dropout] 1.5 is not in [0, 1)"),
    (lambda text: text.replace("low = 512", "low = 32.5"), "[n_units] 32.5 is not a whole number"),
    (lambda text: text.replace("[batch_norm]\nvalue = true", "[batch_norm]\nchoices = []"),
     "[batch_norm] choices must be"),
    (lambda text: text.replace("[batch_size]\nchoices", "[batch_size]\nchoice"), "[batch_size] has choice"),
    (lambda text: text.replace("[activation]", "[activations]"), "unknown table [activations]"),
    (lambda text: text + "\n[covtype.dropout]\nvalue = 2\n", "[covtype.dropout] 2.0 is not in [0, 1)"),
    (lambda text: text.replace("[n_layers]          # hidden layers\nlow = 2\nhigh = 3\n", ""),
     "no [n_layers] table; every parameter needs one"),
])
def test_a_bad_file_is_one_clear_error(tmp_path, edit, expected):
    path = tmp_path / "space.toml"
    path.write_text(edit(space.DEFAULT_FILE.read_text()))
    with pytest.raises(space.SpaceError) as error:
        space.load_space(path, "fashion_mnist")
    assert expected in str(error.value) and str(path) in str(error.value)
    assert "\n" not in str(error.value)
