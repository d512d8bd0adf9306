"""Which trials a report's plots draw: all of a small study; of a big one, the best, the
ones that set a new best, and a fixed random sample, so that every plot stays readable
and the page small however many trials the study has. Plain functions of the trials."""

from __future__ import annotations

import random
from dataclasses import dataclass

from optuna.trial import FrozenTrial, TrialState

SAMPLE = 1000  # complete trials a plot draws at most (besides the best and the record setters)
BEST = 10  # trials highlighted by name
CURVES = 30  # up to this many trials with learning curves, each is drawn by name


@dataclass(frozen=True)
class Drawn:
    finished: list[FrozenTrial]  # every finished trial (complete, pruned, failed), in order
    complete: list[FrozenTrial]  # every complete one, in order
    best: list[FrozenTrial]  # the BEST best complete trials, best first
    shown: list[FrozenTrial]  # the complete trials the plots draw, in order
    maximize: bool

    @property
    def cut(self) -> bool:
        """Whether the plots draw a sample rather than every complete trial."""
        return len(self.shown) < len(self.complete)


def choose(trials: list[FrozenTrial], maximize: bool, seed: int = 0) -> Drawn:
    finished = [trial for trial in trials if trial.state.is_finished()]
    complete = [trial for trial in finished if trial.state == TrialState.COMPLETE]
    best = sorted(complete, key=lambda trial: (-trial.value if maximize else trial.value, trial.number))[:BEST]
    sample = random.Random(seed).sample(complete, SAMPLE) if len(complete) > SAMPLE else complete
    keep = {trial.number for trial in [*sample, *best, *record_setters(complete, maximize)]}
    return Drawn(finished=finished, complete=complete, best=best,
                 shown=[trial for trial in complete if trial.number in keep], maximize=maximize)


def record_setters(complete: list[FrozenTrial], maximize: bool) -> list[FrozenTrial]:
    """The trials that were the best so far when they finished, by number."""
    found, best = [], None
    for trial in complete:
        if best is None or (trial.value > best if maximize else trial.value < best):
            found.append(trial)
            best = trial.value
    return found


def best_so_far(complete: list[FrozenTrial], maximize: bool) -> tuple[list[int], list[float]]:
    """The best-so-far line as steps: at each record setter's number, its value."""
    setters = record_setters(complete, maximize)
    return [trial.number for trial in setters], [trial.value for trial in setters]
