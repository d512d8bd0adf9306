"""How long a primary failover stops a search's writes: workers straight on the pair
(a several-host URL) against workers through PgBouncer in front of an HA endpoint.

One run, one synchronous pair (primary + streaming standby, ``synchronous_commit = on``)
the bench starts. Two writers run side by side, each a worker's storage (``open_storage``:
reconnects, replies read back) doing ask + tell in a loop:

* direct: ``postgresql://...@PRIMARY,STANDBY/db?target_session_attrs=read-write``;
* pooled: PgBouncer (transaction pooling, as ``deploy/pgbouncer``) whose one server is an
  HA endpoint (a TCP forwarder standing in for Patroni's HAProxy or a VIP) that points at
  the primary and, as soon as the standby is promoted, at the new primary: the pooler's
  best case, an endpoint that follows the primary at once.

Mid-run the primary is killed (-9) and the standby promoted 3 s later. Prints each
path's median ask+tell before the failover and its write gap (the longest time without a
successful write across the failover), with PgBouncer's default ``server_login_retry``
(15 s) and with 1 s; checks that every told trial is finished in the new primary.

    python -m bench.failover [--quick]
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
import warnings

import optuna

from search.storage import open_storage
from tests.support.pooler import PgBouncer
from tests.support.postgres import PostgresServer
from tests.support.proxy import FaultProxy

SYNCHRONOUS = "-c synchronous_standby_names='*' -c synchronous_commit=on"


class Writer(threading.Thread):
    """ask + tell in a loop on one storage; remembers when each write succeeded."""

    def __init__(self, name: str, url: str) -> None:
        super().__init__(name=name, daemon=True)
        self.url = url
        self.times: list[tuple[float, float]] = []  # (finished at, seconds it took)
        self.told: list[int] = []
        self.stopping = threading.Event()

    def run(self) -> None:
        storage = open_storage(self.url, patience=300, notify=lambda line: None)
        study = optuna.load_study(study_name=self.name, storage=storage)
        while not self.stopping.is_set():
            began = time.monotonic()
            trial = study.ask()
            study.tell(trial, 0.5)
            now = time.monotonic()
            self.times.append((now, now - began))
            self.told.append(trial.number)
            time.sleep(0.05)
        storage.close()

    def gap(self, after: float) -> float:
        """The longest time without a finished write, from just before ``after`` on."""
        ends = [at for at, _ in self.times]
        before = max((at for at in ends if at < after), default=after)
        later = [at for at in ends if at >= after]
        return max((b - a for a, b in zip([before, *later], later)), default=float("inf"))

    def median_ms(self, until: float) -> float:
        return 1000 * statistics.median(took for at, took in self.times if at < until)


def failover(login_retry: int, warmup: float, after: float) -> dict[str, tuple[float, float, int]]:
    primary, standby = PostgresServer(settings=SYNCHRONOUS), PostgresServer()
    primary.start()
    endpoint = pooler = None
    try:
        standby.start_standby_of(primary)
        direct = primary.new_database()
        database = direct.rsplit("/", 1)[1]
        endpoint = FaultProxy(primary.port)
        pooler = PgBouncer(endpoint, server_connections=10, login_retry=login_retry)
        pooler.start()
        urls = {
            "direct": f"postgresql://postgres@127.0.0.1:{primary.port},127.0.0.1:{standby.port}/{database}"
                      f"?target_session_attrs=read-write",
            "pooled": f"postgresql://postgres@127.0.0.1:{pooler.port}/{database}",
        }
        for name in urls:
            optuna.create_study(study_name=name, storage=direct)
        writers = {name: Writer(name, url) for name, url in urls.items()}
        for writer in writers.values():
            writer.start()
        time.sleep(warmup)
        primary.kill()
        killed = time.monotonic()
        time.sleep(3)
        standby.promote()
        endpoint.upstream = ("127.0.0.1", standby.port)  # the HA endpoint follows the new primary
        endpoint.reset()
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and not all(
                [at for at, _ in w.times if at > killed + 3][3:] for w in writers.values()):
            time.sleep(0.5)
        time.sleep(after)
        for writer in writers.values():
            writer.stopping.set()
            writer.join(60)
        found = {}
        for name, writer in writers.items():
            trials = optuna.load_study(study_name=name, storage=standby.url(database)).get_trials(deepcopy=False)
            finished = {t.number for t in trials if t.state.is_finished()}
            lost = len(set(writer.told) - finished)
            found[name] = (writer.median_ms(killed), writer.gap(killed), lost)
        return found
    finally:
        if pooler is not None:
            pooler.stop()
        if endpoint is not None:
            endpoint.close()
        standby.stop()
        primary.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="shorter runs (CI: the bench still works)")
    args = parser.parse_args()
    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warmup, after = (3, 2) if args.quick else (10, 5)
    print("path    server_login_retry  ask+tell median  write gap at failover  told trials lost")
    lost = 0
    for retry in (15, 1):
        for name, (median, gap, missing) in failover(retry, warmup, after).items():
            lost += missing
            print(f"{name:<7} {retry:>15} s  {median:>12.1f} ms  {gap:>18.1f} s  {missing:>16}")
    print("PASS: no told trial lost" if lost == 0 else f"FAIL: {lost} told trials lost")
    raise SystemExit(0 if lost == 0 else 1)


if __name__ == "__main__":
    main()
