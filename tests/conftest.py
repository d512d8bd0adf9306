from __future__ import annotations

import os
import warnings
from pathlib import Path
from collections.abc import Iterator

import optuna
import pytest

from tests.support.datafiles import write_covtype_uci, write_fashion_mnist
from tests.support.postgres import PostgresServer
from tests.support.s3 import S3Server

warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
optuna.logging.set_verbosity(optuna.logging.WARNING)

# The fault, host and bench modules: minutes of real outages, hosts and soaks. `-m "not
# slow"` is the quick inner loop; the full command runs them too, first, so that the
# longest tests start while the short ones fill the other processes.
SLOW_MODULES = {"test_faults", "test_hosts", "test_failover", "test_benches"}
# Modules whose tests share a costly module-scoped set-up (a world of bad inputs, a
# cluster of hosts, a trained study): each runs in one test process (--dist loadgroup),
# which builds it once.
SHARED_SETUP = {"test_bad_input", "test_hosts", "test_export", "test_views"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        module = item.module.__name__.rsplit(".", 1)[-1] if item.module is not None else ""
        if module in SLOW_MODULES:
            item.add_marker(pytest.mark.slow)
        if module in SHARED_SETUP:
            item.add_marker(pytest.mark.xdist_group(module))
    items.sort(key=start_order)  # stable: a module's tests of one rank stay together


def start_order(item: pytest.Item) -> tuple[bool, bool]:
    """The longest first, so that the last to start are short: the slow modules, then the
    modules run as one group and the tests that run worker processes through whole trials
    (they train on the medium data)."""
    long = item.get_closest_marker("xdist_group") is not None or "medium_fashion_dir" in item.fixturenames
    return item.get_closest_marker("slow") is None, not long


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """`-n auto`: two test processes per core (most of a test's time is spent waiting on
    servers, subprocesses and outages), at most 8 (each runs its own servers)."""
    return min(8, 2 * len(os.sched_getaffinity(0)))


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    server = PostgresServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def fashion_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_fashion_mnist(tmp_path_factory.mktemp("fashion"))


@pytest.fixture(scope="session")
def covtype_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_covtype_uci(tmp_path_factory.mktemp("covtype"))


@pytest.fixture(scope="session")
def medium_fashion_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Large enough that an epoch of ``tests.support.workers.SLOW_PARAMS`` takes half a second
    on a free core (a second or two with the suite's processes beside it): a test acts in
    the middle of a trial, and no test trains longer than that needs."""
    return write_fashion_mnist(tmp_path_factory.mktemp("fashion-medium"), n_train=4800, n_test=300)


@pytest.fixture(scope="session")
def s3() -> Iterator[S3Server]:
    server = S3Server()
    server.start()
    try:
        yield server
    finally:
        server.stop()
