"""The artifact store's names and payloads, in one place.

* A checkpoint is a trainer's ``state_dict`` (model, optimizer, RNG states, epoch) saved
  with ``torch.save``, under ``checkpoints/<token>-<trial id, hex>-e<epoch>-<random>.pt``;
  the trial's ``checkpoint`` attr (``keys.Checkpoint``) names it.
* A trial's final weights are ``{"model_state_dict", "model_hyperparameters"}`` (the
  first two entries of an exported file, ``models.exported``), saved under the artifact
  id ``<token>-<trial id, hex>-<uuid>`` and listed as ``trial-<number>-weights.pt`` for
  optuna-dashboard.
* Every name starts with the study's token and the writing trial's id, so the sweep can
  tell a study's files, and which trial wrote each, from the name alone.
"""

from __future__ import annotations

import re
import uuid
from typing import Any

from search import keys

CHECKPOINTS = "checkpoints"  # the folder (or key prefix) of checkpoints
_WRITER = re.compile(rf"^\.?(?P<token>[0-9a-f]{{{keys.TOKEN_LENGTH}}})-(?P<trial>[0-9a-f]+)-")


def checkpoint_key(name: str) -> str:
    return f"{CHECKPOINTS}/{name}"


def new_checkpoint_name(token: str, trial_id: int, epoch: int) -> str:
    return f"{token}-{trial_id:x}-e{epoch}-{uuid.uuid4().hex[:8]}.pt"


def new_weights_id(token: str, trial_id: int) -> str:
    return f"{token}-{trial_id:x}-{uuid.uuid4()}"  # hex and dashes: the dashboard's URL form


def weights_filename(trial_number: int) -> str:
    return f"trial-{trial_number}{keys.WEIGHTS_SUFFIX}"


def writer(name: str) -> tuple[str, int] | None:
    """The token and trial id in a file's name (a temporary's too); None if it has none."""
    match = _WRITER.match(name.rpartition("/")[2])
    return None if match is None else (match["token"], int(match["trial"], 16))


def weights_payload(model: Any, hyperparameters: dict[str, Any]) -> dict[str, Any]:
    """A model's final weights as the store keeps them (on the CPU)."""
    from models.exported import HYPERPARAMETERS, STATE_DICT

    return {STATE_DICT: {key: value.detach().cpu() for key, value in model.state_dict().items()},
            HYPERPARAMETERS: hyperparameters}


def read_weights(payload: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The state dict and hyperparameters of a weights payload."""
    from models.exported import HYPERPARAMETERS, STATE_DICT

    return payload[STATE_DICT], payload[HYPERPARAMETERS]
