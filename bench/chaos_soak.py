"""A randomized chaos soak: real workers on real Fashion-MNIST while faults rain down.

Four ``search worker`` processes (restarted when they die, as an orchestrator would)
train one study on a throwaway PostgreSQL server behind a TCP proxy. Every 15-40 s
(``--every``) one fault, drawn at random: kill -9, SIGTERM or SIGSTOP (5-30 s) of a
worker, a network partition (10-50 s), dropped connections, a lost commit reply on a
claim or on a retry's creation, a fast server restart, a server stop (10-35 s). After
``--minutes`` the faults stop, the budget is set to the slots the study has opened so
far (so the run ends soon), and the workers finish. Then it prints what must be zero:
lost slots (a slot whose chain ends in a failure with no continuation), duplicated
slots (a failure continued twice), orphaned trials (RUNNING or WAITING left behind),
orphaned files (in the artifact directory but named by nothing), and the directory's
size against its bound (best --keep-best weights + one checkpoint per running trial,
sampled every 2 s during the run).

    python -m bench.chaos_soak [--minutes 20] [--workers 4] [--epochs 2] [--data-dir DIR] [--quick]
"""

from __future__ import annotations

import argparse
import collections
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import optuna
from optuna.trial import TrialState

from bench.soak import close_budget, inject, report
from search import keys
from tests.support.postgres import PostgresServer
from tests.support.proxy import FaultProxy
from tests.support.workers import search_env

STUDY = "chaos"
KEEP_BEST = 5
# What must be zero at the end.
MUST_BE_ZERO = ("lost slots (budget - finished)", "duplicated slots (a failure continued twice, a chain with two heads)",
                "orphaned trials (RUNNING or WAITING)", "orphaned files")
QUICK_FAULTS = ("kill -9 a worker", "SIGTERM a worker", "drop every connection", "lose a claim's commit reply",
                "server restart")  # the ones over in a second or two


def without_budget(command: list[str]) -> list[str]:
    """A restarted worker joins with the study's own budget: with --n-trials, one whose join
    lands after ``close_budget`` would raise the budget again, and the soak would not end."""
    at = command.index("--n-trials")
    return command[:at] + command[at + 2:]


class Fleet:
    """The workers, restarted two seconds after they exit while the soak runs."""

    def __init__(self, command: list[str], count: int, logs: Path) -> None:
        self.command, self.logs = command, logs
        self.processes: list[subprocess.Popen[bytes] | None] = [None] * count
        self.exits: collections.Counter[int] = collections.Counter()
        self.restarting = True
        self.lock = threading.Lock()
        self.started = 0
        for slot in range(count):
            self.start(slot)
        threading.Thread(target=self.supervise, daemon=True).start()

    def start(self, slot: int) -> None:
        self.started += 1
        log = open(self.logs / f"worker-{slot}-{self.started}.log", "wb")
        env = {**search_env(), "OMP_NUM_THREADS": "1"}
        self.processes[slot] = subprocess.Popen(self.command if self.started <= len(self.processes)
                                                else without_budget(self.command),
                                                stdout=log, stderr=subprocess.STDOUT, env=env)

    def supervise(self) -> None:
        while True:
            time.sleep(1)
            with self.lock:
                for slot, process in enumerate(self.processes):
                    if process is not None and process.poll() is not None:
                        self.exits[process.returncode] += 1
                        self.processes[slot] = None
                        if self.restarting:
                            time.sleep(2)
                            self.start(slot)

    def pick(self) -> subprocess.Popen[bytes] | None:
        with self.lock:
            alive = [p for p in self.processes if p is not None and p.poll() is None]
        return random.choice(alive) if alive else None

    def wait(self, timeout: float) -> None:
        self.restarting = False
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if all(p is None or p.poll() is not None for p in self.processes):
                    break
            time.sleep(1)
        time.sleep(1.5)  # let the supervisor count the last exits
        with self.lock:
            for process in self.processes:
                if process is not None and process.poll() is None:
                    process.kill()
                    self.exits["killed after the soak"] += 1


def faults(server: PostgresServer, proxy: FaultProxy, fleet: Fleet) -> dict[str, callable]:
    def signal_worker(sig: int) -> None:
        process = fleet.pick()
        if process is not None:
            process.send_signal(sig)

    def sigstop() -> None:
        process = fleet.pick()
        if process is not None:
            process.send_signal(signal.SIGSTOP)
            time.sleep(random.uniform(5, 30))
            process.send_signal(signal.SIGCONT)

    def partition() -> None:
        proxy.partition()
        time.sleep(random.uniform(10, 50))
        proxy.heal()

    def server_stop() -> None:
        server.pg_ctl("stop")
        time.sleep(random.uniform(10, 35))
        server.pg_ctl("start")

    return {
        "kill -9 a worker": lambda: signal_worker(signal.SIGKILL),
        "SIGTERM a worker": lambda: signal_worker(signal.SIGTERM),
        "SIGSTOP a worker 5-30 s": sigstop,
        "partition 10-50 s": partition,
        "drop every connection": proxy.reset,
        "lose a claim's commit reply": lambda: proxy.cut_after_commit(keys.OWNER),
        "lose a retry's commit reply": lambda: proxy.cut_after_commit(keys.FAIL_CAUSE),
        "server restart": server.restart,
        "server stop 10-35 s": server_stop,
    }


def sample_disk(artifacts: Path, url: str, stop: threading.Event, peaks: dict[str, int]) -> None:
    storage = optuna.storages.RDBStorage(url, engine_kwargs={"pool_pre_ping": True})
    while not stop.wait(2):
        try:
            checkpoints = sum(1 for _ in (artifacts / "checkpoints").iterdir())
            weights = sum(1 for p in artifacts.iterdir() if p.is_file())
            study_id = storage.get_study_id_from_name(STUDY)
            running = len(storage.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,)))
        except Exception:
            continue  # the server is away: sample again later
        peaks["checkpoints over 2 per running trial"] = max(peaks.get("checkpoints over 2 per running trial", 0),
                                                            checkpoints - 2 * running)
        peaks["weights files"] = max(peaks.get("weights files", 0), weights)


def verdict(url: str, artifacts: Path) -> dict[str, int]:
    trials = optuna.load_study(study_name=STUDY, storage=url).get_trials(deepcopy=False)
    budget = optuna.load_study(study_name=STUDY, storage=url).user_attrs[keys.BUDGET]
    current = [t for t in trials if keys.CONTINUED_BY not in t.system_attrs]
    continued = collections.Counter(t.system_attrs[keys.CONTINUED_BY] for t in trials
                                    if keys.CONTINUED_BY in t.system_attrs)
    chains = collections.Counter(t.system_attrs.get(keys.FAILED_TRIAL) for t in current
                                 if keys.FAILED_TRIAL in t.system_attrs)
    listed = {k.removeprefix(keys.ARTIFACTS_PREFIX) for t in trials for k in t.system_attrs
              if k.startswith(keys.ARTIFACTS_PREFIX)}
    files = [p for p in artifacts.iterdir() if p.is_file()] + list((artifacts / "checkpoints").iterdir())
    return {
        "budget": budget,
        "finished slots": sum(t.state.is_finished() for t in current),
        "lost slots (budget - finished)": budget - sum(t.state.is_finished() for t in current),
        "failed by an error in training": sum(t.state == TrialState.FAIL for t in current),
        "duplicated slots (a failure continued twice, a chain with two heads)":
            sum(n - 1 for n in continued.values() if n > 1) + sum(n - 1 for n in chains.values() if n > 1),
        "orphaned trials (RUNNING or WAITING)": sum(not t.state.is_finished() for t in trials),
        "orphaned files": sum(p.name not in listed for p in files),
        "trials failed by a dead or stopped worker, continued": sum(continued.values()),
        "resumed from a checkpoint": sum(keys.RESUMED_FROM in t.user_attrs for t in trials),
        "weights kept": len(listed),
        "artifact bytes": sum(p.stat().st_size for p in files),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=20)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--every", type=float, nargs=2, default=(15, 40), metavar=("MIN_S", "MAX_S"))
    parser.add_argument("--data-dir", default=None, help="Fashion-MNIST IDX files (default: the system copy)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="half a minute of the quick faults, to prove it runs (CI)")
    args = parser.parse_args()
    if args.quick:
        args.minutes, args.workers, args.epochs, args.every = 0.5, 2, 1, (4, 8)
    random.seed(args.seed)
    started = time.monotonic()
    server = PostgresServer()
    server.start()
    proxy = FaultProxy(server.port)
    stop_sampling = threading.Event()
    with tempfile.TemporaryDirectory(prefix="hpsearch-chaos-") as tmp:
        work = Path(tmp)
        url = server.new_database()
        artifacts = work / "artifacts"
        command = [sys.executable, "-m", "search.cli", "worker", "--storage",
                   url.replace(f":{server.port}/", f":{proxy.port}/"), "--study", STUDY,
                   "--objective", "fashion_mnist", "--n-trials", "100000", "--epochs", str(args.epochs),
                   "--artifacts", str(artifacts), "--device", "cpu", "--heartbeat-interval", "2",
                   "--grace-period", "20", "--keep-best", str(KEEP_BEST), "--seed", str(args.seed)]
        if args.data_dir:
            command += ["--data-dir", args.data_dir]
        try:
            fleet = Fleet(command, args.workers, work)
            peaks: dict[str, int] = {}
            threading.Thread(target=sample_disk, args=(artifacts, url, stop_sampling, peaks), daemon=True).start()
            menu = faults(server, proxy, fleet)
            if args.quick:
                menu = {name: fault for name, fault in menu.items() if name in QUICK_FAULTS}
            injected = inject(menu, args.minutes, args.every, started)
            proxy.heal()
            fleet.restarting = False  # a worker started now would raise the budget again (--n-trials)
            opened = close_budget(url, STUDY)
            print(f"{time.monotonic() - started:7.0f} s  faults stop; budget closed at {opened} slots", flush=True)
            fleet.wait(timeout=900)
            stop_sampling.set()
            result = verdict(url, artifacts)
        finally:
            proxy.close()
            server.stop()
        print(f"\n== chaos soak: {args.minutes:g} min of faults, {args.workers} workers, {args.epochs} epochs/trial, "
              f"real Fashion-MNIST, {time.monotonic() - started:.0f} s in all")
        report(injected, fleet.exits, result)
        print(f"  commits whose reply the proxy dropped: {proxy.cuts}")
        print(f"  artifact directory at the end: {result['weights kept']} weights files (bound: --keep-best "
              f"{KEEP_BEST}) and no checkpoint (bound: one per running trial, none running)")
        print(f"  while running, sampled every 2 s: at most {peaks.get('weights files', 0)} weights files; "
              f"checkpoints beyond two per running trial: {peaks.get('checkpoints over 2 per running trial', 0)}")
        ok = not any(result[name] for name in MUST_BE_ZERO) and result["weights kept"] <= KEEP_BEST
        print("PASS" if ok else "FAIL")
        sys.exit(0 if ok else 1)


if __name__ == "__main__":
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    main()
