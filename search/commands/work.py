"""``search run`` and ``search worker``: join a study and work until its budget is done
(``run`` then shows the study's status and how to export its best model)."""

from __future__ import annotations

from objectives.training.device import choose_device
from search.study.spec import StudyRequest
from search.worker.assembly import run_worker
from search.worker.config import WorkerConfig


def work(config: WorkerConfig, request: StudyRequest) -> str:
    """Work on the study ``request`` names (or the one it settles on); returns its name."""
    choose_device(config.device)  # refused before anything is opened
    worker = run_worker(config, request, say=lambda line: print(line, flush=True))
    worker.storage.close()
    return worker.spec.name
