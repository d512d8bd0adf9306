"""A multi-host soak: worker hosts that share nothing but the database and an object store,
while faults at the packet level rain down.

Hosts are network namespaces on one bridge (``tests.support.hosts``): PostgreSQL on one,
an S3-compatible store (moto's server) on another, ``--hosts`` worker hosts, each with a
private directory holding its own copy of the data and nothing else (the artifacts go to
the bucket). Each runs one ``search worker``, restarted when it exits, as an orchestrator
would. The first worker host's clock runs ten minutes ahead and the second's ten minutes
behind, for the whole run; the last one reaches the database through a slow link (a
delaying proxy in its path). Every 15-40 s (``--every``) one fault, drawn at random: a
worker host cut silently (10-40 s: past the grace period or not), a worker host's link
lossy (5 % of packets dropped, 30-60 s), the database host cut (20-45 s), the store host
cut (20-45 s), a worker host lost (every process killed at once, its directory deleted;
a fresh host takes its place 10 s later), a worker killed (-9) or stopped (SIGTERM).

After ``--minutes`` the faults stop, the budget is set to the slots opened so far, and
the workers finish. Then it prints what must be zero (lost, duplicated and orphaned
slots, orphaned objects in the bucket, trials that end before they start), how many
trials resumed on another host from the checkpoint the first host wrote, and the bucket
against its bound (sampled every 2 s: the best --keep-best weights, plus one checkpoint
per running trial, two for an instant), and PASS or FAIL.

    python -m bench.multihost_soak [--minutes 20] [--hosts 4] [--epochs 2] [--quick]
"""

from __future__ import annotations

import argparse
import collections
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import optuna
from optuna.trial import TrialState

from objectives.datasets import fashion_mnist
from bench.soak import close_budget, inject, report
from search import keys
from tests.support.datafiles import write_fashion_mnist
from tests.support.hosts import Host, Network
from tests.support.postgres import PostgresServer
from tests.support.s3 import S3Server
from tests.support.workers import REPO, search_env

STUDY = "soak"
KEEP_BEST = 3
BEAT, GRACE = 2, 20
SLOW_PORT = 6432
MUST_BE_ZERO = ("lost slots (budget - finished)", "duplicated slots (a failure continued twice)",
                "orphaned trials (RUNNING or WAITING)", "orphaned objects in the bucket",
                "trials that end before they start", "bucket over its bound (samples)")


class Fleet:
    """One worker per host, restarted two seconds after it exits while the soak runs (a
    lost host gets a fresh directory and copy of the data first)."""

    def __init__(self, cluster: Soak, hosts: list[Host]) -> None:
        self.cluster = cluster
        self.hosts = hosts
        self.processes: dict[str, subprocess.Popen[bytes] | None] = {host.name: None for host in hosts}
        self.exits: collections.Counter[int | str] = collections.Counter()
        self.down: set[str] = set()  # lost hosts, not restarted until they come back
        # Hosts cut off now: a worker started there (or while the database's or the store's
        # host is cut) could not reach them and would fail fast (exit 2, as documented); it
        # is started once the cut heals.
        self.cut: set[str] = set()
        # Every cut as (host, start, end or None): a worker whose start raced a cut and
        # exited 2 was refused as documented, not a failure of the soak.
        self.cuts: list[list] = []  # [host, start, end or None]
        self.started: dict[str, float] = {}
        self.restarting = True
        self.lock = threading.Lock()
        for host in hosts:
            self.start(host, budget=True)
        threading.Thread(target=self.supervise, daemon=True).start()

    def start(self, host: Host, budget: bool = False) -> None:
        # A restarted worker joins with the study's own budget: with --n-trials, one whose
        # join lands after close_budget would raise the budget again, and the soak would not end.
        self.started[host.name] = time.monotonic()
        self.processes[host.name] = self.cluster.worker(host, budget)

    def blocked(self, host: Host) -> bool:
        return bool({host.name, "db", "s3"} & self.cut)

    def refused_in_a_cut(self, host: Host, code: int) -> bool:
        """Exit 2 from a worker whose start overlapped a cut of its host, the database's or the store's."""
        began, now = self.started[host.name], time.monotonic()
        return code == 2 and any(name in (host.name, "db", "s3") and start <= now and (end is None or end >= began)
                                 for name, start, end in self.cuts)

    def supervise(self) -> None:
        while True:
            time.sleep(1)
            with self.lock:
                for host in self.hosts:
                    process = self.processes[host.name]
                    if process is not None and process.poll() is not None:
                        code = process.returncode
                        self.exits["2, started into a cut" if self.refused_in_a_cut(host, code) else code] += 1
                        self.processes[host.name] = None
                    if (self.processes[host.name] is None and self.restarting and host.name not in self.down
                            and not self.blocked(host)):
                        time.sleep(2)
                        if not self.blocked(host):
                            self.start(host)

    def pick(self) -> tuple[Host, subprocess.Popen[bytes]] | None:
        with self.lock:
            alive = [(host, self.processes[host.name]) for host in self.hosts
                     if self.processes[host.name] is not None and self.processes[host.name].poll() is None]
        return random.choice(alive) if alive else None

    def wait(self, timeout: float) -> None:
        self.restarting = False
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if all(p is None or p.poll() is not None for p in self.processes.values()):
                    break
            time.sleep(1)
        time.sleep(1.5)  # let the supervisor count the last exits
        with self.lock:
            for process in self.processes.values():
                if process is not None and process.poll() is None:
                    process.kill()
                    self.exits["killed after the soak"] += 1


class Soak:
    def __init__(self, network: Network, database: PostgresServer, store: S3Server, url: str, bucket: str,
                 epochs: int, data: Path, skews: dict[str, int], slow: str | None) -> None:
        self.network, self.database, self.store = network, database, store
        self.url, self.bucket, self.epochs, self.data = url, bucket, epochs, data
        self.skews, self.slow = skews, slow
        self.logs = Path(tempfile.mkdtemp(prefix="hpsearch-soak-"))
        self.proxy: subprocess.Popen[bytes] | None = None

    def slow_link(self, host: Host) -> None:
        """The delaying proxy in the slow host's path (started again after the host is lost)."""
        if self.proxy is not None and self.proxy.poll() is None:
            return
        self.proxy = subprocess.Popen(host.command(sys.executable, "-m", "tests.support.proxy", str(SLOW_PORT),
                                                   f"{self.database.host}:{self.database.port}", "--delay", "0.02"),
                                      env={**search_env(), "PYTHONPATH": str(REPO)}, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL)
        probe = host.command(sys.executable, "-c", f"import socket; socket.create_connection(('127.0.0.1', {SLOW_PORT}), 1)")
        deadline = time.monotonic() + 20
        while subprocess.run(probe, capture_output=True).returncode != 0 and time.monotonic() < deadline:
            time.sleep(0.2)

    def prepare(self, host: Host) -> None:
        """The host's own directory, with its own copy of the data."""
        (host.directory / "tmp").mkdir(parents=True, exist_ok=True)
        if not (host.directory / "data").exists():
            shutil.copytree(self.data, host.directory / "data")

    def worker(self, host: Host, budget: bool = True) -> subprocess.Popen[bytes]:
        self.prepare(host)
        storage = self.url
        if host.name == self.slow:
            self.slow_link(host)
            storage = self.url.replace(f"{self.database.host}:{self.database.port}", f"127.0.0.1:{SLOW_PORT}")
        command = host.named_command(
            sys.executable, "-m", "search.cli", "worker", "--storage", storage, "--study", STUDY, "--objective",
            "fashion_mnist", *(["--n-trials", "100000"] if budget else []), "--epochs", str(self.epochs),
            "--data-dir", str(host.directory / "data"), "--artifacts", f"s3://{self.bucket}/{STUDY}", "--device",
            "cpu", "--heartbeat-interval", str(BEAT), "--grace-period", str(GRACE), "--keep-best", str(KEEP_BEST))
        log = open(self.logs / f"{host.name}.log", "ab")
        env = {**search_env(), **host.env(), **self.store.env(), "OMP_NUM_THREADS": "1"}
        if host.name in self.skews:
            env.update(self.network.skewed_env(self.skews[host.name]))
        return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=host.directory, env=env)


def faults(soak: Soak, fleet: Fleet, quick: bool) -> dict[str, callable]:
    network = soak.network
    workers = [host for host in fleet.hosts]
    scale = 0.25 if quick else 1.0

    def cut(host: Host, low: float, high: float) -> None:
        with fleet.lock:
            fleet.cut.add(host.name)
            window = [host.name, time.monotonic(), None]
            fleet.cuts.append(window)
        host.cut()
        time.sleep(random.uniform(low, high) * scale)
        host.heal()
        with fleet.lock:
            fleet.cut.discard(host.name)
            window[2] = time.monotonic()

    def lossy() -> None:
        host = random.choice(workers)
        host.lossy(5)
        time.sleep(random.uniform(30, 60) * scale)
        host.heal()

    def lose() -> None:
        host = random.choice([host for host in workers if host.name not in fleet.down] or workers)
        fleet.down.add(host.name)
        host.lose()
        time.sleep(10 * scale)
        fleet.down.discard(host.name)  # a fresh host in its place: the supervisor starts it

    def signal_worker(sig: int) -> None:
        picked = fleet.pick()
        if picked is not None:
            picked[1].send_signal(sig)

    return {
        "cut a worker host (10-40 s)": lambda: cut(random.choice(workers), 10, 40),
        "a worker host's link lossy (5 %, 30-60 s)": lossy,
        "cut the database host (20-45 s)": lambda: cut(network.hosts["db"], 20, 45),
        "cut the object store host (20-45 s)": lambda: cut(network.hosts["s3"], 20, 45),
        "lose a worker host with its disk": lose,
        "kill -9 a worker": lambda: signal_worker(signal.SIGKILL),
        "SIGTERM a worker": lambda: signal_worker(signal.SIGTERM),
    }


def sample_bucket(soak: Soak, stop: threading.Event, peaks: dict[str, int]) -> None:
    storage = optuna.storages.RDBStorage(soak.url, engine_kwargs={"pool_pre_ping": True})
    while not stop.wait(2):
        try:
            stored = soak.store.objects(soak.bucket, f"{STUDY}/")
            study_id = storage.get_study_id_from_name(STUDY)
            running = len(storage.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,)))
        except Exception:  # noqa: BLE001 - a host is cut: sample again later
            continue
        weights = sum("/" not in key for key in stored)
        checkpoints = sum(key.startswith("checkpoints/") for key in stored)
        peaks["weights"] = max(peaks.get("weights", 0), weights)
        peaks["checkpoints beyond 2 per running trial"] = max(peaks.get("checkpoints beyond 2 per running trial", 0),
                                                              checkpoints - 2 * running)
        # Weights: the best K, plus, for an instant, those a worker just wrote before keep-best.
        if weights > KEEP_BEST + len(soak.network.hosts) or checkpoints > 2 * max(running, 1) + 2:
            peaks["over"] = peaks.get("over", 0) + 1


def host_of(label: str) -> str:
    """A worker's host, from its label ``hostname/pid`` (each host has its own name)."""
    return label.rsplit("/", 1)[0]


def verdict(soak: Soak, peaks: dict[str, int]) -> dict[str, int]:
    study = optuna.load_study(study_name=STUDY, storage=soak.url)
    trials = study.get_trials(deepcopy=False)
    by_number = {t.number: t for t in trials}
    budget = study.user_attrs[keys.BUDGET]
    current = [t for t in trials if keys.CONTINUED_BY not in t.system_attrs]
    continued = collections.Counter(t.system_attrs[keys.CONTINUED_BY] for t in trials
                                    if keys.CONTINUED_BY in t.system_attrs)
    listed = {k.removeprefix(keys.ARTIFACTS_PREFIX) for t in trials for k in t.system_attrs
              if k.startswith(keys.ARTIFACTS_PREFIX)}
    stored = soak.store.objects(soak.bucket, f"{STUDY}/")
    resumed = [t for t in trials if keys.RESUMED_FROM in t.user_attrs]
    across = [t for t in resumed if keys.FAILED_TRIAL in t.system_attrs and host_of(t.user_attrs[keys.WORKER])
              != host_of(by_number[t.system_attrs[keys.RETRY_HISTORY][-1]].user_attrs.get(keys.WORKER, "?/0"))]
    return {
        "budget": budget,
        "finished slots": sum(t.state.is_finished() for t in current),
        "lost slots (budget - finished)": budget - sum(t.state.is_finished() for t in current),
        "failed by an error in training": sum(t.state == TrialState.FAIL for t in current),
        "duplicated slots (a failure continued twice)": sum(n - 1 for n in continued.values() if n > 1),
        "orphaned trials (RUNNING or WAITING)": sum(not t.state.is_finished() for t in trials),
        "orphaned objects in the bucket": sum(key not in listed for key in stored),
        "trials that end before they start": sum(t.datetime_complete is not None and t.datetime_start is not None
                                                 and t.datetime_complete < t.datetime_start for t in trials),
        "trials failed by a lost, cut or stopped worker, continued": sum(continued.values()),
        "resumed from a checkpoint": len(resumed),
        "resumed on another host than the one that wrote the checkpoint": len(across),
        "weights in the bucket at the end": len(stored),
        "bucket bytes at the end": sum(stored.values()),
        "bucket over its bound (samples)": peaks.get("over", 0),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=20)
    parser.add_argument("--hosts", type=int, default=4, help="worker hosts")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--every", type=float, nargs=2, default=(15, 40), metavar=("MIN_S", "MAX_S"))
    parser.add_argument("--data-dir", type=Path, default=fashion_mnist.SYSTEM_DIR, help="Fashion-MNIST IDX files")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="a minute on small data, to prove it runs (CI)")
    args = parser.parse_args()
    random.seed(args.seed)
    started = time.monotonic()
    with Network() as network:
        db, s3 = network.add("db"), network.add("s3")
        hosts = [network.add(f"w{index + 1}") for index in range(2 if args.quick else args.hosts)]
        data = args.data_dir
        if args.quick:
            args.minutes, args.epochs, args.every = 1.0, 1, (8, 15)
            data = write_fashion_mnist(db.directory / "small-data", n_train=2400, n_test=200)
        database, store = PostgresServer(host=db.address, within=db.command()), S3Server(host=s3.address)
        database.start()
        store.start(prefix=s3.command())
        slow = hosts[-1]
        stop_sampling = threading.Event()
        soak = None
        try:
            soak = Soak(network, database, store, database.new_database(), store.new_bucket(), args.epochs, data,
                        skews={hosts[0].name: 600, hosts[1].name: -600}, slow=slow.name)
            fleet = Fleet(soak, hosts)
            peaks: dict[str, int] = {}
            threading.Thread(target=sample_bucket, args=(soak, stop_sampling, peaks), daemon=True).start()
            menu = faults(soak, fleet, args.quick)
            injected = inject(menu, args.minutes, args.every, started)
            for host in network.hosts.values():
                host.heal()
            fleet.down.clear()
            fleet.restarting = False  # a worker started now would raise the budget again (--n-trials)
            opened = close_budget(soak.url, STUDY)
            print(f"{time.monotonic() - started:7.0f} s  faults stop; budget closed at {opened} slots", flush=True)
            fleet.wait(timeout=900)
            stop_sampling.set()
            result = verdict(soak, peaks)
        finally:
            stop_sampling.set()
            if soak is not None and soak.proxy is not None:
                soak.proxy.kill()
            store.stop()
            database.stop()
    print(f"\n== multi-host soak: {args.minutes:g} min of faults, {len(hosts)} worker hosts (clocks +10 min and "
          f"-10 min on {hosts[0].name} and {hosts[1].name}, a slow link on {slow.name}), {args.epochs} epochs/trial, "
          f"{'small synthetic' if args.quick else 'real'} Fashion-MNIST, {time.monotonic() - started:.0f} s in all")
    report(injected, fleet.exits, result)
    print(f"  while running, sampled every 2 s: at most {peaks.get('weights', 0)} weights objects (bound: --keep-best "
          f"{KEEP_BEST}, plus one per worker for an instant); checkpoints beyond two per running trial: "
          f"{peaks.get('checkpoints beyond 2 per running trial', 0)}")
    # Exits as documented: 0 when the study is done, 143 after SIGTERM, -9 killed (a worker,
    # or a lost host's), 2 for one started as a cut began (it cannot reach the database or
    # the store); nothing else (no configuration error, no lost database).
    ok = (not any(result[name] for name in MUST_BE_ZERO) and result["weights in the bucket at the end"] <= KEEP_BEST
          and set(fleet.exits) <= {0, 143, -9, "2, started into a cut"})
    print(f"worker logs: {soak.logs}")
    print("PASS" if ok else "FAIL")
    if ok and args.quick:
        shutil.rmtree(soak.logs, ignore_errors=True)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    main()
