"""A throwaway PgBouncer in transaction pooling mode in front of a ``PostgresServer``.

Configured as docker-compose configures its pooler (``deploy/pgbouncer/entrypoint.sh``): every
transaction gets whichever server connection is free, at most ``server_connections``
of them per database, so hundreds of workers share a server with
``max_connections=100``.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from tests.support.postgres import PostgresServer, free_port


class PgBouncer:
    """``server``: what it connects to on 127.0.0.1 (a ``PostgresServer``, or a proxy in front
    of one: anything with a ``port``). ``login_retry``: seconds it waits after a failed
    server login before it tries again (``server_login_retry``: 1 as deploy/pgbouncer sets it;
    PgBouncer's own default is 15)."""

    def __init__(self, server: PostgresServer, server_connections: int = 40, clients: int = 2000,
                 login_retry: int = 1) -> None:
        binary = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
        if not Path(binary).exists():
            raise RuntimeError("pgbouncer not found: apt-get install pgbouncer")
        self.binary = binary
        self.server = server
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="hpsearch-pgbouncer-"))
        (self.root / "users.txt").write_text('"postgres" ""\n')
        (self.root / "pgbouncer.ini").write_text(f"""\
[databases]
* = host=127.0.0.1 port={server.port}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {self.port}
unix_socket_dir = {self.root}
auth_type = trust
auth_file = {self.root / "users.txt"}
pool_mode = transaction
max_client_conn = {clients}
listen_backlog = 4096
admin_users = postgres
log_connections = 0
log_disconnections = 0
default_pool_size = {server_connections}
max_db_connections = {server_connections}
server_reset_query =
ignore_startup_parameters = extra_float_digits
server_login_retry = {login_retry}
logfile = {self.root / "log"}
""")
        self.process: subprocess.Popen | None = None
        if os.geteuid() == 0:  # PgBouncer refuses to run as root
            shutil.chown(self.root, "postgres", "postgres")
            for path in self.root.iterdir():
                shutil.chown(path, "postgres", "postgres")

    def start(self) -> None:
        prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        ulimit = "ulimit -n 8192 2>/dev/null; "  # a socket per client and per server connection
        # Its output goes to a file: a pipe nobody reads fills up, and PgBouncer (one
        # process serving every client) then blocks on its next log line.
        self.output = open(self.root / "stderr", "wb")
        self.process = subprocess.Popen(
            prefix + ["bash", "-c", ulimit + f"exec {self.binary} {self.root / 'pgbouncer.ini'}"],
            stdout=self.output, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"pgbouncer exited: {(self.root / 'stderr').read_text()[-500:]}")
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.1)
        raise RuntimeError("pgbouncer did not start listening in 20 s")

    def pid(self) -> int:
        """PgBouncer's own process id (under runuser and bash)."""
        found = subprocess.run(["pgrep", "-f", f"pgbouncer {self.root}"], capture_output=True, text=True).stdout
        return int(found.split()[0]) if found.split() else self.process.pid

    def url(self, direct_url: str) -> str:
        """The pooled URL of a database given by its direct URL."""
        return direct_url.replace(f":{self.server.port}/", f":{self.port}/")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            # runuser does not pass signals on: stop its whole group (SIGTERM: PgBouncer
            # 1.18's immediate shutdown).
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        if self.process is not None:
            self.output.close()
        shutil.rmtree(self.root, ignore_errors=True)
