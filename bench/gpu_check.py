"""GPU proof kit: everything GPU-related this project claims, measured by one command in
under 8 minutes on one GPU, printed as one table and written as one JSON file.

1. device paths: ``pytest -m device`` (tests/test_device.py): a search on each device
   the machine has, its exported file loaded on a CPU with ``weights_only``, checkpoints
   (with the CUDA RNG state) resumed on the same device and on the other one;
2. speed: the trainer's time per step and per 55,000-image epoch on the device and on
   this process's CPU, for the default space's typical shapes (2 x 512 and 3 x 1024
   units, batch 128 / 256 / 512), eager and under ``torch.compile``, with the share of
   the device's float32 matmul rate (measured here on one large matmul: the most this
   work can reach on it);
3. sharing: 1, 2, 4 and 8 workers on one device, each on a short real study: trials per
   hour and memory per worker (the GPU's memory in use by ``nvidia-smi``, over what was in
   use before, per worker; resident memory on a CPU);
4. data: Fashion-MNIST resident on the device: its bytes, the device memory it takes and
   the one host-to-device copy each worker makes.

It needs torch, optuna, sqlalchemy and pytest, and runs on SQLite: a borrowed GPU machine
has no PostgreSQL (scripts/gpu-kit makes the wheels to carry there and runs this).

    python bench/gpu_check.py [--device cuda] [--data-dir DIR] [--out FILE] [--quick]

``--quick``: tiny sizes, one worker count pair and ``torch.compile``'s "eager" backend on
a CPU (the compile path without a minute of C++ building); CI runs
``--device cpu --quick`` so the kit cannot rot.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models import build_mlp
from objectives.data import Split
from objectives.datasets import load_dataset
from objectives.training.device import choose_device
from objectives.training.trainer import Trainer, TrainingSettings

REPO = Path(__file__).resolve().parents[1]
SHAPES = [[512, 512], [1024, 1024, 1024]]
BATCHES = [128, 256, 512]
WORKERS = [1, 2, 4, 8]
EPOCH = 55_000  # Fashion-MNIST's training split: the images an epoch trains on
STEPS = 100  # timed steps per configuration
SHARE_S = 45  # wall seconds each worker count runs
FASHION = Path("/usr/share/datasets/fashion-mnist")


def env() -> dict[str, str]:
    """The children's environment: this repository importable ahead of any PYTHONPATH
    already set (wheels unpacked into a folder of their own, on a borrowed machine)."""
    paths = [str(REPO), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(paths), "PYTHONUNBUFFERED": "1"}


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --- 1. device paths -----------------------------------------------------------------
def device_tests(timeout: float) -> dict[str, Any]:
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "device", "-p", "no:cacheprovider",
                           "tests/test_device.py"], cwd=REPO, env=env(), capture_output=True, text=True,
                          timeout=timeout)
    counts = {word: int(number) for number, word in re.findall(r"(\d+) (passed|failed|error|skipped)", done.stdout)}
    return {"ok": done.returncode == 0, "passed": counts.get("passed", 0),
            "failed": counts.get("failed", 0) + counts.get("error", 0), "skipped": counts.get("skipped", 0),
            "seconds": time.perf_counter() - started, "tail": done.stdout[-3000:] + done.stderr[-2000:]}


# --- 2. speed ----------------------------------------------------------------------------
def matmul_rate(device: torch.device, size: int) -> float:
    """Float32 FLOP/s of one large square matmul, the best of a few."""
    a, b = torch.randn(size, size, device=device), torch.randn(size, size, device=device)
    best = math.inf
    for _ in range(5):
        synchronize(device)
        started = time.perf_counter()
        a @ b
        synchronize(device)
        best = min(best, time.perf_counter() - started)
    return 2 * size**3 / best


def step_time(hidden: list[int], batch: int, device: torch.device, steps: int, compiled: str | None) -> dict:
    """Seconds per training step of the project's trainer on Fashion-MNIST-shaped data
    (uint8 pixels, 10 classes), after a warm-up epoch (and the compile it triggers)."""
    generator = torch.Generator().manual_seed(0)
    n = steps * batch
    data = Split(torch.randint(0, 256, (n, 784), dtype=torch.uint8, generator=generator),
                 torch.randint(0, 10, (n,), generator=generator))
    hyperparameters = {"n_inputs": 784, "hidden_sizes": hidden, "n_classes": 10,
                       "input_mean": [127.5] * 784, "input_std": [73.0] * 784}
    trainer = Trainer(build_mlp(hyperparameters), TrainingSettings("adam", 1e-3, 0.0, batch), data, device, seed=0)
    if compiled is not None:
        trainer.model = torch.compile(trainer.model, backend=compiled)
    started = time.perf_counter()
    trainer.run_epoch()  # warm-up: allocator, kernels, compilation
    synchronize(device)
    warmup = time.perf_counter() - started
    started = time.perf_counter()
    trainer.run_epoch()
    synchronize(device)
    per_step = (time.perf_counter() - started) / steps
    parameters = sum(p.numel() for p in trainer.model.parameters())
    return {"per_step_s": per_step, "epoch_s": per_step * math.ceil(EPOCH / batch),
            "flops": 6 * parameters * batch / per_step, "warmup_s": warmup}


def speed(device: torch.device, quick: bool) -> dict[str, Any]:
    cpu = torch.device("cpu")
    shapes, batches, steps = (SHAPES[:1], BATCHES[:1], 10) if quick else (SHAPES, BATCHES, STEPS)
    backend = "eager" if quick and device.type == "cpu" else "inductor"
    peak = matmul_rate(device, 1024 if quick else 8192)
    rows = []
    for hidden in shapes:
        for batch in batches:
            row: dict[str, Any] = {"hidden": hidden, "batch": batch}
            row["eager"] = step_time(hidden, batch, device, steps, None)
            try:
                row["compiled"] = step_time(hidden, batch, device, steps, backend)
            except Exception as error:  # a compiler missing on the machine: said, not fatal
                row["compiled"] = {"error": f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"}
            row["cpu"] = row["eager"] if device.type == "cpu" else step_time(hidden, batch, cpu, max(5, steps // 10),
                                                                            None)
            for kind in ("eager", "compiled"):
                if "flops" in row[kind]:
                    row[kind]["share_of_matmul"] = row[kind]["flops"] / peak
            rows.append(row)
            print(f"  speed {'x'.join(map(str, hidden))} batch {batch}: {row['eager']['per_step_s'] * 1e3:.2f} ms/step",
                  flush=True)
    return {"matmul_flops": peak, "compile_backend": backend, "rows": rows}


# --- 3. sharing ----------------------------------------------------------------------
def write_table(path: Path, rows: int = 2000) -> None:
    """A small CSV for the quick run: three classes a little apart in eight columns."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, rows)
    features = rng.normal(size=(rows, 8)) + labels[:, None]
    lines = ["y," + ",".join(f"x{i}" for i in range(8))]
    lines += [f"c{label}," + ",".join(f"{value:.4f}" for value in row) for label, row in zip(labels, features)]
    path.write_text("\n".join(lines) + "\n")


def gpu_memory_used(device: torch.device) -> float | None:
    """MiB in use on the GPU, all processes together (nvidia-smi's per-process list names
    host PIDs, which a container cannot match to its own)."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None
    done = subprocess.run([smi, f"--id={device.index or 0}", "--query-gpu=memory.used",
                           "--format=csv,noheader,nounits"], capture_output=True, text=True)
    try:
        return float(done.stdout.strip().splitlines()[0])
    except (IndexError, ValueError):
        return None


def resident_mib(pids: list[int]) -> float:
    """Resident memory of these processes together, MiB."""
    total = 0.0
    for pid in pids:
        try:
            match = re.search(r"VmRSS:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text())
        except OSError:
            continue
        total += int(match.group(1)) / 1024 if match else 0.0
    return total


def finished_trials(database: Path) -> int:
    with sqlite3.connect(database) as connection:
        return connection.execute("SELECT count(*) FROM trials WHERE state IN ('COMPLETE', 'PRUNED')").fetchone()[0]


def sharing(device: torch.device, data: list[str], work: Path, quick: bool) -> list[dict[str, Any]]:
    counts, wall, epochs = ([1, 2], 8, 1) if quick else (WORKERS, SHARE_S, 3)
    rows = []
    for count in counts:
        database = work / f"share-{count}.db"
        command = [sys.executable, "-m", "search.cli", "worker", "--storage", f"sqlite:///{database}",
                   "--study", f"share{count}", "--artifacts", str(work / f"artifacts-{count}"), "--device",
                   str(device.type), "--n-trials", "100000", "--epochs", str(epochs), *data]
        workers = [subprocess.Popen(command, cwd=work, env={**env(), "OMP_NUM_THREADS": "1"},
                                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                    start_new_session=True) for _ in range(count)]
        baseline = gpu_memory_used(device) if device.type == "cuda" else 0.0
        peak = 0.0
        started = time.monotonic()
        while time.monotonic() - started < wall:
            time.sleep(1)
            used = gpu_memory_used(device) if device.type == "cuda" else resident_mib([w.pid for w in workers])
            if used is not None:
                peak = max(peak, used)
        for worker in workers:
            worker.send_signal(signal.SIGTERM)
        errors = []
        for worker in workers:
            try:
                _, err = worker.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                worker.kill()
                _, err = worker.communicate()
            if worker.returncode not in (0, 128 + signal.SIGTERM, -signal.SIGTERM):
                errors.append(err.strip().splitlines()[-1] if err.strip() else f"exit {worker.returncode}")
        done = finished_trials(database) if database.exists() else 0
        row = {"workers": count, "seconds": wall, "finished": done, "trials_per_hour": done * 3600 / wall,
               "memory_mib_per_worker": (peak - baseline) / count if baseline is not None and peak else None,
               "errors": errors}
        rows.append(row)
        print(f"  sharing {count} worker(s): {done} trials in {wall} s", flush=True)
    return rows


# --- 4. data ---------------------------------------------------------------------------
def resident(device: torch.device, data_dir: Path | None) -> dict[str, Any]:
    if data_dir is None:
        return {"skipped": "no Fashion-MNIST files (--data-dir)"}
    dataset = load_dataset("fashion_mnist", data_dir)
    splits = [dataset.train, dataset.validation, dataset.test]
    size = sum(split.features.nbytes + split.labels.nbytes for split in splits)
    before = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0
    synchronize(device)
    started = time.perf_counter()
    moved = [split.to(device) for split in splits]
    synchronize(device)
    seconds = time.perf_counter() - started
    after = torch.cuda.memory_allocated(device) if device.type == "cuda" else size
    del moved
    return {"bytes": size, "device_bytes": after - before, "copy_s": seconds if device.type == "cuda" else 0.0,
            "rows": sum(len(split) for split in splits)}


# --- the table -----------------------------------------------------------------------
def report(result: dict[str, Any]) -> str:
    lines = [f"gpu check on {result['device_name']} ({result['device']}; torch {result['torch']}, "
             f"{result['cpu_threads']} CPU threads)"]
    tests = result["tests"]
    lines.append(f"1. device paths: {tests['passed']} passed, {tests['failed']} failed "
                 f"({tests['seconds']:.0f} s; pytest -m device)")
    speed_ = result["speed"]
    lines.append(f"2. speed: float32 matmul {speed_['matmul_flops'] / 1e12:.2f} TFLOP/s here; "
                 f"torch.compile backend {speed_['compile_backend']}")
    lines.append(f"   {'shape':<15}{'batch':>6}  {'eager ms/step':>13}  {'compiled':>9}  {'CPU':>9}  "
                 f"{'epoch (eager)':>13}  {'vs CPU':>7}  {'of matmul':>9}")
    for row in speed_["rows"]:
        eager, compiled, cpu = row["eager"], row["compiled"], row["cpu"]
        shown = f"{compiled['per_step_s'] * 1e3:>9.3f}" if "per_step_s" in compiled else f"{'error':>9}"
        lines.append(f"   {'x'.join(map(str, row['hidden'])):<15}{row['batch']:>6}  {eager['per_step_s'] * 1e3:>13.3f}  "
                     f"{shown}  {cpu['per_step_s'] * 1e3:>9.3f}  {eager['epoch_s']:>12.2f}s  "
                     f"{cpu['per_step_s'] / eager['per_step_s']:>6.1f}x  {eager['share_of_matmul']:>8.1%}")
    lines.append(f"3. sharing one {result['device']}: {'workers':>7}  {'trials/hour':>11}  {'MiB/worker':>10}")
    for row in result["sharing"]:
        memory = f"{row['memory_mib_per_worker']:>10.0f}" if row["memory_mib_per_worker"] else f"{'-':>10}"
        errors = f"  errors: {row['errors']}" if row["errors"] else ""
        lines.append(f"   {'':<20}{row['workers']:>7}  {row['trials_per_hour']:>11.0f}  {memory}{errors}")
    data = result["data"]
    if "skipped" in data:
        lines.append(f"4. data: skipped ({data['skipped']})")
    else:
        lines.append(f"4. data: Fashion-MNIST {data['rows']:,} rows, {data['bytes'] / 2**20:.1f} MiB; on the device "
                     f"{data['device_bytes'] / 2**20:.1f} MiB, copied once in {data['copy_s'] * 1e3:.1f} ms")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", help="auto (a GPU if there is one), cpu, cuda, cuda:N")
    parser.add_argument("--data-dir", type=Path, default=None,
                        help=f"Fashion-MNIST's .gz files (default {FASHION} if there)")
    parser.add_argument("--out", type=Path, default=None,
                        help="the JSON file (default bench/results/gpu_check-<device>.json; --quick: a temp file)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: proves the kit runs (CI)")
    args = parser.parse_args()
    device = choose_device(args.device)
    data_dir = args.data_dir or (FASHION if (FASHION / "train-images-idx3-ubyte.gz").exists() else None)
    started = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="hpsearch-gpu-check-"))
    try:
        print(f"gpu check: {device}, {'quick' if args.quick else 'full'}", flush=True)
        result: dict[str, Any] = {
            "device": str(device), "torch": torch.__version__, "cpu_threads": torch.get_num_threads(),
            "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
            or platform.machine(), "quick": args.quick}
        result["tests"] = device_tests(timeout=240 if not args.quick else 120)
        print(f"  device tests: {result['tests']['passed']} passed, {result['tests']['failed']} failed", flush=True)
        result["speed"] = speed(device, args.quick)
        if args.quick or data_dir is None:
            table = work / "table.csv"
            write_table(table)
            data = ["--objective", "table", "--label", "y", "--data-dir", str(table)]
        else:
            data = ["--objective", "fashion_mnist", "--data-dir", str(data_dir)]
        result["sharing"] = sharing(device, data, work, args.quick)
        result["data"] = resident(device, data_dir)
        result["seconds"] = time.perf_counter() - started
    finally:
        shutil.rmtree(work, ignore_errors=True)
    out = args.out or (Path(tempfile.gettempdir()) / "gpu_check-quick.json" if args.quick
                       else REPO / "bench" / "results" / f"gpu_check-{device.type}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print()
    print(report(result))
    ok = result["tests"]["ok"] and all(not row["errors"] for row in result["sharing"])
    if not result["tests"]["ok"]:
        print(result["tests"]["tail"])
    print(f"\ngpu check: {'PASS' if ok else 'FAIL'} in {result['seconds']:.0f} s; JSON: {out}")
    raise SystemExit(0 if ok else 1)


if __name__ == "__main__":
    main()
