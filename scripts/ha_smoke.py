"""A search through a Patroni pair survives kill -9 of the leader: a tested recipe.

    scripts/ha-smoke [--workers 3] [--trials 8] [--epochs 3]

On this machine (Debian's `patroni` and `etcd-server`, `apt-get install patroni
etcd-server`): one etcd and two Patroni members on 127.0.0.1, PostgreSQL in synchronous
mode (a commit is acknowledged once the replica has it), `search worker`s given both
members in one URL with target_session_attrs=read-write. Once two trials have finished, the
leader is killed: its Patroni and its PostgreSQL, kill -9 (a lost machine). Patroni on the
replica takes the leader key when it expires (ttl 20 s) and promotes it; the workers find
it by themselves. Then it checks what the issue asks: every worker exits 0, the study ends
at exactly its budget, nothing RUNNING or WAITING, no trial failed, and every trial a worker
logged as finished is finished in the new leader. Prints PASS or FAIL (exit 0 or 1) and
tears everything down.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from tests.support.datafiles import write_fashion_mnist
from tests.support.postgres import find_pg_bin, free_port
from tests.support.workers import REPO, create_slow_study, logs, search_env

CONFIG = REPO / "deploy" / "patroni" / "patroni.yml"
PASSWORD = "smoke-only"


def say(line: str) -> None:
    print(f"[ha-smoke] {line}", flush=True)


def rest(port: int, path: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as error:
        return error.code, {}
    except OSError:
        return 0, {}


def wait(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        time.sleep(0.5)
    raise SystemExit(f"[ha-smoke] FAIL: {what} within {timeout:.0f} s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    for tool in ("patroni", "etcd"):
        if shutil.which(tool) is None:
            raise SystemExit(f"[ha-smoke] {tool} is not installed: apt-get install patroni etcd-server")
    root = Path(tempfile.mkdtemp(prefix="hpsearch-ha-"))
    shutil.chown(root, "postgres", "postgres")
    processes: list[subprocess.Popen] = []
    started = time.monotonic()
    passed = False
    try:
        etcd = free_port()
        processes.append(subprocess.Popen(
            ["etcd", "--data-dir", str(root / "etcd"), "--listen-client-urls", f"http://127.0.0.1:{etcd}",
             "--advertise-client-urls", f"http://127.0.0.1:{etcd}", "--listen-peer-urls",
             f"http://127.0.0.1:{free_port()}"], stdout=open(root / "etcd.log", "wb"), stderr=subprocess.STDOUT,
            start_new_session=True))
        members = {}
        for name in ("pg1", "pg2"):
            ports = {"rest": free_port(), "port": free_port()}
            pgpass = root / f"{name}.pgpass"
            environment = {
                "PATRONI_NAME": name, "PATRONI_ETCD3_HOSTS": f"127.0.0.1:{etcd}",
                "PATRONI_RESTAPI_LISTEN": f"127.0.0.1:{ports['rest']}",
                "PATRONI_RESTAPI_CONNECT_ADDRESS": f"127.0.0.1:{ports['rest']}",
                "PATRONI_POSTGRESQL_LISTEN": f"127.0.0.1:{ports['port']}",
                "PATRONI_POSTGRESQL_CONNECT_ADDRESS": f"127.0.0.1:{ports['port']}",
                "PATRONI_POSTGRESQL_DATA_DIR": str(root / name), "PATRONI_POSTGRESQL_BIN_DIR": str(find_pg_bin()),
                "PATRONI_POSTGRESQL_PGPASS": str(pgpass),
                "PATRONI_SUPERUSER_PASSWORD": PASSWORD, "PATRONI_REPLICATION_PASSWORD": PASSWORD,
            }
            # The member runs deploy/patroni/patroni.yml as it is; runuser keeps the environment.
            processes.append(subprocess.Popen(["runuser", "-u", "postgres", "--", "patroni", str(CONFIG)],
                                              env={**os.environ, **environment}, cwd=root, start_new_session=True,
                                              stdout=open(root / f"{name}.log", "wb"), stderr=subprocess.STDOUT))
            members[name] = {**ports, "process": processes[-1]}
            if name == "pg1":  # the first bootstraps the cluster; the second joins it as a replica
                wait(lambda: rest(ports["rest"], "/primary")[0] == 200, 120, "pg1 leading")
        wait(lambda: rest(members["pg2"]["rest"], "/replica")[0] == 200, 180, "pg2 replicating")
        wait(lambda: rest(members["pg1"]["rest"], "/sync")[0] == 200 or rest(members["pg2"]["rest"], "/sync")[0] == 200,
             60, "a synchronous replica")
        say(f"etcd and two Patroni members up ({time.monotonic() - started:.0f} s): pg1 leads, pg2 replicates "
            f"synchronously")

        hosts = ",".join(f"127.0.0.1:{member['port']}" for member in members.values())
        url = f"postgresql://postgres:{PASSWORD}@{hosts}/postgres?target_session_attrs=read-write"
        data = write_fashion_mnist(root / "data", n_train=9600, n_test=300)
        create_slow_study(f"postgresql+psycopg2://postgres:{PASSWORD}@127.0.0.1:{members['pg1']['port']}/postgres", "ha",
                          n_trials=args.trials, epochs=args.epochs)
        paths = [root / f"worker{k}.log" for k in range(args.workers)]
        command = [sys.executable, "-m", "search.cli", "worker", "--storage", url, "--study", "ha", "--data-dir",
                   str(data), "--artifacts", str(root / "artifacts"), "--n-trials", str(args.trials), "--epochs",
                   str(args.epochs), "--heartbeat-interval", "2", "--grace-period", "10", "--device", "cpu"]
        workers = [subprocess.Popen(command, stdout=open(path, "wb"), stderr=subprocess.STDOUT, cwd=root,
                                    env={**search_env(), "PYTHONPATH": str(REPO)}) for path in paths]
        say(f"{args.workers} workers on {url.replace(PASSWORD, '***')}")

        def finished() -> set[int]:
            return {int(n) for n in re.findall(r"trial (\d+) (?:complete|pruned)", logs(paths))}

        wait(lambda: len(finished()) >= 2, 600, "two finished trials")
        leader = next(name for name, member in members.items() if rest(member["rest"], "/primary")[0] == 200)
        other = "pg2" if leader == "pg1" else "pg1"
        postmaster = int((root / leader / "postmaster.pid").read_text().split()[0])
        os.killpg(members[leader]["process"].pid, signal.SIGKILL)  # runuser and its Patroni
        os.kill(postmaster, signal.SIGKILL)
        killed = time.monotonic()
        say(f"kill -9 of the leader {leader} (Patroni and PostgreSQL) after {len(finished())} finished trials")
        wait(lambda: rest(members[other]["rest"], "/primary")[0] == 200, 120, f"{other} promoted")
        say(f"{other} leads {time.monotonic() - killed:.0f} s later")
        codes = [worker.wait(timeout=900) for worker in workers]
        say(f"workers exited {codes}, {time.monotonic() - killed:.0f} s after the kill")

        import optuna
        from optuna.trial import TrialState

        trials = optuna.load_study(study_name="ha", storage=f"postgresql+psycopg2://postgres:{PASSWORD}@127.0.0.1:"
                                   f"{members[other]['port']}/postgres").get_trials(deepcopy=False)
        states = {state.name: sum(t.state == state for t in trials) for state in TrialState}
        current = [t for t in trials if "hpsearch:continued_by" not in t.system_attrs]
        lost = [n for n in finished() if not next(t for t in trials if t.number == n).state.is_finished()]
        text = logs(paths)
        checks = {
            "every worker exited 0": codes == [0] * len(workers),
            f"exactly the budget finished ({args.trials})": len(current) == args.trials
            and all(t.state.is_finished() for t in current),
            "nothing RUNNING or WAITING": states["RUNNING"] == states["WAITING"] == 0,
            "no trial failed": states["FAIL"] == 0,
            "every trial a worker logged as finished is finished in the new leader": not lost,
            "the workers lost the connection and reconnected": "lost the connection" in text and "reconnected" in text,
        }
        say(f"trials in the new leader: {', '.join(f'{k.lower()} {v}' for k, v in states.items() if v)}")
        for name, ok in checks.items():
            say(f"{'ok  ' if ok else 'FAIL'} {name}")
        passed = all(checks.values())
        say(f"{'PASS' if passed else 'FAIL'} in {time.monotonic() - started:.0f} s")
        if not passed:
            print(text[-4000:])
        return 0 if passed else 1
    finally:
        if not passed:  # what etcd and Patroni said, to see why
            for log in sorted(root.glob("*.log")):
                print(f"--- {log.name}\n" + "\n".join(log.read_text(errors="replace").splitlines()[-60:]))
        for process in processes:
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for name in ("pg1", "pg2"):
            pid_file = root / name / "postmaster.pid"
            if pid_file.exists():
                try:
                    os.kill(int(pid_file.read_text().split()[0]), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass
        time.sleep(1)
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
