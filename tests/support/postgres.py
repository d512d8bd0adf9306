"""A throwaway PostgreSQL server for the tests, run as the ``postgres`` user when we are root."""

from __future__ import annotations

import fcntl
import os
import random
import shutil
import socket
import subprocess
import tempfile
import uuid
from pathlib import Path

PG_BIN_CANDIDATES = [Path(p) for p in ("/usr/lib/postgresql/17/bin", "/usr/lib/postgresql/16/bin",
                                       "/usr/lib/postgresql/15/bin")]


def find_pg_bin() -> Path:
    from_env = os.environ.get("PG_BIN")
    for candidate in ([Path(from_env)] if from_env else []) + PG_BIN_CANDIDATES:
        if (candidate / "pg_ctl").exists():
            return candidate
    on_path = shutil.which("pg_ctl")
    if on_path:
        return Path(on_path).parent
    raise RuntimeError("PostgreSQL server binaries not found: apt-get install postgresql (or set PG_BIN)")


# Below the kernel's ephemeral range (32768-60999 by default), so that no client's
# outgoing connection takes a port between its choice and a server's bind.
PORTS = range(20000, 32000)
PORT_LOCKS = Path(tempfile.gettempdir()) / "hpsearch-test-ports"
_claimed: list[int] = []  # open lock files: this process's ports, until it exits


def free_port() -> int:
    """A port no process listens on, claimed for this process: test processes side by side
    (pytest-xdist) each hold a lock on theirs (released by the kernel when one exits), so
    two servers are never handed the same port."""
    PORT_LOCKS.mkdir(exist_ok=True)
    for port in random.sample(PORTS, 500):
        handle = os.open(PORT_LOCKS / str(port), os.O_CREAT | os.O_RDWR, 0o600)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            with socket.socket() as sock:
                sock.bind(("127.0.0.1", port))
        except OSError:  # another test process's, or taken by some program
            os.close(handle)
            continue
        _claimed.append(handle)
        return port
    raise RuntimeError(f"no free port in {PORTS.start}..{PORTS.stop - 1} for a test server")


class PostgresServer:
    """``host``: the address it listens on (a host of ``tests.support.hosts``, whose
    ``command`` prefix is ``within``; it then trusts every client, as a test network's)."""

    def __init__(self, host: str = "127.0.0.1", within: list[str] | None = None, settings: str = "") -> None:
        self.bin = find_pg_bin()
        self.host = host
        self.within = within or []
        self.settings = settings  # more -c options for the server
        self.root = Path(tempfile.mkdtemp(prefix="hpsearch-pg-"))
        self.data = self.root / "data"
        self.port = free_port()
        self.as_postgres = os.geteuid() == 0
        if self.as_postgres:
            shutil.chown(self.root, "postgres", "postgres")
            self.root.chmod(0o700)

    def command(self, *args: str) -> list[str]:
        prefix = ["runuser", "-u", "postgres", "--"] if self.as_postgres else []
        return self.within + prefix + list(args)

    def run(self, *args: str) -> None:
        subprocess.run(self.command(*args), check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def start(self) -> None:
        self.run(str(self.bin / "initdb"), "-D", str(self.data), "-U", "postgres", "-A", "trust",
                 "--no-sync", "-E", "UTF8")
        if self.host != "127.0.0.1":
            with open(self.data / "pg_hba.conf", "a") as hba:
                hba.write("host all all 0.0.0.0/0 trust\n")
        self.pg_ctl("start")

    def pg_ctl(self, action: str) -> None:
        options = f"-p {self.port} -h {self.host} -k {self.root} -c fsync=off -c max_connections=100 {self.settings}"
        self.run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.root / "log"),
                 "-o", options, "-w", "-m", "fast", action)

    def restart(self) -> None:
        self.pg_ctl("restart")

    def start_standby_of(self, primary: PostgresServer) -> None:
        """Start as a streaming standby of ``primary`` (a base backup, then replication)."""
        self.run(str(self.bin / "pg_basebackup"), "-h", primary.host, "-p", str(primary.port), "-U", "postgres",
                 "-D", str(self.data), "-R", "-X", "stream", "--no-sync")
        self.pg_ctl("start")

    def kill(self) -> None:
        """kill -9 the server (its postmaster: the backends notice and end)."""
        pid = int((self.data / "postmaster.pid").read_text().split()[0])
        os.kill(pid, 9)

    def promote(self) -> None:
        self.run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-w", "promote")

    def stop(self) -> None:
        """Stop the server (if it runs: a killed one left only its pid file) and remove it."""
        try:
            subprocess.run(self.command(str(self.bin / "pg_ctl"), "-D", str(self.data), "-w", "-m", "fast", "stop"),
                           check=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg2://postgres@{self.host}:{self.port}/{database}"

    def new_database(self) -> str:
        """A fresh, empty database; returns its URL."""
        import sqlalchemy

        name = f"t_{uuid.uuid4().hex[:12]}"
        engine = sqlalchemy.create_engine(self.url(), isolation_level="AUTOCOMMIT")
        with engine.connect() as connection:
            connection.execute(sqlalchemy.text(f"CREATE DATABASE {name}"))
        engine.dispose()
        return self.url(name)

    def copy_database(self, url: str) -> str:
        """A new database copied from the one at ``url`` (which must have no connections)."""
        import sqlalchemy

        name = f"t_{uuid.uuid4().hex[:12]}"
        source = url.rsplit("/", 1)[1]
        engine = sqlalchemy.create_engine(self.url(), isolation_level="AUTOCOMMIT")
        with engine.connect() as connection:
            connection.execute(sqlalchemy.text(f"CREATE DATABASE {name} TEMPLATE {source}"))
        engine.dispose()
        return self.url(name)

    def rows(self, url: str, query: str) -> list[tuple]:
        import sqlalchemy

        engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
        try:
            with engine.connect() as connection:
                return [tuple(row) for row in connection.execute(sqlalchemy.text(query))]
        finally:
            engine.dispose()

    def scalar(self, url: str, query: str) -> object:
        return self.rows(url, query)[0][0]
