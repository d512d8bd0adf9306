"""Results at scale: how long ``status``, ``best``, ``report`` and the dashboard's study
page take on a study of 1,000, 10,000 and 100,000 trials, on PostgreSQL and on SQLite,
next to the stock tools on the same storage (``optuna best-trial``, plain
``optuna-dashboard``), in one run.

Each study is grown in bulk (``tests.support.studies``: synthetic trials shaped like a
real search's, 12 of them running; on PostgreSQL then vacuumed and analysed, as
autovacuum leaves a study written over days) in a throwaway server or file. Every command runs as
a user runs it (a process of its own, its wall time; status and best, which take about
a second, the median of 5 runs, with the project's modules compiled as pip installs them); the dashboard's figure is its
study API call (``GET /api/studies/ID``, what its study page loads), timed from a started
server, with the answer's size. Then the report's files are measured: the largest side
of its PNGs, the HTML's size, the CSV's rows. At the largest size on PostgreSQL the
issue's bounds are checked: status and best under 1 s, report under 60 s with images
within 4,000 px and HTML under 5 MB, the dashboard's answer under 2 s and 5 MB.

    python -m bench.views_at_scale [--sizes 1000 10000 100000] [--backends postgresql sqlite]
                                   [--stock-timeout 300] [--quick]
"""

from __future__ import annotations

import argparse
import csv
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from tests.support.postgres import PostgresServer, free_port
from tests.support.studies import grow_study, grown_trials
from tests.support.workers import REPO, search_env

STUDY = "views"
RUNNING = 12
RUNS = 5  # status and best: the median of this many runs
OPTUNA = Path(sys.executable).parent / "optuna"


def timed(*command: str, timeout: float = 600) -> tuple[float, subprocess.CompletedProcess]:
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, cwd=REPO, env=search_env(), timeout=timeout)
    took = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command[:4])}... failed: {done.stderr[-2000:]}")
    return took, done


def search(*arguments: str) -> tuple[float, subprocess.CompletedProcess]:
    return timed(sys.executable, "-m", "search.cli", *arguments)


def median_of(runs: int, *arguments: str) -> float:
    """A sub-second command's time: the median of a few runs (one run on a shared
    machine's scheduler is noisy at this scale)."""
    return statistics.median(search(*arguments)[0] for _ in range(runs))


def api_call(command: list[str], port: int, timeout: float) -> tuple[float | None, int]:
    """Start a dashboard, wait until it listens, time its study API call: (seconds or
    None past ``timeout``, bytes)."""
    server = subprocess.Popen(command, cwd=REPO, env=search_env(), stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.2)
        started = time.perf_counter()
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies/1", timeout=timeout) as answer:
                size = len(answer.read())
        except (TimeoutError, OSError):
            return None, 0
        return time.perf_counter() - started, size
    finally:
        server.kill()
        server.wait()


def png_side(path: Path) -> int:
    width, height = struct.unpack(">II", path.read_bytes()[16:24])
    return max(width, height)


def measure(url: str, size: int, work: Path, stock_timeout: float, runs: int) -> dict[str, float | None]:
    row: dict[str, float | None] = {}
    row["status"] = median_of(runs, "status", "--storage", url, "--study", STUDY)
    row["best"] = median_of(runs, "best", "--storage", url, "--study", STUDY, "--json")
    out = work / f"report-{size}"
    row["report"], _ = search("report", "--storage", url, "--study", STUDY, "--out", str(out))
    row["png_px"] = max(png_side(png) for png in out.glob("*.png"))
    row["html_mb"] = (out / "report.html").stat().st_size / 1e6
    with open(out / "trials.csv", newline="") as handle:
        row["csv_rows"] = sum(1 for _ in csv.DictReader(handle))
    port = free_port()
    row["dashboard"], answer = api_call([sys.executable, "-m", "search.cli", "dashboard", "--storage", url,
                                         "--artifacts", str(work / "artifacts"), "--port", str(port)], port, 60)
    row["dashboard_mb"] = answer / 1e6
    row["optuna_best"], _ = timed(str(OPTUNA), "best-trial", "--study-name", STUDY, "--storage", url)
    port = free_port()
    row["stock_dashboard"], answer = api_call([str(Path(sys.executable).parent / "optuna-dashboard"), url,
                                               "--port", str(port)], port, stock_timeout)
    row["stock_mb"] = answer / 1e6
    return row


def seconds(value: float | None, limit: float) -> str:
    return f"> {limit:.0f} s" if value is None else f"{value:.2f} s"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 100000])
    parser.add_argument("--backends", nargs="+", default=["postgresql", "sqlite"], choices=["postgresql", "sqlite"])
    parser.add_argument("--stock-timeout", type=float, default=300, help="seconds plain optuna-dashboard gets")
    parser.add_argument("--quick", action="store_true", help="one small study per backend (CI: the bench runs)")
    args = parser.parse_args()
    if args.quick:
        args.sizes, args.stock_timeout = [1200], 60
    # As installed (pip compiles every module): a checkout run with PYTHONDONTWRITEBYTECODE
    # (CI, containers) would compile this project's modules on every command, 60 ms of a
    # one-second status.
    subprocess.run([sys.executable, "-m", "compileall", "-q", "search", "objectives", "models"], cwd=REPO, check=True)
    work = Path(tempfile.mkdtemp(prefix="hpsearch-views-"))
    server = None
    rows = []
    try:
        made = {}
        for size in args.sizes:
            started = time.perf_counter()
            made[size] = grown_trials(size, seed=0, running=RUNNING)
            print(f"{size:,} synthetic trials made in {time.perf_counter() - started:.0f} s", flush=True)
        for backend in args.backends:
            if backend == "postgresql":
                server = PostgresServer()
                server.start()
            for size in args.sizes:
                url = server.new_database() if backend == "postgresql" else f"sqlite:///{work / f'{size}.db'}"
                started = time.perf_counter()
                grow_study(url, STUDY, size, made=made[size])
                print(f"{backend} {size:,}: stored in {time.perf_counter() - started:.0f} s", flush=True)
                rows.append((backend, size, measure(url, size, work, args.stock_timeout, 1 if args.quick else RUNS)))
                print(f"{backend} {size:,}: {rows[-1][2]}", flush=True)
            if server is not None:  # no idle server (or its autovacuum) beside the next backend's figures
                server.stop()
                server = None
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(work, ignore_errors=True)

    print("\nviews at scale (wall seconds of each command as a user runs it; API: the dashboard's study call)")
    print(f"{'backend':<11}{'trials':>8}  {'status':>7}  {'best':>7}  {'report':>8}  {'png px':>6}  {'html':>7}  "
          f"{'csv rows':>8}  {'dashboard API':>18}  {'optuna best-trial':>17}  {'optuna-dashboard API':>22}")
    for backend, size, row in rows:
        print(f"{backend:<11}{size:>8,}  {row['status']:>6.2f}s  {row['best']:>6.2f}s  {row['report']:>7.1f}s  "
              f"{row['png_px']:>6.0f}  {row['html_mb']:>5.1f}MB  {row['csv_rows']:>8,.0f}  "
              f"{seconds(row['dashboard'], 60):>8} {row['dashboard_mb']:>6.1f} MB  {row['optuna_best']:>16.2f}s  "
              f"{seconds(row['stock_dashboard'], args.stock_timeout):>10} {row['stock_mb']:>7.1f} MB")
        if row["csv_rows"] != size:
            raise SystemExit(f"FAIL: trials.csv has {row['csv_rows']:.0f} rows, the study {size}")
    if args.quick:
        print("quick: the bounds are checked at 100,000 trials on PostgreSQL only")
        return
    largest = [row for backend, size, row in rows if backend == "postgresql" and size == max(args.sizes)]
    if not largest:
        return
    row = largest[0]
    checks = {
        "status under 1 s": row["status"] < 1,
        "best under 1 s": row["best"] < 1,
        "report under 60 s": row["report"] < 60,
        "report images within 4,000 px": row["png_px"] <= 4000,
        "report HTML under 5 MB": row["html_mb"] < 5,
        "dashboard study API under 2 s": row["dashboard"] is not None and row["dashboard"] < 2,
        "dashboard study API under 5 MB": row["dashboard_mb"] < 5,
    }
    print(f"\nat {max(args.sizes):,} trials on PostgreSQL:")
    for name, ok in checks.items():
        print(f"  {'ok  ' if ok else 'FAIL'} {name}")
    print("PASS" if all(checks.values()) else "FAIL")
    raise SystemExit(0 if all(checks.values()) else 1)


if __name__ == "__main__":
    main()
