"""Every study and trial attribute key this project reads or writes, and the form of the
values that are more than a number or a string, in one place.

User attrs are what a person sees in optuna-dashboard; system attrs are bookkeeping.
Two keys are Optuna's own conventions (``failed_trial``, ``retry_history``: the ones
``RetryHeartbeatStaleTrialCallback`` writes), so Optuna's public helpers
``retried_trial_number`` / ``retry_history`` work on this project's retries too.
Stored keys and values never change meaning: studies written by earlier versions are
joined, reported and exported as they are.
"""

from __future__ import annotations

import enum
import uuid
from dataclasses import dataclass
from typing import Any

METRIC_NAME = "val_accuracy"  # study.set_metric_names: the dashboard's label for the value

# --- study user attrs ----------------------------------------------------------
# Which data set the study trains (the command line's --objective: the stored key
# predates the word "data set").
DATASET = "objective"
EPOCHS = "epochs"  # epochs per trial
SPACE = "search_space"  # the search space the study samples (objectives.space.load_space's dict)
PRUNER = "pruner"  # search.study.spec.PRUNERS: how the study stops unpromising trials
BUDGET = "n_trials"  # the study-wide budget: trials that must finish (complete, pruned or failed)
DATA_OPTIONS = "data_options"  # a data set's own options (a table's label column); absent: none
DATA = "data"  # {"class_names", "inputs", "input"}: what a table's file held (absent for fixed data sets)

# --- study system attrs --------------------------------------------------------
WORKERS = "hpsearch:workers"  # how many workers have joined; worker k seeds its sampler with seed + k
TOKEN = "hpsearch:token"  # a random id in the names of the study's files in the artifact store
TOKEN_LENGTH = 12  # hex digits

# --- trial user attrs ----------------------------------------------------------
SEED = "seed"  # the trial's training seed, inherited by its retries
WORKER = "worker"  # host/pid of the worker that ran (or is running) the trial
DEVICE = "device"
PRECISION = "precision"  # what its forward passes multiplied in: float32 or bfloat16
CHECKPOINT = "checkpoint"  # a Checkpoint: the latest checkpoint, moved to a retry
RESUMED_FROM = "resumed_from_epoch"
FAIL_REASON = "fail_reason"  # the exception that failed the trial
PRUNED_REASON = "pruned_reason"

# --- trial system attrs --------------------------------------------------------
OWNER = "hpsearch:owner"  # "<worker>#<token>": written by the claim, read back when its reply is lost
CONTINUED_BY = "hpsearch:continued_by"  # on a trial failed by heartbeat or stop: its successor's number
CONTINUED_COUNT = "hpsearch:continued"  # study system attr: how many trials have a CONTINUED_BY
FAIL_CAUSE = "hpsearch:fail_cause"  # a FailCause
CRASHES = "hpsearch:crashes"  # stale failures so far in this slot's retry chain
REPLACES = "hpsearch:replaces"  # on a fresh trial queued after a chain used up its retries
FAILED_TRIAL = "failed_trial"  # Optuna's convention: the first trial of a retry chain
RETRY_HISTORY = "retry_history"  # Optuna's convention: every trial number of the chain so far
FIXED_PARAMS = "fixed_params"  # Optuna's: parameters given to enqueue_trial
ARTIFACTS_PREFIX = "artifacts:"  # Optuna's artifact listing, read by optuna-dashboard
WEIGHTS_SUFFIX = "-weights.pt"  # the file name a trial's final weights are listed under


class FailCause(str, enum.Enum):
    """Why a running trial was failed and re-queued."""

    STALE = "stale"  # its worker went silent (killed, lost its host): counts as a crash
    STOPPED = "stopped"  # its worker was stopped (SIGTERM, SIGINT, a closed output, a store error)


@dataclass(frozen=True)
class Checkpoint:
    """The value of a trial's ``checkpoint`` attr: which file holds its latest state."""

    file: str  # a name in the artifact store's checkpoints
    epoch: int  # epochs trained when it was written
    trial: int | str  # the number of the trial that wrote it ("?" where unknown)

    def stored(self) -> dict[str, Any]:
        return {"file": self.file, "epoch": self.epoch, "trial": self.trial}

    @classmethod
    def read(cls, value: Any) -> Checkpoint | None:
        """The pointer in a stored value; None for none (cleared, or never written)."""
        if not isinstance(value, dict) or not value.get("file"):
            return None
        return cls(str(value["file"]), int(value.get("epoch", 0)), value.get("trial", "?"))


def new_token() -> str:
    """A study's artifact token."""
    return uuid.uuid4().hex[:TOKEN_LENGTH]
