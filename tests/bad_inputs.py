"""The world the bad-input table runs in, and the table itself: one row per bad input.

``world`` builds, once, everything a row points at (a finished study, an export, data
directories broken in every way the issue lists, foreign databases, read-only and full
filesystems, a port that is taken); ``ROWS`` says for each input what its one line must
name. ``tests/test_bad_input.py`` runs the rows.
"""

from __future__ import annotations

import contextlib
import gzip
import os
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import optuna
import sqlalchemy
import torch

from models import build_mlp
from objectives.datasets import covtype, fashion_mnist
from search import keys
from tests.support.datafiles import (
    synthetic_covtype, synthetic_images, synthetic_table, write_fashion_mnist, write_idx, write_table,
)
from tests.support.postgres import free_port
from tests.support.workers import run_search

LONG = "x" * 600
GOOD_HYPER = {"n_inputs": 784, "hidden_sizes": [8], "n_classes": 10, "activation": "relu", "dropout": 0.0,
              "batch_norm": False, "input_mean": [0.0], "input_std": [1.0]}


class Evil:
    """Unpickling this runs a shell command that creates ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.marker}",))


def write_fashion_variant(directory: Path, n_train: int = 1200, size: int = 28, label: int | None = None,
                          drop: str | None = None) -> None:
    write_fashion_mnist(directory, n_train=max(n_train, 1), n_test=50)
    files = fashion_mnist.FILES
    if n_train == 0 or size != 28:
        images, labels = synthetic_images(n_train, seed=1)
        if size != 28:
            images = np.zeros((n_train, size, size), dtype=np.uint8)
        write_idx(directory / files["train_images"], images)
        write_idx(directory / files["train_labels"], labels)
    if label is not None:
        _, labels = synthetic_images(n_train, seed=1)
        labels[3] = label
        write_idx(directory / files["train_labels"], labels)
    if drop:
        (directory / files[drop]).unlink()


def write_covtype_rows(directory: Path, rows: list[list[int]]) -> None:
    directory.mkdir(parents=True)
    with gzip.open(directory / covtype.UCI_FILE, "wt") as handle:
        handle.write("\n".join(",".join(map(str, row)) for row in rows) + "\n")


def export_payload(path: Path, **changes: Any) -> None:
    model = build_mlp(changes.pop("hyper", GOOD_HYPER))
    payload = {"model_state_dict": model.state_dict(), "model_hyperparameters": GOOD_HYPER,
               "metadata": {"objective": "fashion_mnist", "class_names": list(fashion_mnist.CLASS_NAMES)}}
    payload.update(changes)
    torch.save(payload, path)


def write_tables(directory: Path) -> None:
    """A good table, and one broken in each way a user's table can be."""
    write_table(directory, "good.csv", n=60)
    (directory / "empty.csv").write_text("")
    table = synthetic_table(60)
    table.assign(species="setosa").to_csv(directory / "one-class.csv", index=False)
    table.astype({"height_cm": object}).assign(height_cm=lambda t: t.height_cm.where(t.index != 7, "tall")).to_csv(
        directory / "junk.csv", index=False)
    table.astype({"weight_kg": object}).assign(weight_kg=lambda t: t.weight_kg.where(t.index != 4, "")).to_csv(
        directory / "gap.csv", index=False)
    write_table(directory / "two", "a.csv", n=60)
    write_table(directory / "two", "b.parquet", n=60)


@contextlib.contextmanager
def mounted(target: Path, *how: str) -> Iterator[Path]:
    target.mkdir(exist_ok=True)
    subprocess.run(["mount", *how, str(target)], check=True)
    try:
        yield target
    finally:
        subprocess.run(["umount", "--lazy", str(target)], check=False)


@contextlib.contextmanager
def read_only_mount(source: Path, target: Path) -> Iterator[Path]:
    with mounted(target, "--bind", str(source)):
        subprocess.run(["mount", "-o", "remount,bind,ro", str(target)], check=True)
        yield target


def fill(directory: Path) -> None:
    try:
        with open(directory / "filler", "wb") as handle:
            while True:
                handle.write(b"\0" * 4096)
                handle.flush()
    except OSError:
        pass


def build_world(w: Path, postgres, s3, fashion_dir: Path, covtype_dir: Path) -> Iterator[tuple[Path, dict, list]]:
    """Everything the rows point at, built once; every row must leave it as it found it.
    Yields the world's directory, the places the rows name, and the databases and buckets
    (as ``(server, bucket)``) a row must not change."""
    (w / "cwd").mkdir()
    db = f"sqlite:///{w / 'ready.db'}"
    done = run_search("run", "--storage", db, "--study", "ready", "--data-dir", str(fashion_dir), "--artifacts",
                      str(w / "artifacts"), "--n-trials", "2", "--epochs", "1", "--device", "cpu", cwd=w)
    assert done.returncode == 0, done.stderr
    done = run_search("best", "--study", "ready", "--storage", db, "--artifacts", str(w / "artifacts"),
                      "--export", str(w / "model.pt"), cwd=w)
    assert done.returncode == 0, done.stderr
    empty = optuna.create_study(study_name="empty", storage=f"sqlite:///{w / 'empty-study.db'}",
                                direction="maximize")
    empty.set_user_attr(keys.DATASET, "fashion_mnist")
    for name in ("first", "second"):
        optuna.create_study(study_name=name, storage=f"sqlite:///{w / 'two-studies.db'}")
    optuna.storages.RDBStorage(f"sqlite:///{w / 'no-study.db'}")  # Optuna's tables, no study in them
    plain = optuna.create_study(study_name="plain", storage=f"sqlite:///{w / 'plain-optuna.db'}", direction="maximize")
    plain.optimize(lambda trial: trial.suggest_float("x", 0, 1), n_trials=1)  # a study of plain Optuna
    old = f"sqlite:///{w / 'old-schema.db'}"
    optuna.create_study(study_name="old", storage=old)
    with sqlalchemy.create_engine(old).begin() as connection:
        connection.execute(sqlalchemy.text("UPDATE version_info SET schema_version = 11"))

    for name, statements in (("foreign.db", ["CREATE TABLE studies (id INTEGER, title TEXT)",
                                             "CREATE TABLE trials (id INTEGER, outcome TEXT)"]),
                             ("other-program.db", ["CREATE TABLE invoices (id INTEGER, total REAL)"])):
        with sqlalchemy.create_engine(f"sqlite:///{w / name}").begin() as connection:
            for statement in statements:
                connection.execute(sqlalchemy.text(statement))
    (w / "notadb.txt").write_text("meeting notes, not a database\n" * 20)
    (w / "adir").mkdir()
    (w / "afile").write_text("a file where a directory should be")
    (w / "random.bin").write_bytes(np.random.default_rng(0).bytes(4096))
    torch.save(Evil(w / "pwned"), w / "evil.pt")
    export_payload(w / "statemismatch.pt", hyper={**GOOD_HYPER, "hidden_sizes": [16]})
    export_payload(w / "badhyper.pt", model_hyperparameters={**GOOD_HYPER, "activation": "tanh"})
    export_payload(w / "badmeta.pt", metadata=["not", "a", "dict"])
    export_payload(w / "metatype.pt", metadata={"objective": "fashion_mnist", "class_names": 5})
    export_payload(w / "width.pt", hyper={**GOOD_HYPER, "n_inputs": 54, "input_mean": [0.0]},
                   model_hyperparameters={**GOOD_HYPER, "n_inputs": 54})
    export_payload(w / "unknownobjective.pt", metadata={"objective": "imagenet"})

    write_fashion_variant(w / "fm-missing", drop="test_labels")
    write_fashion_variant(w / "fm-32px", size=32)
    write_fashion_variant(w / "fm-label12", label=12)
    write_fashion_variant(w / "fm-empty", n_train=0)
    write_fashion_variant(w / "fm-tiny", n_train=5)
    shutil.copytree(fashion_dir, w / "fm-corrupt")
    (w / "fm-corrupt" / fashion_mnist.FILES["train_images"]).write_bytes(b"\x1f\x8bnot really gzip")
    samples, labels = synthetic_covtype(40)
    write_covtype_rows(w / "cov-badlabel", [[*row, 9 if i == 0 else label] for i, (row, label)
                                            in enumerate(zip(samples.tolist(), labels.tolist()))])
    write_covtype_rows(w / "cov-columns", [row[:20] for row in samples.tolist()])
    write_covtype_rows(w / "cov-tiny", [[*row, label] for row, label in zip(samples[:5].tolist(), labels[:5])])
    cache = w / "cov-evil-cache" / covtype.SKLEARN_SAMPLES.parent
    cache.mkdir(parents=True)
    joblib.dump(Evil(w / "pwned"), cache / covtype.SKLEARN_SAMPLES.name, compress=9)
    joblib.dump(labels, cache / covtype.SKLEARN_TARGETS.name, compress=9)
    cache = w / "cov-nan-cache" / covtype.SKLEARN_SAMPLES.parent
    cache.mkdir(parents=True)
    joblib.dump(np.full((40, 54), np.nan), cache / covtype.SKLEARN_SAMPLES.name, compress=9)
    joblib.dump(labels, cache / covtype.SKLEARN_TARGETS.name, compress=9)
    export_payload(w / "classes.pt", metadata={"objective": "fashion_mnist", "class_names": ["a", "b", "c"]})
    (w / "empty-data").mkdir()
    write_tables(w / "tables")
    (w / "notes.txt").write_text("an existing file that is not a model")
    (w / "two-lines").write_text("sqlite:///new.db\nextra\n")
    (w / "empty-art").mkdir()

    # Read-only and full filesystems (the session runs as root, for whom permission bits do not stop writes).
    (w / "ro-src").mkdir()
    mounts = contextlib.ExitStack()
    mounts.enter_context(read_only_mount(w / "ro-src", w / "ro"))
    mounts.enter_context(mounted(w / "full", "-t", "tmpfs", "-o", "size=2m", "tmpfs"))
    shutil.copy(w / "ready.db", w / "full" / "ready.db")
    fill(w / "full")

    # PostgreSQL: another program's tables, and a user who may not create tables.
    pg_foreign, pg_plain = postgres.new_database(), postgres.new_database()
    admin = sqlalchemy.create_engine(pg_foreign)
    with admin.begin() as connection:
        connection.execute(sqlalchemy.text("CREATE TABLE studies (id INTEGER, title TEXT)"))
        connection.execute(sqlalchemy.text("CREATE TABLE trials (id INTEGER, outcome TEXT)"))
        connection.execute(sqlalchemy.text("INSERT INTO studies VALUES (1, 'not optuna')"))
    admin.dispose()
    with sqlalchemy.create_engine(postgres.url(), isolation_level="AUTOCOMMIT").connect() as connection:
        connection.execute(sqlalchemy.text("DROP ROLE IF EXISTS nocreate; CREATE ROLE nocreate LOGIN"))
    # An object store: a study whose weights are in a bucket, and users who may not write.
    bucket = s3.new_bucket()
    done = run_search("run", "--storage", f"sqlite:///{w / 'bucket.db'}", "--study", "ready", "--data-dir",
                      str(fashion_dir), "--artifacts", f"s3://{bucket}/ready", "--n-trials", "1", "--epochs", "1",
                      "--device", "cpu", cwd=w, env=s3.env())
    assert done.returncode == 0, done.stderr
    listener = socket.create_server(("127.0.0.1", 0))
    writer, reader = s3.env("writer"), s3.env("reader")
    places = {"w": str(w), "db": db, "data": str(fashion_dir), "cov": str(covtype_dir),
              "art": str(w / "artifacts"), "pgforeign": pg_foreign,
              "pgnocreate": pg_plain.replace("postgres@", "nocreate@"),
              "closed": f"postgresql://postgres@127.0.0.1:{free_port()}/db", "taken": str(listener.getsockname()[1]),
              "free": str(free_port()), "bucket": bucket, "endpoint": s3.endpoint,
              "writer": writer["AWS_ACCESS_KEY_ID"], "writer_secret": writer["AWS_SECRET_ACCESS_KEY"],
              "reader": reader["AWS_ACCESS_KEY_ID"], "reader_secret": reader["AWS_SECRET_ACCESS_KEY"]}
    with mounts, listener:
        yield w, places, [pg_foreign, pg_plain, (s3, bucket)]


# The object store's settings, as a user sets them (the keys moto gave each user).
WRITER = {"AWS_ENDPOINT_URL": "{endpoint}", "AWS_ACCESS_KEY_ID": "{writer}", "AWS_SECRET_ACCESS_KEY": "{writer_secret}",
          "AWS_DEFAULT_REGION": "us-east-1"}
READER = {**WRITER, "AWS_ACCESS_KEY_ID": "{reader}", "AWS_SECRET_ACCESS_KEY": "{reader_secret}"}

# (id, argv, what the one line must say, extra environment)
ROWS: list[tuple[str, list[str], str, dict[str, str]]] = [
    # usage and numbers
    ("no-command", [], "required: command", {}),
    ("unknown-command", ["frobnicate"], "invalid choice", {}),
    ("epochs-text", ["run", "--epochs", "abc"], "--epochs: 'abc' is not a whole number", {}),
    ("epochs-zero", ["run", "--epochs", "0"], "--epochs: 0 must be at least 1", {}),
    ("trials-negative", ["run", "--n-trials", "-3"], "--n-trials", {}),
    ("trials-fraction", ["run", "--n-trials", "2.5"], "--n-trials: '2.5' is not a whole number", {}),
    ("timeout-negative", ["run", "--timeout", "-1"], "--timeout: -1 must be a positive number", {}),
    ("timeout-nan", ["run", "--timeout", "nan"], "--timeout: nan", {}),
    ("timeout-inf", ["run", "--timeout", "inf"], "--timeout: inf", {}),
    ("heartbeat-zero", ["run", "--heartbeat-interval", "0"], "--heartbeat-interval", {}),
    ("grace-too-short", ["run", "--grace-period", "5", "--heartbeat-interval", "10"], "at least twice", {}),
    ("patience-negative", ["run", "--db-patience", "-5"], "--db-patience", {}),
    ("keep-best-zero", ["run", "--keep-best", "0"], "--keep-best", {}),
    ("seed-negative", ["run", "--seed", "-1"], "--seed: -1 is outside 0..4294967295", {}),
    ("seed-too-big", ["run", "--seed", "4294967296"], "--seed: 4294967296 is outside", {}),
    ("unknown-objective", ["run", "--objective", "imagenet"], "unknown objective 'imagenet'; choose one of", {}),
    ("study-empty", ["run", "--study", ""], "--study: must not be empty", {}),
    ("study-too-long", ["run", "--study", LONG], "at most 512", {}),
    ("unknown-flag", ["run", "--fast"], "unrecognized arguments: --fast", {}),
    ("status-which-study", ["status", "--storage", "sqlite:///{w}/two-studies.db"], "this storage holds 2 "
     "studies (first, second); pass --study NAME (or set SEARCH_STUDY)", {}),
    ("status-no-study-yet", ["status", "--storage", "sqlite:///{w}/no-study.db"], "this storage holds no study "
     "yet; start one with search run or search worker, or check --storage", {}),
    ("worker-which-study", ["worker", "--storage", "sqlite:///{w}/two-studies.db"], "this storage holds 2 studies "
     "(first, second); pass --study NAME", {}),
    ("study-of-another-program", ["worker", "--study", "plain", "--storage", "sqlite:///{w}/plain-optuna.db"],
     "study 'plain' holds trials that search did not make (no objective recorded); choose another --study name", {}),
    ("best-which-study", ["best", "--storage", "sqlite:///{w}/two-studies.db", "--export", "{w}/new.pt"],
     "holds 2 studies (first, second)", {}),
    ("retrain-no-export", ["best", "--study", "ready", "--storage", "{db}", "--retrain"],
     "--retrain needs somewhere to write", {}),
    ("force-no-export", ["best", "--study", "ready", "--storage", "{db}", "--force"], "--force only applies", {}),
    ("evaluate-no-path", ["evaluate"], "required: path", {}),
    ("pruner-unknown", ["run", "--pruner", "asha"], "argument --pruner: 'asha' is not one of median, hyperband, "
     "successive-halving", {}),
    ("pruner-env-bad", ["run"], "SEARCH_PRUNER='Median' (from the environment): 'Median' is not one of median, "
     "hyperband, successive-halving; fix or unset SEARCH_PRUNER", {"SEARCH_PRUNER": "Median"}),
    ("space-missing", ["run", "--space", "{w}/no-space.toml"], "search space file {w}/no-space.toml: cannot read "
     "it (No such file or directory); check --space", {}),
    ("space-malformed", ["run", "--space", "{w}/notes.txt"], "search space file {w}/notes.txt is not valid TOML", {}),
    ("space-env-bad", ["worker", "--study", "ready", "--storage", "{db}"], "is not valid TOML",
     {"SEARCH_SPACE": "{w}/notes.txt"}),
    ("report-which-study", ["report", "--storage", "sqlite:///{w}/two-studies.db"], "holds 2 studies", {}),
    ("report-out-file", ["report", "--study", "ready", "--storage", "{db}", "--out", "{w}/notes.txt"],
     "--out {w}/notes.txt is a file; give a directory", {}),
    ("report-out-unwritable", ["report", "--study", "ready", "--storage", "{db}", "--out", "/sys/report"],
     "--out /sys/report: cannot write there", {}),
    ("report-out-nowhere", ["report", "--study", "ready", "--storage", "{db}", "--out", "{w}/no/such/dir"],
     "directory {w}/no/such does not exist", {}),
    # the environment
    ("env-timeout", ["run"], "SEARCH_TIMEOUT='soon' (from the environment)", {"SEARCH_TIMEOUT": "soon"}),
    ("env-trials", ["run"], "SEARCH_N_TRIALS='abc'", {"SEARCH_N_TRIALS": "abc"}),
    ("env-seed", ["run"], "SEARCH_SEED='-4'", {"SEARCH_SEED": "-4"}),
    ("env-device", ["run"], "unknown --device 'tpu'", {"SEARCH_DEVICE": "tpu"}),
    ("env-port", ["dashboard", "--storage", "{db}"], "SEARCH_DASHBOARD_PORT='0'", {"SEARCH_DASHBOARD_PORT": "0"}),
    ("env-epochs-empty", ["run"], "SEARCH_EPOCHS=''", {"SEARCH_EPOCHS": ""}),
    ("env-file-missing", ["status", "--study", "ready"], "SEARCH_STORAGE_FILE='{w}/no-secret': cannot read it "
     "(No such file or directory); fix the path or mount the secret there", {"SEARCH_STORAGE_FILE": "{w}/no-secret"}),
    ("env-file-newline", ["status", "--study", "ready"], "SEARCH_STORAGE_FILE='{w}/two-lines' (the file's "
     "content): contains a line break", {"SEARCH_STORAGE_FILE": "{w}/two-lines"}),
    ("env-file-empty-path", ["status", "--study", "ready"], "SEARCH_STORAGE_FILE is set but empty",
     {"SEARCH_STORAGE_FILE": ""}),
    ("study-newline", ["run", "--study", "a\nb"], "--study: contains a line break", {}),
    ("env-file-and-value", ["status", "--study", "ready"], "both SEARCH_STORAGE and SEARCH_STORAGE_FILE are set",
     {"SEARCH_STORAGE": "{db}", "SEARCH_STORAGE_FILE": "{w}/notes.txt"}),
    ("env-file-bad-value", ["run"], "SEARCH_EPOCHS_FILE='{w}/notes.txt' (the file's content): 'an existing file",
     {"SEARCH_EPOCHS_FILE": "{w}/notes.txt"}),
    # devices
    ("device-cuda", ["run", "--device", "cuda"], "no CUDA GPU is visible", {}),
    ("device-cuda-7", ["run", "--device", "cuda:7"], "--device cuda:7", {}),
    ("device-tpu", ["run", "--device", "tpu"], "unknown --device 'tpu'", {}),
    ("device-empty", ["run", "--device", ""], "--device: must not be empty", {}),
    ("device-cpu-index", ["run", "--device", "cpu:0"], "unknown --device 'cpu:0'", {}),
    ("precision-half", ["run", "--precision", "half"], "--precision: 'half' is not one of auto, float32, bfloat16", {}),
    ("env-precision", ["best", "--study", "ready", "--storage", "{db}", "--export", "{w}/new.pt", "--retrain"],
     "SEARCH_PRECISION='fp16' (from the environment): 'fp16' is not one of", {"SEARCH_PRECISION": "fp16"}),
    ("retrain-on-cuda", ["best", "--study", "ready", "--storage", "{db}", "--export", "{w}/new.pt", "--retrain",
                         "--device", "cuda"], "no CUDA GPU", {}),
    # storage URLs and databases
    ("driver-pg8000", ["run", "--storage", "postgresql+pg8000://u@localhost/db"], "'pg8000' is not installed", {}),
    ("port-text", ["run", "--storage", "postgresql://u@localhost:abc/db"], "malformed storage URL", {}),
    ("url-option", ["run", "--storage", "postgresql://u@localhost/db?bogus=1"], "bogus is not a PostgreSQL", {}),
    ("sqlite-memory", ["run", "--storage", "sqlite:///:memory:"], "in-memory database vanishes", {}),
    ("url-session-attrs", ["status", "--storage", "postgresql://u:pw@db1:5432,db2:5432/x?target_session_attrs=master"],
     "storage URL 'postgresql://u:***@db1:5432,db2:5432/x?target_session_attrs=master': target_session_attrs='master' "
     "is not one of any, read-write, read-only, primary, standby, prefer-standby; use read-write", {}),
    ("url-empty-host", ["status", "--storage", "postgresql://u@db1:5432,,db2:5432/x"],
     "names an empty host ('db1:5432,,db2:5432'); list each host as HOST or HOST:PORT", {}),
    ("url-host-port-text", ["status", "--storage", "postgresql://u@db1:5432,db2:abc/x"],
     "host 'db2' has port 'abc', not a number from 1 to 65535", {}),
    ("url-sqlalchemy-hosts-port", ["status", "--storage", "postgresql://u@/x?host=db1:5432&host=db2:99999"],
     "host 'db2' has port '99999'", {}),
    ("mysql", ["run", "--storage", "mysql://u@localhost/db"], "unsupported storage URL", {}),
    ("sqlite-option", ["run", "--storage", "sqlite:///{w}/x.db?timeout=5"], "SQLite URLs take no options", {}),
    ("not-a-url", ["run", "--storage", "notaurl"], "malformed storage URL 'notaurl'", {}),
    ("password-hidden", ["status", "--study", "s", "--storage", "postgresql://me:hunter2@localhost:abc/db"],
     "postgresql://me:***@localhost:abc/db", {}),
    ("sqlite-read-only-dir", ["run", "--storage", "sqlite:///{w}/ro/s.db"], "is not writable", {}),
    ("sqlite-not-a-database", ["run", "--storage", "sqlite:///{w}/notadb.txt"], "file is not a database", {}),
    ("sqlite-directory", ["run", "--storage", "sqlite:///{w}/adir"], "is a directory", {}),
    ("sqlite-no-directory", ["run", "--storage", "sqlite:///{w}/nodir/s.db"], "does not exist", {}),
    ("sqlite-foreign-run", ["run", "--storage", "sqlite:///{w}/foreign.db"], "that is not Optuna's", {}),
    ("sqlite-foreign-status", ["status", "--study", "ready", "--storage", "sqlite:///{w}/foreign.db"],
     "that is not Optuna's", {}),
    ("sqlite-other-program", ["status", "--study", "ready", "--storage", "sqlite:///{w}/other-program.db"],
     "holds no Optuna study storage", {}),
    ("sqlite-old-schema", ["status", "--study", "old", "--storage", "sqlite:///{w}/old-schema.db"],
     "schema version 11", {}),
    ("sqlite-mistyped-status", ["status", "--study", "ready", "--storage", "sqlite:///{w}/mistyped.db"],
     "no SQLite file", {}),
    ("sqlite-mistyped-best", ["best", "--study", "ready", "--storage", "sqlite:///{w}/mistyped.db"],
     "no SQLite file", {}),
    ("sqlite-mistyped-dashboard", ["dashboard", "--storage", "sqlite:///{w}/mistyped.db", "--port", "{free}"],
     "no SQLite file", {}),
    ("sqlite-disk-full", ["worker", "--storage", "sqlite:///{w}/full/ready.db", "--study", "ready",
                          "--data-dir", "{data}", "--artifacts", "{art}", "--epochs", "1", "--device", "cpu"],
     "database or disk is full; free disk space", {}),
    ("pg-foreign-run", ["run", "--storage", "{pgforeign}"], "that is not Optuna's", {}),
    ("pg-foreign-status", ["status", "--study", "ready", "--storage", "{pgforeign}"], "that is not Optuna's", {}),
    ("pg-no-create", ["run", "--storage", "{pgnocreate}", "--data-dir", "{data}"],
     "permission denied for schema public; grant this database user", {}),
    ("pg-unreachable", ["status", "--study", "x", "--storage", "{closed}"], "cannot reach PostgreSQL at", {}),
    ("study-unknown", ["status", "--study", "nope", "--storage", "{db}"], "no study named 'nope'", {}),
    ("study-other-objective", ["worker", "--study", "ready", "--storage", "{db}", "--objective", "covtype",
                               "--data-dir", "{cov}"], "exists with objective 'fashion_mnist'", {}),
    ("study-other-epochs", ["worker", "--study", "ready", "--storage", "{db}", "--epochs", "5"],
     "trains 1 epoch per trial, not 5", {}),
    # data
    ("data-dir-missing", ["run", "--data-dir", "{w}/nope"], "data directory", {}),
    ("fashion-file-missing", ["run", "--data-dir", "{w}/fm-missing"], "t10k-labels-idx1-ubyte.gz: file not found",
     {}),
    ("fashion-32px", ["run", "--data-dir", "{w}/fm-32px"], "images are 32x32, Fashion-MNIST's are 28x28", {}),
    ("fashion-label-12", ["run", "--data-dir", "{w}/fm-label12"], "label 12 is outside 0..9", {}),
    ("fashion-empty", ["run", "--data-dir", "{w}/fm-empty"], "the train split has 0 rows", {}),
    ("fashion-tiny", ["run", "--data-dir", "{w}/fm-tiny"], "the validation split has 0 rows", {}),
    ("fashion-corrupt", ["run", "--data-dir", "{w}/fm-corrupt"], "corrupt gzip data", {}),
    ("covtype-label-9", ["run", "--objective", "covtype", "--data-dir", "{w}/cov-badlabel"], "not all in 1..7", {}),
    ("covtype-columns", ["run", "--objective", "covtype", "--data-dir", "{w}/cov-columns"], "rows have 20 columns",
     {}),
    ("covtype-tiny", ["run", "--objective", "covtype", "--data-dir", "{w}/cov-tiny"], "split has", {}),
    ("covtype-pickle", ["run", "--objective", "covtype", "--data-dir", "{w}/cov-evil-cache"],
     "refused to load: it holds posix.system", {}),
    ("covtype-nan", ["run", "--objective", "covtype", "--data-dir", "{w}/cov-nan-cache"], "NaN", {}),
    ("fashion-empty-dir", ["run", "--data-dir", "{w}/empty-data"], "no Fashion-MNIST files in {w}/empty-data, and "
     "downloading them failed ([Errno 111] Connection refused); put the four IDX .gz files (train-images-idx3-ubyte.gz, "
     "train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz) there, or pass --data-dir",
     {"http_proxy": "http://127.0.0.1:9", "https_proxy": "http://127.0.0.1:9"}),
    # a user's table
    ("table-no-label", ["run", "--objective", "table", "--data-dir", "{w}/tables/good.csv"],
     "good.csv needs --label COLUMN naming the column of classes; its columns: height_cm, weight_kg", {}),
    ("table-label-missing", ["run", "--objective", "table", "--data-dir", "{w}/tables/good.csv", "--label", "kind"],
     "good.csv has no column 'kind'; pass --label with the column of classes; its columns: height_cm", {}),
    ("table-one-class", ["run", "--objective", "table", "--data-dir", "{w}/tables/one-class.csv", "--label",
                         "species"], "label column 'species' holds one class ('setosa'); a classifier needs at least "
     "two", {}),
    ("table-junk", ["run", "--objective", "table", "--data-dir", "{w}/tables/junk.csv", "--label", "species"],
     "column 'height_cm' holds numbers, but 'tall' on line 9 is not one; fix those cells or drop the column", {}),
    ("table-empty-file", ["run", "--objective", "table", "--data-dir", "{w}/tables/empty.csv", "--label", "species"],
     "empty.csv is empty; give a table with a header line and rows", {}),
    ("table-nan", ["run", "--objective", "table", "--data-dir", "{w}/tables/gap.csv", "--label", "species"],
     "column 'weight_kg' has 1 empty or NaN cells (the first on line 6); fill them or drop those rows", {}),
    ("table-two-files", ["run", "--objective", "table", "--data-dir", "{w}/tables/two", "--label", "species"],
     "holds 2 (a.csv, b.parquet) .csv or .parquet files; pass --data-dir naming one file", {}),
    ("table-no-file", ["run", "--objective", "table", "--label", "species"],
     "the table data set reads your own file; pass --data-dir FILE.csv", {}),
    ("label-for-fashion", ["run", "--data-dir", "{data}", "--label", "species"],
     "--label applies to the table data set, not fashion_mnist; drop --label (and SEARCH_LABEL)", {}),
    # the artifact directory
    ("artifacts-read-only", ["run", "--data-dir", "{data}", "--artifacts", "{w}/ro/art"],
     "cannot create the artifact directory", {}),
    ("artifacts-is-a-file", ["run", "--data-dir", "{data}", "--artifacts", "{w}/afile"],
     "cannot create the artifact directory", {}),
    # exports and evaluate
    ("evaluate-random-bytes", ["evaluate", "{w}/random.bin"], "not a PyTorch file", {}),
    ("evaluate-pickled-callable", ["evaluate", "{w}/evil.pt"], "refused to load", {}),
    ("evaluate-state-mismatch", ["evaluate", "{w}/statemismatch.pt"], "does not fit model_hyperparameters", {}),
    ("evaluate-bad-hyperparameters", ["evaluate", "{w}/badhyper.pt"], "unknown activation 'tanh'", {}),
    ("evaluate-metadata-list", ["evaluate", "{w}/badmeta.pt"], "metadata must be a dict", {}),
    ("evaluate-metadata-type", ["evaluate", "{w}/metatype.pt"], "'class_names' is a int", {}),
    ("evaluate-width", ["evaluate", "{w}/width.pt", "--data-dir", "{data}"], "the model takes 54 inputs", {}),
    ("evaluate-objective", ["evaluate", "{w}/unknownobjective.pt"], "names objective 'imagenet'", {}),
    # the object store
    ("s3-no-bucket", ["run", "--data-dir", "{data}", "--artifacts", "s3://"], "--artifacts 's3://' names no bucket; "
     "use s3://BUCKET or s3://BUCKET/PREFIX", {}),
    ("s3-unreachable", ["run", "--data-dir", "{data}", "--artifacts", "s3://{bucket}/new"], "cannot reach the object "
     "store: s3://{bucket}/new (at http://127.0.0.1:{free})", {**WRITER, "AWS_ENDPOINT_URL": "http://127.0.0.1:{free}"}),
    ("s3-bad-credentials", ["run", "--data-dir", "{data}", "--artifacts", "s3://{bucket}/new"], "check the credentials "
     "(AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE)",
     {**WRITER, "AWS_ACCESS_KEY_ID": "AKIANOSUCHUSER000000"}),
    ("s3-missing-bucket", ["run", "--data-dir", "{data}", "--artifacts", "s3://no-such-bucket-here/x"],
     "create the bucket, or fix its name in --artifacts", WRITER),
    ("s3-read-only-credentials", ["run", "--data-dir", "{data}", "--artifacts", "s3://{bucket}/new"],
     "grant these credentials read and write on the bucket", READER),
    ("s3-export-bad-credentials", ["best", "--storage", "sqlite:///{w}/bucket.db", "--artifacts", "s3://{bucket}/ready",
                                   "--export", "{w}/new.pt"], "check AWS_ACCESS_KEY_ID",
     {**WRITER, "AWS_ACCESS_KEY_ID": "AKIANOSUCHUSER000000"}),
    ("s3-dashboard-unreachable", ["dashboard", "--storage", "{db}", "--artifacts", "s3://{bucket}/ready", "--port",
                                  "{free}"], "cannot reach the object store", {**READER,
                                                                               "AWS_ENDPOINT_URL": "http://127.0.0.1:9"}),
    ("evaluate-class-names", ["evaluate", "{w}/classes.pt", "--data-dir", "{data}"], "its metadata names 3 classes, "
     "but the model has 10 outputs; the file was edited or mixes two models: export it again", {}),
    ("evaluate-missing", ["evaluate", "{w}/nope.pt"], "no such file", {}),
    ("evaluate-directory", ["evaluate", "{w}/adir"], "not a file", {}),
    ("export-over-other-file", ["best", "--study", "ready", "--storage", "{db}", "--artifacts", "{art}",
                                "--export", "{w}/notes.txt"], "pass --force to replace it", {}),
    ("export-empty", ["best", "--study", "ready", "--storage", "{db}", "--export", ""], "--export: must not be empty",
     {}),
    ("export-to-directory", ["best", "--study", "ready", "--storage", "{db}", "--export", "{w}/adir"],
     "is a directory", {}),
    ("export-unwritable", ["best", "--study", "ready", "--storage", "{db}", "--export", "{w}/ro/m.pt"],
     "not writable", {}),
    ("export-weights-gone", ["best", "--study", "ready", "--storage", "{db}", "--artifacts", "{w}/empty-art",
                             "--export", "{w}/new.pt"], "rerun with --retrain", {}),
    ("export-nothing-complete", ["best", "--study", "empty", "--storage", "sqlite:///{w}/empty-study.db"],
     "has no completed trial", {}),
    # the dashboard
    ("dashboard-port-taken", ["dashboard", "--storage", "{db}", "--port", "{taken}"], "cannot listen on", {}),
    ("dashboard-port-range", ["dashboard", "--storage", "{db}", "--port", "70000"], "outside 1..65535", {}),
    ("dashboard-bad-host", ["dashboard", "--storage", "{db}", "--host", "no.such.host.invalid"], "cannot listen on",
     {}),
]


