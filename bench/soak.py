"""What the soaks share: faults drawn at random for a while, and the report of what they did."""

from __future__ import annotations

import collections
import random
import time
from collections.abc import Callable, Mapping

import optuna

from search import keys


def inject(menu: Mapping[str, Callable[[], None]], minutes: float, every: tuple[float, float],
           started: float) -> collections.Counter[str]:
    """Every ``every`` seconds (drawn between the two), one fault of ``menu`` at random, for
    ``minutes``; each is said as it starts. Returns how often each was injected."""
    injected: collections.Counter[str] = collections.Counter()
    end = time.monotonic() + 60 * minutes
    while time.monotonic() + every[0] < end:
        time.sleep(random.uniform(*every))
        name = random.choice(list(menu))
        print(f"{time.monotonic() - started:7.0f} s  {name}", flush=True)
        menu[name]()
        injected[name] += 1
    return injected


def close_budget(url: str, study_name: str) -> int:
    """Set the study's budget to the slots opened so far, so that the run ends soon; returns
    it. A claim that read the old budget may still commit after the count (a claim takes
    the study's row lock, this write does not): count again after a pause until the count
    stands; once the new budget is written no claim passes it."""
    study = optuna.load_study(study_name=study_name, storage=url)
    closed = None
    while True:
        opened = sum(keys.CONTINUED_BY not in t.system_attrs for t in study.get_trials(deepcopy=False))
        if opened == closed:
            return closed
        study.set_user_attr(keys.BUDGET, opened)
        closed = opened
        time.sleep(2)


def report(injected: collections.Counter[str], exits: collections.Counter, result: Mapping[str, int]) -> None:
    print("faults injected:")
    for name, count in injected.most_common():
        print(f"  {count:4d}  {name}")
    print("worker exits (restarted while the soak ran):")
    for code, count in exits.most_common():
        print(f"  {count:4d}  exit {code}")
    print("result:")
    for name, value in result.items():
        print(f"  {value:>12,}  {name}")
