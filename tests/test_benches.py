"""Every benchmark in its quick mode (tiny sizes), so that one that breaks fails CI: the
figures are not checked, only that each runs to its summary (and the ones with a verdict
pass). Real benchmark runs print the ratios the README quotes; see README "Benchmarks".
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.support.workers import REPO, search_env

# bench module -> a line its summary always prints
SUMMARIES = {
    "service_overhead": "per-trial service overhead",
    "many_workers": "PASS",
    "worker_scaling": "wall: launch to the last worker's exit",
    "epoch_speed": "speed-up",
    "bounded_sampler": "PASS",
    "search_quality": "mean over seeds",
    "parallel_search": "median speed-up of 2 workers over 1",
    "parallel_simulated": "speed-up to",
    "export_choice": "test accuracy of the exported model",
    "search_efficiency": "trials completed",
    "chaos_soak": "PASS",
    "multihost_soak": "PASS",
    "failover": "PASS: no told trial lost",
    "views_at_scale": "views at scale",
    "gpu_check": "gpu check: PASS",
}


def test_every_bench_is_listed():
    on_disk = {path.stem for path in (REPO / "bench").glob("*.py")} - {"__init__", "synthetic", "textbook", "soak"}
    assert on_disk == set(SUMMARIES)


# Run as the README says where it says otherwise (the GPU kit's dry run is a script path).
COMMANDS = {"gpu_check": ["bench/gpu_check.py", "--device", "cpu", "--quick"]}


@pytest.mark.parametrize("bench", sorted(SUMMARIES))
def test_bench_runs_in_its_quick_mode(bench):
    env = {**search_env(), "PYTHONPATH": str(REPO)}
    env.pop("OMP_NUM_THREADS")  # the benches set their own threads
    command = COMMANDS.get(bench, ["-m", f"bench.{bench}", "--quick"])
    done = subprocess.run([sys.executable, *command], capture_output=True, text=True, cwd=REPO, env=env,
                          timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert SUMMARIES[bench] in done.stdout, done.stdout[-3000:]
