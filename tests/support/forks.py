"""``search`` processes without a fresh interpreter's start-up: a fork server.

The suite starts ``search`` hundreds of times (the bad-input table alone about 150), and a
fresh interpreter spends a second and a half of CPU importing torch, Optuna and
SQLAlchemy before it reads its first argument. ``ForkServer`` starts one process
(``python -m tests.support.forks``) that imports them once; each ``search`` process is then
a fork of it: a process of its own (its own pid, signals, working directory, environment,
stdin from /dev/null, stdout and stderr, exit status), running the same ``python -m
search.cli`` entry point. The server is one thread that forks before anything it runs
could start another, so each child is what a fresh start would have been with the
modules already loaded. A run whose environment must act at exec (``LD_PRELOAD``, a
``PYTHON*`` or thread-count variable that differs from the server's) starts the ordinary
way. Used for commands run to their end (``run_search``); workers that tests signal, cut
off and kill start as fresh interpreters (``start_worker``).
"""

from __future__ import annotations

import itertools
import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

WARM = ("search.cli", "search.commands.work", "search.commands.best", "search.commands.status",
        "search.commands.evaluate", "search.worker.training", "objectives.objective", "torch", "optuna",
        "sqlalchemy", "psycopg2", "boto3", "numpy")
AT_EXEC = ("LD_", "PYTHON", "OMP_", "MKL_", "FAKETIME")  # variables read when a process starts


class Forked:
    """A ``search`` process forked by the server: ``wait`` and ``kill``, as ``subprocess.Popen``'s."""

    def __init__(self, server: ForkServer, pid: int, args: list[str]) -> None:
        self.server, self.pid, self.args = server, pid, args
        self.returncode: int | None = None

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None:
            code = self.server.exit_code(self.pid, timeout=timeout)
            if code is None:
                raise subprocess.TimeoutExpired(self.args, timeout)
            self.returncode = code
        return self.returncode

    def kill(self) -> None:
        if self.returncode is None:
            os.kill(self.pid, signal.SIGKILL)


class ForkServer:
    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.process = subprocess.Popen([sys.executable, "-m", "tests.support.forks"], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, text=True, env=env)
        assert json.loads(self.process.stdout.readline()) == {"ready": True}
        self.scratch = Path(tempfile.mkdtemp(prefix="hpsearch-forks-"))
        self.ids = itertools.count()
        self.changed = threading.Condition()
        self.started: dict[int, int] = {}  # request id -> pid
        self.exited: dict[int, int] = {}  # pid -> exit status (negative: the signal)
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.process.stdout:
            reply = json.loads(line)
            with self.changed:
                if "code" in reply:
                    self.exited[reply["pid"]] = reply["code"]
                else:
                    self.started[reply["id"]] = reply["pid"]
                self.changed.notify_all()

    def needs_exec(self, env: dict[str, str]) -> bool:
        names = {name for name in (*env, *self.env) if name.startswith(AT_EXEC)}
        return any(env.get(name) != self.env.get(name) for name in names)

    def start(self, argv: list[str], env: dict[str, str], cwd: Path, stdout: Path,
              stderr: Path) -> Forked | subprocess.Popen[bytes]:
        """``search ARGV`` started; its stdout into the file ``stdout``, its stderr into ``stderr``."""
        if self.needs_exec(env):
            with open(stdout, "wb") as out, open(stderr, "wb") as errors:
                return subprocess.Popen([sys.executable, "-m", "search.cli", *argv], cwd=cwd, env=env,
                                        stdin=subprocess.DEVNULL, stdout=out, stderr=errors)
        number = next(self.ids)
        request = {"id": number, "argv": argv, "env": env, "cwd": str(cwd), "stdout": str(stdout),
                   "stderr": str(stderr)}
        with self.changed:
            self.process.stdin.write(json.dumps(request) + "\n")
            self.process.stdin.flush()
            if not self.changed.wait_for(lambda: number in self.started, timeout=60):
                raise RuntimeError("the fork server did not answer in 60 s")
            return Forked(self, self.started.pop(number), ["search", *argv])

    def exit_code(self, pid: int, timeout: float | None = None) -> int | None:
        """The exit status of the child ``pid``, waited for up to ``timeout`` (None: not yet)."""
        with self.changed:
            self.changed.wait_for(lambda: pid in self.exited, timeout=timeout)
            return self.exited.pop(pid, None)

    def run(self, argv: list[str], env: dict[str, str], cwd: Path, timeout: float = 300,
            ) -> subprocess.CompletedProcess[str]:
        """Like ``subprocess.run([python, -m, search.cli, *argv], capture_output=True, text=True)``."""
        scratch = Path(tempfile.mkdtemp(dir=self.scratch))
        out, err = scratch / "out", scratch / "err"
        try:
            process = self.start(argv, env, cwd, out, err)
            try:
                code = process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
                raise
            return subprocess.CompletedProcess(["search", *argv], code, out.read_text(errors="replace"),
                                               err.read_text(errors="replace"))
        finally:
            for path in scratch.iterdir():
                path.unlink()
            scratch.rmdir()

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait(timeout=30)
        self.scratch.rmdir()


def child(request: dict, inherited: list[int]) -> None:
    """In the fork: become the requested ``search`` process, run it, exit with its status."""
    import runpy
    import tempfile as temporary

    signal.set_wakeup_fd(-1)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    for fd in inherited:
        os.close(fd)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    temporary.tempdir = None  # TMPDIR as this process's environment says
    written = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    for fd, path, flags in ((0, os.devnull, os.O_RDONLY), (1, request["stdout"], written),
                            (2, request["stderr"], written)):
        opened = os.open(path, flags, 0o600)
        os.dup2(opened, fd)
        os.close(opened)
    sys.argv = ["search", *request["argv"]]
    code = 1
    try:
        runpy.run_module("search.cli", run_name="__main__", alter_sys=True)
        code = 0
    except SystemExit as exit_:
        if exit_.code is None or isinstance(exit_.code, int):
            code = exit_.code or 0
        else:
            print(exit_.code, file=sys.stderr)
    except BaseException:  # what an uncaught exception does to a fresh interpreter
        import traceback

        traceback.print_exc()
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def serve() -> None:
    """Read requests (a JSON line each) on stdin; answer each with the child's pid, and each
    child's end with its exit status, on stdout. One thread: a SIGCHLD wakes the loop."""
    import importlib

    for name in WARM:
        importlib.import_module(name)
    replies = os.fdopen(os.dup(1), "w", buffering=1)
    wake_read, wake_write = os.pipe()
    os.set_blocking(wake_write, False)
    signal.set_wakeup_fd(wake_write)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    replies.write(json.dumps({"ready": True}) + "\n")
    pending = b""
    while True:
        ready, _, _ = select.select([0, wake_read], [], [])
        if wake_read in ready:
            os.read(wake_read, 4096)
        if 0 in ready:
            chunk = os.read(0, 1 << 16)
            if not chunk:
                return  # the test process is gone or done: its children carry on alone
            pending += chunk
            while b"\n" in pending:
                line, pending = pending.split(b"\n", 1)
                request = json.loads(line)
                sys.stdout.flush()
                sys.stderr.flush()
                pid = os.fork()
                if pid == 0:
                    child(request, [replies.fileno(), wake_read, wake_write])
                replies.write(json.dumps({"id": request["id"], "pid": pid}) + "\n")
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            replies.write(json.dumps({"pid": pid, "code": os.waitstatus_to_exitcode(status)}) + "\n")


if __name__ == "__main__":
    serve()
