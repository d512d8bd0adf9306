"""The artifact store in an S3 bucket (``--artifacts s3://BUCKET/PREFIX``), against a real
S3-compatible server the suite starts (moto's, over HTTP): workers that share nothing but
the database and the bucket resume each other's checkpoints, keep the bucket within its
bound, sweep what a killed worker left, and any host exports, reports and serves the
weights."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request

import optuna
import torch
from optuna.trial import TrialState

from search import keys
from tests.support.postgres import free_port
from tests.support.workers import (
    REPO, create_slow_study, dashboard, kill_a_checkpointed_trials_worker, logs, run_search, search_env, start_worker,
    wait_all, wait_until, worker_args,
)

PREFIX = "team/run-1"


def objects(s3, bucket: str) -> tuple[set[str], set[str]]:
    """The weights and the checkpoints under the prefix."""
    found = s3.objects(bucket, f"{PREFIX}/")
    return {key for key in found if "/" not in key}, {key for key in found if key.startswith("checkpoints/")}


def test_hosts_sharing_only_the_database_and_a_bucket_resume_each_other_and_export_anywhere(
        postgres, s3, medium_fashion_dir, tmp_path):
    bucket, url = s3.new_bucket(), postgres.new_database()
    create_slow_study(url, "bucket", n_trials=3, epochs=3)
    store = f"s3://{bucket}/{PREFIX}"
    hosts = [tmp_path / f"host{k}" for k in range(4)]
    for host in hosts:
        host.mkdir()
    args = worker_args(url, "bucket", medium_fashion_dir, store, n_trials=3, epochs=3, heartbeat=1,
                       extra=["--keep-best", "1"])
    logs_ = [host / "worker.log" for host in hosts[:3]]
    workers = {process.pid: process for process in (start_worker(log, *args, env=s3.env()) for log in logs_[:2])}

    victim = kill_a_checkpointed_trials_worker(url, "bucket", workers)  # its checkpoint is in the bucket
    workers[0] = start_worker(logs_[2], *args, env=s3.env())  # a host that trained nothing yet
    assert wait_all(list(workers.values()), timeout=600) == [0, 0], logs(logs_)
    trials = optuna.load_study(study_name="bucket", storage=url).get_trials(deepcopy=False)
    retry = [t for t in trials if t.system_attrs.get(keys.FAILED_TRIAL) == victim.number]
    assert len(retry) == 1 and retry[0].state == TrialState.COMPLETE and retry[0].user_attrs[keys.RESUMED_FROM] >= 1
    assert f"written by trial {victim.number}" in logs(logs_)

    weights, checkpoints = objects(s3, bucket)  # the bound, in the bucket: the best 1 weights, no checkpoint
    listed = {key.removeprefix(keys.ARTIFACTS_PREFIX) for t in trials for key in t.system_attrs
              if key.startswith(keys.ARTIFACTS_PREFIX)}
    assert weights == listed and len(listed) == 1 and not checkpoints, (weights, checkpoints)

    # A fourth host, which ran none of the trials, exports the best model from the bucket.
    export = hosts[3] / "model.pt"
    done = run_search("best", "--study", "bucket", "--storage", url, "--artifacts", store, "--export", str(export),
                      cwd=hosts[3], env=s3.env())
    assert done.returncode == 0, done.stderr
    best = optuna.load_study(study_name="bucket", storage=url).best_trial
    payload = torch.load(export, weights_only=True)
    assert payload["metadata"]["trial_number"] == best.number
    probe = ("import sys, torch, models; from objectives.datasets import load_dataset\n"
             "split = load_dataset('fashion_mnist', sys.argv[2]).validation\n"
             "model = models.load_exported(sys.argv[1])\n"
             "with torch.no_grad(): hits = (model(split.features.float()).argmax(1) == split.labels).sum().item()\n"
             "print(hits / len(split.labels))")
    scored = subprocess.run([sys.executable, "-c", probe, str(export), str(medium_fashion_dir)], capture_output=True,
                            text=True, cwd=REPO, env=search_env(), timeout=120)
    assert scored.returncode == 0, scored.stderr
    assert float(scored.stdout) == best.value  # what the worker reported, to the last digit

    report = run_search("report", "--study", "bucket", "--storage", url, "--out", str(hosts[3] / "report"),
                        cwd=hosts[3])
    assert report.returncode == 0, report.stderr
    with dashboard(url, store, hosts[3], env=s3.env()) as get:
        study_id = json.loads(get("/api/studies"))["study_summaries"][0]["study_id"]
        offered = [(trial["trial_id"], artifact) for trial in json.loads(get(f"/api/studies/{study_id}"))["trials"]
                   for artifact in trial["artifacts"]]
        assert len(offered) == 1
        trial_id, artifact = offered[0]
        assert len(get(f"/artifacts/{study_id}/{trial_id}/{artifact['artifact_id']}")) > 1000  # a 200, with bytes
    assert objects(s3, bucket) == (weights, set())  # the dashboard only read


def test_a_killed_workers_leftovers_in_the_bucket_are_swept_and_nothing_else(postgres, s3, fashion_dir, tmp_path):
    bucket, url = s3.new_bucket(), postgres.new_database()
    store = f"s3://{bucket}/{PREFIX}"
    args = worker_args(url, "swept", fashion_dir, store, n_trials=1, epochs=1)
    done = run_search("worker", *args, cwd=tmp_path, env=s3.env())
    assert done.returncode == 0, done.stderr
    token = optuna.storages.RDBStorage(url).get_study_system_attrs(
        optuna.storages.RDBStorage(url).get_study_id_from_name("swept"))[keys.TOKEN]
    client = s3.client()
    leftovers = [f"{PREFIX}/checkpoints/{token}-ff-e1-0000aaaa.pt", f"{PREFIX}/{token}-ff-00000000-0000-4000-8000-0"]
    kept = [f"{PREFIX}/checkpoints/0123456789ab-ff-e1-0000aaaa.pt", f"{PREFIX}/notes.txt", "elsewhere/x"]
    for key in leftovers + kept:
        client.put_object(Bucket=bucket, Key=key, Body=b"left behind")
    weights, _ = objects(s3, bucket)
    done = run_search("worker", *worker_args(url, "swept", fashion_dir, store, n_trials=2, epochs=1), cwd=tmp_path,
                      env=s3.env())
    assert done.returncode == 0, done.stderr
    remaining = set(s3.objects(bucket))
    assert not remaining & set(leftovers) and set(kept) <= remaining
    assert len(objects(s3, bucket)[0]) == 3  # two trials' weights, and notes.txt


def test_weights_a_worker_wrote_to_a_bucket_load_on_a_host_with_the_data_only(postgres, s3, fashion_dir, tmp_path):
    """--retrain and evaluate need no store at all: the bucket is only for what workers wrote."""
    bucket, url = s3.new_bucket(), postgres.new_database()
    store = f"s3://{bucket}/x"
    assert run_search("worker", *worker_args(url, "anywhere", fashion_dir, store, n_trials=2, epochs=1),
                      cwd=tmp_path, env=s3.env()).returncode == 0
    export = tmp_path / "retrained.pt"
    done = run_search("best", "--study", "anywhere", "--storage", url, "--export", str(export), "--retrain",
                      "--data-dir", str(fashion_dir), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    evaluated = run_search("evaluate", str(export), "--data-dir", str(fashion_dir), "--json", cwd=tmp_path)
    assert json.loads(evaluated.stdout)["test_accuracy"] == torch.load(export, weights_only=True)["metadata"][
        "test_accuracy"]


def test_a_dashboard_started_before_any_worker_waits_calmly_then_serves(postgres, s3, fashion_dir, tmp_path):
    """As in a compose stack: the dashboard starts beside a new, empty database; it says once
    that it waits for the study storage, and serves the study once a worker made it."""
    url, bucket = postgres.new_database(), s3.new_bucket()
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "search.cli", "dashboard", "--storage", url, "--artifacts",
                               f"s3://{bucket}/x", "--port", str(port)], cwd=tmp_path, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env={**search_env(), **s3.env()})
    try:
        assert server.stdout.readline().startswith("waiting for the first worker to create the study storage in "
                                                   "PostgreSQL at")
        assert run_search("worker", *worker_args(url, "later", fashion_dir, f"s3://{bucket}/x", n_trials=1, epochs=1),
                          cwd=tmp_path, env=s3.env()).returncode == 0
        assert server.stdout.readline().startswith(f"optuna-dashboard on http://127.0.0.1:{port}/")
        listed = wait_until(lambda: answer(f"http://127.0.0.1:{port}/api/studies"), timeout=60)
        assert [summary["study_name"] for summary in json.loads(listed)["study_summaries"]] == ["later"]
    finally:
        server.terminate()
        _, errors = server.communicate(timeout=30)
    assert "error" not in errors


def answer(url: str) -> bytes | None:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.read()
    except OSError:
        return None
