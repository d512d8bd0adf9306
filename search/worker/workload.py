"""What a worker trains, as the worker sees it: the real objectives
(``search.worker.training.Training``), or a stand-in in the scale benchmarks. This module
imports no torch: the worker loop runs without it there."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import optuna

if TYPE_CHECKING:
    from search.artifacts import ArtifactStore
    from search.study.spec import StudySpec


@dataclass(frozen=True)
class Joined:
    """What a workload learns once its worker has joined the study."""

    index: int  # the worker's index in the study (its GPU on a multi-GPU host)
    spec: StudySpec  # the study as joined: data set, epochs, data options
    space: dict[str, Any]  # the search space every worker of the study samples
    store: ArtifactStore  # checkpoints and weights, with the study's token
    say: Callable[[str], None]  # the worker's progress lines


class Workload(Protocol):
    device: str  # where it trains, once ``objective`` has chosen
    precision: str  # what its matmuls compute in (float32, bfloat16), likewise

    def check(self, spec: StudySpec) -> Mapping[str, Any] | None:
        """Read and check the data before anything is written anywhere. Returns what the
        data file held, for data sets described by their file (None for fixed ones)."""

    def objective(self, joined: Joined) -> Callable[[optuna.Trial], float]:
        """The objective, once the worker has joined (it knows its index and store)."""
