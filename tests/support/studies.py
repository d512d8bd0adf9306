"""Big studies, made in seconds: the trials a long search leaves behind, synthetic but shaped
like real ones, stored in bulk (``search.storage.optuna_adapter.bulk``).

Every trial has parameters from a real search space (``space.toml`` here, frozen), a worker, a seed and a device;
about 62 % complete (5 epochs), 30 % pruned (after 1 or 2 epochs, with a reason), 4 %
failed by an error (a few distinct reasons), 2 % failed by a lost worker and continued by
the next trial (which carries its ``retry_history``); the last ``running`` trials run,
part way through. Times advance 2 s per trial from 2026-01-01, so the same ``seed`` gives
the same study, byte for byte.
"""

from __future__ import annotations

import math
import random
from datetime import datetime, timedelta
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial, TrialState

from objectives import space
from search import keys
from search.storage import open_storage
from search.storage.optuna_adapter import study_id
from search.storage.optuna_adapter.bulk import add_trials
from search.study.join import join_study
from search.study.spec import StudySpec

EPOCHS = 5
SPACE = Path(__file__).with_name("space.toml")  # frozen: the golden views were drawn from it
BEGIN = datetime(2026, 1, 1)
REASONS = ("RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB",
           "TrainingDiverged: the training loss is nan at epoch 2",
           "OSError: [Errno 28] No space left on device")


def _params(rng: random.Random, count: int) -> list[tuple[dict, dict]]:
    """``count`` parameter sets (values, distributions) drawn from the real space."""
    sampled = []
    chosen = space.load_space(SPACE, "fashion_mnist")
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # no line per in-memory study
    try:
        while len(sampled) < count:  # a fresh in-memory study per 1,000: ask reads the whole of it
            study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=rng.randrange(2**31)))
            for _ in range(min(1000, count - len(sampled))):
                trial = study.ask()
                values = space.suggest(trial, chosen)
                sampled.append((values, dict(trial.distributions)))
                study.tell(trial, 0.0)
    finally:
        optuna.logging.set_verbosity(verbosity)
    return sampled


def _quality(values: dict, rng: random.Random) -> float:
    return min(0.93, 0.9 - 0.05 * abs(math.log10(values["learning_rate"]) + 3) + rng.gauss(0, 0.01))


def grown_trials(n: int, seed: int = 0, running: int = 0, first: int = 0) -> list[FrozenTrial]:
    """Trials numbered ``first`` to ``first + n - 1``; the last ``running`` of them run."""
    rng = random.Random(seed)
    drawn = _params(rng, n)
    made: list[FrozenTrial] = []
    number, end = first, first + n
    while number < end:
        values, distributions = drawn[number - first]
        start = BEGIN + timedelta(seconds=2 * number)
        user = {keys.SEED: number, keys.WORKER: f"node{number % 8}/{1000 + number % 97}", keys.DEVICE: "cuda:0"}
        system: dict = {}
        quality = _quality(values, rng)
        curve = {step: quality - 0.1 / step for step in range(1, EPOCHS + 1)}
        if number >= end - running:
            steps = {step: curve[step] for step in range(1, 1 + number % EPOCHS)}
            made.append(_trial(number, TrialState.RUNNING, None, start, None, values, distributions, steps, user, system))
            number += 1
            continue
        draw = rng.random()
        if draw < 0.02 and number + 1 < end - running:  # a lost worker's trial, continued by the next one
            lost = _trial(number, TrialState.FAIL, None, start, start + timedelta(seconds=40), values, distributions,
                          {1: curve[1]}, {**user, keys.FAIL_REASON: "the worker stopped sending heartbeats"},
                          {keys.CONTINUED_BY: number + 1})
            retry_start = start + timedelta(seconds=2)
            retry = _trial(number + 1, TrialState.COMPLETE, curve[EPOCHS], retry_start,
                           retry_start + timedelta(seconds=90), values, distributions, curve,
                           {**user, keys.RESUMED_FROM: 1}, {keys.FAILED_TRIAL: number, keys.RETRY_HISTORY: [number]})
            made += [lost, retry]
            number += 2
            continue
        if draw < 0.06:
            state, value, steps, seconds = TrialState.FAIL, None, {}, 5
            user[keys.FAIL_REASON] = REASONS[rng.randrange(len(REASONS))]
        elif draw < 0.36:
            epochs = 1 + rng.randrange(2)
            state, value, steps, seconds = TrialState.PRUNED, None, {s: curve[s] for s in range(1, epochs + 1)}, 25
            user[keys.PRUNED_REASON] = f"pruned at epoch {epochs} by the median pruner"
        else:
            state, value, steps, seconds = TrialState.COMPLETE, curve[EPOCHS], curve, 60 + rng.randrange(60)
        made.append(_trial(number, state, value, start, start + timedelta(seconds=seconds), values, distributions,
                           steps, user, system))
        number += 1
    return made


def _trial(number: int, state: TrialState, value: float | None, start: datetime, end: datetime | None, values: dict,
           distributions: dict, steps: dict, user: dict, system: dict) -> FrozenTrial:
    return FrozenTrial(number=number, state=state, value=value, values=None, datetime_start=start,
                       datetime_complete=end, params=values, distributions=distributions, user_attrs=user,
                       system_attrs=system, intermediate_values=steps, trial_id=-1)


def grow_study(url: str, name: str, n: int, seed: int = 0, running: int = 0,
               made: list[FrozenTrial] | None = None) -> None:
    """Create the study ``name`` at ``url`` as a worker does (budget ``n``) and store
    ``made``, by default ``grown_trials(n, seed, running)``, in it."""
    storage = open_storage(url)
    try:
        study, _, _ = join_study(storage, StudySpec(name=name, dataset="fashion_mnist", epochs=EPOCHS, n_trials=n))
        made = grown_trials(n, seed, running) if made is None else made
        add_trials(storage.transactions, study_id(study), made)
        continued = sum(keys.CONTINUED_BY in trial.system_attrs for trial in made)
        storage.set_study_system_attr(study_id(study), keys.CONTINUED_COUNT, continued)
        if storage.transactions.dialect.name == "postgresql":
            # A study written over days has been vacuumed and analysed by autovacuum; one
            # stored a second ago would be planned blind, and autovacuum would soon start
            # on it, competing with whatever is measured next.
            with storage.transactions.connect() as connection:
                connection.execution_options(isolation_level="AUTOCOMMIT").exec_driver_sql("VACUUM ANALYZE")
    finally:
        storage.close()
