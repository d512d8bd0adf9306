"""How a study stops unpromising trials: the ``--pruner`` choices, built from one place.

The choice is recorded with the study (user attr ``pruner``) like its objective: every
worker must prune by the same rule, or trials would be judged differently by whichever
worker happens to run them.

* ``median`` (the default): Optuna's ``MedianPruner`` rule. Workers apply it through
  ``search.sampling.HistoryMedianPruner``, which decides identically from the worker's
  incremental history instead of reading every trial at every report.
* ``hyperband`` / ``successive-halving``: Optuna's own pruners, resource = epochs. They
  read the study's trials at each report (their cost grows with the study); Optuna
  routes only their pruning decisions through Hyperband's brackets, not sampling.
"""

from __future__ import annotations

import optuna

PRUNERS = ("median", "hyperband", "successive-halving")
DEFAULT_PRUNER = "median"

# The median rule's settings, for Optuna's MedianPruner and the worker's HistoryMedianPruner.
MEDIAN_PRUNER = {"n_startup_trials": 5, "n_warmup_steps": 0}
# Keep the best third at each rung: with 10-30 epoch trials that gives 3-4 rungs.
REDUCTION_FACTOR = 3


def make_pruner(name: str = DEFAULT_PRUNER, epochs: int | None = None) -> optuna.pruners.BasePruner:
    """Optuna's pruner for ``name``; ``epochs`` (the study's) is Hyperband's largest resource."""
    if name == "median":
        return optuna.pruners.MedianPruner(**MEDIAN_PRUNER, interval_steps=1)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=epochs or "auto",
                                              reduction_factor=REDUCTION_FACTOR)
    if name == "successive-halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=REDUCTION_FACTOR)
    raise ValueError(f"unknown pruner {name!r}; choose one of {', '.join(PRUNERS)}")
