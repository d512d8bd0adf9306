"""The bounded-cost sampling path: History's incremental reads, the pruner, TPE's log Phi."""

from __future__ import annotations

import math
import random
import warnings
from dataclasses import replace

import numpy as np
import optuna
import pytest
from optuna.trial import TrialState

from search.storage import open_storage, optuna_adapter
from search.study import history as history_module
from search.study.history import History
from search.study.join import join_study
from search.study.pruner import MEDIAN_PRUNER, HistoryMedianPruner, make_pruner, median
from search.study.sampler import BoundedSampler, make_sampler
from search.study.spec import StudySpec

SPEC = StudySpec("sampling", "fashion_mnist", 5)


@pytest.fixture
def joined(tmp_path):
    storage = open_storage(f"sqlite:///{tmp_path / 's.db'}", patience=20)
    study, _, _ = join_study(storage, replace(SPEC, n_trials=10))
    yield study, storage
    storage.close()


def finished(rng: random.Random, n: int, nan_share: float = 0.05) -> list[optuna.trial.FrozenTrial]:
    """Finished trials with 1-5 intermediate values (a few NaN), about a third pruned."""
    made = []
    for _ in range(n):
        steps = rng.randint(1, 5)
        values = {step: math.nan if rng.random() < nan_share else rng.gauss(0.8, 0.05) for step in range(1, steps + 1)}
        pruned = rng.random() < 0.3
        made.append(optuna.trial.create_trial(
            params={"x": rng.random()}, distributions={"x": optuna.distributions.FloatDistribution(0, 1)},
            intermediate_values=values, state=TrialState.PRUNED if pruned else TrialState.COMPLETE,
            value=None if pruned else rng.gauss(0.8, 0.05)))
    return made


def test_log_ndtr_is_optunas_on_whole_arrays():
    points = np.concatenate([np.linspace(-60, 60, 4001), [-20.0, -20.000001, -19.99999, 6.0, 6.000001, 0.0]])
    ours = optuna_adapter.log_ndtr(points)
    stock = optuna_adapter.STOCK_LOG_NDTR(points)
    assert np.all(np.isfinite(ours))
    np.testing.assert_allclose(ours, stock, rtol=1e-13, atol=1e-300)
    assert optuna_adapter.log_ndtr(np.array([])).shape == (0,)


def test_median_is_numpys_percentile_to_the_bit():
    rng = random.Random(1)
    for n in range(1, 40):
        values = sorted(rng.gauss(0, 1) for _ in range(n))
        assert median(values) == float(np.percentile(values, 50))
    assert math.isnan(median([]))


def test_history_read_incrementally_equals_a_full_read(joined):
    study, storage = joined
    rng = random.Random(2)
    history = History(storage, study)
    running = study.ask()  # unfinished at the first read, complete later: read again then
    running.report(0.9, 1)
    for batch in (7, 0, 30, 1):
        study.add_trials(finished(rng, batch))
        history.refresh()
    study.tell(running, 0.95)
    history.refresh()
    everything = study.get_trials(deepcopy=False)
    complete = [t for t in everything if t.state == TrialState.COMPLETE]
    assert history.finished == len(everything) == 39
    assert history.completed == len(complete)
    assert [t.number for t in history.best(len(complete))] == \
        [t.number for t in sorted(complete, key=lambda t: (-t.value, t.number))]
    for step in range(1, 6):
        expected = sorted(t.intermediate_values[step] for t in complete
                          if step in t.intermediate_values and not math.isnan(t.intermediate_values[step]))
        assert history.step_values(step) == expected
    assert not list(history.running())


def test_history_rereads_a_running_trial_once_its_params_are_written_or_when_asked(joined):
    study, storage = joined
    history = History(storage, study)
    trial = study.ask()
    trial_id = optuna_adapter.trial_id(trial)
    history.refresh()
    assert history.trial(trial_id).params == {}
    trial.suggest_float("x", 0, 1)
    history.refresh()
    assert history.trial(trial_id).params == trial.params  # the sampler's constant liar sees it
    trial.set_user_attr("seen", 1)
    history.refresh()
    assert history.trial(trial_id).user_attrs == {}  # unchanged state and params: not read again
    history.refresh(fresh=[trial_id])
    assert history.trial(trial_id).user_attrs == {"seen": 1}


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # numpy on all-NaN steps, as in Optuna
def test_the_pruner_decides_as_optunas_median_pruner(joined):
    study, storage = joined
    rng = random.Random(3)
    history = History(storage, study)
    ours, theirs = HistoryMedianPruner(history, **MEDIAN_PRUNER), make_pruner()
    decisions = 0
    for batch in (0, 3, 2, 10, 40):  # before and after the 5 startup trials
        study.add_trials(finished(rng, batch, nan_share=0.15))
        history.refresh()
        for _ in range(60):
            candidate = finished(rng, 1, nan_share=0.2)[0]
            assert ours.prune(study, candidate) == theirs.prune(study, candidate)
            decisions += ours.prune(study, candidate)
    assert decisions > 20  # the comparison covered both answers


def test_the_sampler_fits_a_bounded_history_with_the_best_and_every_running_trial(joined, monkeypatch):
    study, storage = joined
    monkeypatch.setattr(history_module, "BEST", 5)
    monkeypatch.setattr(history_module, "RECENT", 10)
    monkeypatch.setattr(history_module, "SAMPLE", 15)
    rng = random.Random(4)
    history = History(storage, study)
    study.add_trials(finished(rng, 500))
    running = [study.ask() for _ in range(3)]
    history.refresh()
    subset = history.sampler_trials()
    numbers = {t.number for t in subset}
    assert len(subset) <= 5 + 10 + 15 + 3
    assert {t.number for t in running} <= numbers
    assert {t.number for t in history.best(5)} <= numbers
    assert set(range(490, 500)) <= numbers  # the latest finished
    assert [t.number for t in subset] == sorted(numbers)
    assert numbers & set(range(0, 400))  # the sample reaches back
    # TPE's "good" set is sized from the whole history and lies among the best kept.
    assert history.gamma(len(subset)) == 5 and history.completed + history.pruned == 500


def test_below_the_bound_the_sampler_is_tpe_exactly(tmp_path):
    """While the history fits in the bound, BoundedSampler samples what TPESampler does."""
    def search(bounded: bool) -> list[dict]:
        storage = open_storage(f"sqlite:///{tmp_path / f'{bounded}.db'}", patience=20)
        study, _, _ = join_study(storage, replace(SPEC, n_trials=10))
        study.sampler = make_sampler(7)
        if bounded:  # as the worker sets it up
            history = History(storage, study)
            study.sampler = BoundedSampler(make_sampler(7, gamma=history.gamma), history)
        for _ in range(40):
            if bounded:
                history.refresh()
            trial = study.ask()
            x = trial.suggest_float("x", 1e-4, 1, log=True)
            y = trial.suggest_int("y", 1, 8)
            study.tell(trial, -(math.log10(x) + 2) ** 2 - (y - 3) ** 2)
        params = [t.params for t in study.get_trials()]
        storage.close()
        return params

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert search(bounded=True) == search(bounded=False)


def test_the_faster_log_phi_is_in_place_only_while_the_worker_samples(joined, monkeypatch):
    """No process-wide patch: plain Optuna in the same process keeps its own log Phi."""
    from search.storage.optuna_adapter import tpe

    study, storage = joined
    calls = []
    monkeypatch.setattr(tpe, "log_ndtr", lambda a: calls.append(1) or tpe.STOCK_LOG_NDTR(a))
    history = History(storage, study)
    study.sampler = BoundedSampler(make_sampler(3, gamma=history.gamma), history)
    for _ in range(14):
        history.refresh()
        trial = study.ask()
        study.tell(trial, trial.suggest_float("x", 0, 1))
        assert tpe._truncnorm._log_ndtr is tpe.STOCK_LOG_NDTR
    assert calls  # TPE sampled (after its 10 random trials) with the worker's log Phi
