"""How a worker works (apart from which study it joins: ``search.study.spec.StudyRequest``)."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.engine import URL

from search.storage.connection import REPLY_TIMEOUT_S
from search.storage.failures import RECONNECT_PATIENCE_S


@dataclass(frozen=True)
class WorkerConfig:
    storage: URL  # checked (search.storage.parse_url)
    artifacts: str
    data_dir: str | None = None  # None: each data set's default place
    device: str = "auto"
    precision: str = "auto"  # objectives.training.device.PRECISIONS
    seed: int = 0  # worker k's sampler uses seed + k; trial n trains with a seed derived from it
    timeout: float | None = None  # stop claiming after this many seconds
    heartbeat_interval: float = 10
    grace_period: float = 90
    keep_best: int = 5
    checkpoint_every: int = 1
    db_patience: float = RECONNECT_PATIENCE_S
    reply_timeout: float = REPLY_TIMEOUT_S  # the database's and the object store's
