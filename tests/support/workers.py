"""Starting real ``search`` subprocesses for the tests, and reading what they left behind."""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import optuna
from optuna.trial import TrialState

from tests.support.forks import ForkServer

REPO = Path(__file__).resolve().parents[2]
# Slow enough per epoch (about a second on one core, on the medium data set) to act in
# the middle of a trial.
# The reply timeout the fault tests give their workers (--reply-timeout; 30 s by default,
# asserted in tests/test_faults.py): an outage just past it exercises it in seconds.
REPLY_TIMEOUT = 5
SLOW_PARAMS = {"n_layers": 2, "n_units_l0": 1024, "n_units_l1": 1024, "activation": "relu",
               "dropout": 0.0, "batch_norm": False, "optimizer": "adam", "learning_rate": 1e-3,
               "weight_decay": 1e-5, "batch_size": 64}


def search_env() -> dict[str, str]:
    # Hermetic: no search settings, and no object store credentials, from the machine.
    env = {key: value for key, value in os.environ.items() if not key.startswith(("SEARCH_", "AWS_"))}
    # Several workers share two cores: one intra-op thread each avoids oversubscription.
    # The repository first; a PYTHONPATH already set stays behind it (packages installed
    # into a folder of their own, as on a borrowed GPU machine: bench/gpu_check.py).
    paths = [str(REPO), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    env.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", PYTHONPATH=os.pathsep.join(paths))
    return env


_forks: ForkServer | None = None
_forks_lock = threading.Lock()


def forks() -> ForkServer:
    """This test process's fork server (``tests.support.forks``), started at first use."""
    global _forks
    with _forks_lock:
        if _forks is None:
            _forks = ForkServer(search_env())
            atexit.register(_forks.close)
        return _forks


def run_search(*args: str, timeout: float = 300, cwd: Path | None = None,
               env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``search ARGS`` run to its end: a process of its own, forked without an
    interpreter's start-up (``tests.support.forks``)."""
    return forks().run(list(args), env={**search_env(), **(env or {})}, cwd=cwd or Path.cwd(), timeout=timeout)


def one_error_line(done: subprocess.CompletedProcess[str]) -> str:
    """The single ``search: error: ...`` line of a run that must fail with exit status 2."""
    assert done.returncode == 2, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("search: error: "), done.stderr
    return lines[0]


def start_worker(log: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    # A fresh interpreter, not a fork (run_search's): what these tests break on purpose
    # (signals, connections cut under a running worker) is exercised on exactly what a user runs.
    handle = open(log, "wb")
    return subprocess.Popen([sys.executable, "-m", "search.cli", "worker", *args],
                            stdout=handle, stderr=subprocess.STDOUT, env={**search_env(), **(env or {})})


def create_slow_study(url: str, name: str, n_trials: int, epochs: int) -> None:
    """A study as ``join_study`` makes it, with ``n_trials`` slow trials queued."""
    from search import keys

    study = optuna.create_study(study_name=name, storage=url, direction="maximize")
    study.set_user_attr(keys.DATASET, "fashion_mnist")
    study.set_user_attr(keys.EPOCHS, epochs)
    for _ in range(n_trials):
        study.enqueue_trial(SLOW_PARAMS)


def worker_args(storage: str, study: str, data_dir: Path, artifacts: Path | str, n_trials: int, epochs: int,
                heartbeat: float = 2, grace: float | None = None, extra: Sequence[str] = ()) -> list[str]:
    """Tests use short heartbeats; the grace period defaults to three of them."""
    return ["--storage", storage, "--study", study, "--objective", "fashion_mnist",
            "--data-dir", str(data_dir), "--artifacts", str(artifacts), "--n-trials", str(n_trials),
            "--epochs", str(epochs), "--heartbeat-interval", str(heartbeat),
            "--grace-period", str(grace if grace is not None else 3 * heartbeat), "--device", "cpu", *extra]


def wait_all(processes: Sequence[subprocess.Popen[bytes]], timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    codes = []
    for process in processes:
        try:
            codes.append(process.wait(timeout=max(1.0, deadline - time.monotonic())))
        except subprocess.TimeoutExpired:
            for other in processes:
                other.kill()
            raise
    return codes


def wait_until(condition: Callable[[], object], timeout: float, interval: float = 0.2) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(interval)
    raise TimeoutError(f"condition not met within {timeout} s")


def states(storage: str, study: str) -> dict[TrialState, int]:
    trials = optuna.load_study(study_name=study, storage=storage).get_trials(deepcopy=False)
    return {state: sum(t.state == state for t in trials) for state in TrialState}


def system_attrs(storage: str, study: str) -> dict[str, object]:
    rdb = optuna.storages.RDBStorage(storage)
    try:
        return rdb.get_study_system_attrs(rdb.get_study_id_from_name(study))
    finally:
        rdb.engine.dispose()


@contextlib.contextmanager
def dashboard(storage: str, artifacts: Path | str, cwd: Path, env: dict[str, str] | None = None,
              extra: Sequence[str] = (), log: Path | None = None) -> Iterator[Callable[[str], bytes]]:
    """A running ``search dashboard`` (its output into ``log``, if given); yields
    ``get(path)``, the body of a 200 answer."""
    from tests.support.postgres import free_port

    port = free_port()
    output = open(log, "wb") if log is not None else subprocess.DEVNULL
    server = subprocess.Popen([sys.executable, "-m", "search.cli", "dashboard", "--storage", storage,
                               "--artifacts", str(artifacts), "--port", str(port), *extra],
                              env={**search_env(), **(env or {})}, cwd=cwd, stdout=output,
                              stderr=subprocess.STDOUT if log is not None else subprocess.DEVNULL)

    def get(path: str) -> bytes:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
            assert response.status == 200
            return response.read()

    def answers() -> bool:
        try:
            return bool(get("/api/studies"))
        except OSError:
            return False

    try:
        wait_until(answers, timeout=60, interval=0.5)
        yield get
    finally:
        server.terminate()
        server.wait(timeout=30)
        if log is not None:
            output.close()


def logs(paths: Sequence[Path]) -> str:
    return "\n".join(f"--- {path.name}\n{path.read_text(errors='replace')[-3000:]}" for path in paths)


def kill_a_checkpointed_trials_worker(url: str, study: str, workers: dict[int, subprocess.Popen[bytes]],
                                      ) -> optuna.trial.FrozenTrial:
    """Wait for a running trial with a checkpoint, kill -9 its worker (removed from
    ``workers``) and return that trial."""
    def checkpointed_trial() -> optuna.trial.FrozenTrial | None:
        loaded = optuna.load_study(study_name=study, storage=url)
        for trial in loaded.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if trial.user_attrs.get("checkpoint", {}).get("epoch", 0) >= 1 and "worker" in trial.user_attrs:
                return trial
        return None

    victim = wait_until(checkpointed_trial, timeout=300)
    pid = int(victim.user_attrs["worker"].rsplit("/", 1)[1])
    os.kill(pid, signal.SIGKILL)
    workers.pop(pid).wait()
    return victim
