"""Every study and trial attribute key this project reads or writes, in one place.

User attrs are what a person sees in optuna-dashboard; system attrs are bookkeeping.
Two keys are Optuna's own conventions (``failed_trial``, ``retry_history``: the ones
``RetryHeartbeatStaleTrialCallback`` writes), so Optuna's public helpers
``retried_trial_number`` / ``retry_history`` work on this project's retries too.
"""

from __future__ import annotations

METRIC_NAME = "val_accuracy"  # study.set_metric_names: the dashboard's label for the value

# --- study user attrs ----------------------------------------------------------
OBJECTIVE = "objective"  # which objective (dataset) the study trains
EPOCHS = "epochs"  # epochs per trial
SPACE = "search_space"  # the search space the study samples (objectives.space.load_space's dict)
PRUNER = "pruner"  # search.pruners.PRUNERS: how the study stops unpromising trials
BUDGET = "n_trials"  # the study-wide budget: trials that must finish (complete, pruned or failed)

# --- study system attrs --------------------------------------------------------
WORKERS = "hpsearch:workers"  # how many workers have joined; worker k seeds its sampler with seed + k
TOKEN = "hpsearch:token"  # a random id in the names of the study's files in the artifact directory

# --- trial user attrs ----------------------------------------------------------
SEED = "seed"  # the trial's training seed, inherited by its retries
WORKER = "worker"  # host/pid of the worker that ran (or is running) the trial
DEVICE = "device"
CHECKPOINT = "checkpoint"  # {"file", "epoch", "trial"}: the latest checkpoint, moved to a retry
RESUMED_FROM = "resumed_from_epoch"
FAIL_REASON = "fail_reason"  # the exception that failed the trial
PRUNED_REASON = "pruned_reason"

# --- trial system attrs --------------------------------------------------------
OWNER = "hpsearch:owner"  # "<worker>#<token>": written by the claim, read back when its reply is lost
CONTINUED_BY = "hpsearch:continued_by"  # on a trial failed by heartbeat or stop: its successor's number
CONTINUED_COUNT = "hpsearch:continued"  # study system attr: how many trials have a CONTINUED_BY
FAIL_CAUSE = "hpsearch:fail_cause"  # "stale" (worker silent) or "stopped" (SIGTERM/SIGINT, store error)
CRASHES = "hpsearch:crashes"  # stale failures so far in this slot's retry chain
REPLACES = "hpsearch:replaces"  # on a fresh trial queued after a chain used up its retries
FAILED_TRIAL = "failed_trial"  # Optuna's convention: the first trial of a retry chain
RETRY_HISTORY = "retry_history"  # Optuna's convention: every trial number of the chain so far
FIXED_PARAMS = "fixed_params"  # Optuna's: parameters given to enqueue_trial
ARTIFACTS_PREFIX = "artifacts:"  # Optuna's artifact listing, read by optuna-dashboard
WEIGHTS_SUFFIX = "-weights.pt"  # the file name a trial's final weights are listed under
