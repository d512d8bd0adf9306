from __future__ import annotations

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
    """Large enough that an epoch of ``tests.support.workers.SLOW_PARAMS`` takes about a second."""
    return write_fashion_mnist(tmp_path_factory.mktemp("fashion-medium"), n_train=9600, n_test=300)


@pytest.fixture(scope="session")
def s3() -> Iterator[S3Server]:
    server = S3Server()
    server.start()
    try:
        yield server
    finally:
        server.stop()
