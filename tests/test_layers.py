"""The layering is a contract (pyproject.toml, ``[tool.importlinter]``), checked by
import-linter: the tree keeps it, and a tree with one import pointing the wrong way, of
each kind the contracts forbid, breaks it."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.workers import REPO

LINT = Path(sys.executable).with_name("lint-imports")


def lint(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(LINT), "--no-cache"], capture_output=True, text=True, cwd=root, timeout=300)


def test_the_tree_keeps_every_contract():
    done = lint(REPO)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 broken" in done.stdout


@pytest.mark.parametrize("module, wrong_way", [
    ("models/mlp.py", "import objectives.space"),  # models imports nothing of the project
    ("objectives/data.py", "import search.keys"),  # objectives never imports search
    ("search/storage/url.py", "import search.worker.loop"),  # storage is below the worker
    ("search/study/join.py", "import search.artifacts.store"),  # study and artifacts are independent
    ("search/worker/loop.py", "import search.commands.status"),  # the worker is below the commands
    ("search/storage/optuna_adapter/slots.py", "import search.storage.failures"),  # the adapter is innermost
    ("objectives/training/trainer.py", "import objectives.space"),  # training is below the space
])
def test_an_import_the_wrong_way_breaks_a_contract(tmp_path, module, wrong_way):
    for name in ("search", "objectives", "models"):
        shutil.copytree(REPO / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", tmp_path)
    path = tmp_path / module
    path.write_text(path.read_text() + f"\n{wrong_way}  # the wrong way\n")
    done = lint(tmp_path)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "BROKEN" in done.stdout and module.removesuffix(".py").replace("/", ".") in done.stdout, done.stdout
