"""A TCP proxy the tests control, between workers and PostgreSQL, to inject network faults.

* ``partition()`` / ``heal()``: existing connections stay open but nothing is forwarded
  (bytes wait in the socket buffers, as packets would during a real partition), and new
  connections are accepted but not connected upstream until the partition heals.
* ``cut_after_commit(marker)``: on the connection whose client sends ``marker`` (a string
  that appears in one particular transaction's SQL), the next ``COMMIT`` is forwarded to
  the server and then both sides are closed before the reply comes back: the commit
  happens, the client never learns it did.
* ``partition_after_commit(marker)``: on the connection whose client sends ``marker``, the
  next ``COMMIT`` and its reply go through, and then the partition starts: the client
  learns its transaction committed and hears nothing more (a host lost just after).
* ``reset()``: close every connection at once.
* ``delay``: every chunk forwarded waits that long first (a slow link: this kernel has no
  netem). ``python -m tests.support.proxy PORT HOST:PORT --delay S`` runs one as a process,
  e.g. inside another host's network namespace.
"""

from __future__ import annotations

import argparse
import select
import socket
import threading
import time
from dataclasses import dataclass, field

CHUNK = 65536
POLL_S = 0.05


@dataclass
class _Link:
    client: socket.socket
    server: socket.socket | None = None
    armed: bool = False
    partition_on_reply: bool = False  # the armed COMMIT went through: partition after its reply
    # The armed COMMIT went through and its reply must never: set before the COMMIT is sent,
    # so that the server's pump cannot forward the reply before the link is closed.
    mute: bool = False
    closed: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)

    def close(self) -> None:
        with self.lock:
            if self.closed:
                return
            self.closed = True
        for sock in (self.client, self.server):
            if sock is not None:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                sock.close()


class FaultProxy:
    def __init__(self, upstream_port: int, upstream_host: str = "127.0.0.1", port: int = 0,
                 delay: float = 0.0) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.delay = delay
        self.listener = socket.create_server(("127.0.0.1", port))
        self.port = self.listener.getsockname()[1]
        self.flowing = threading.Event()
        self.flowing.set()
        self.stopping = threading.Event()
        self.links: list[_Link] = []
        self.cut_marker: bytes | None = None
        self.cut_partitions = False  # after the armed commit: partition (True) or cut its reply (False)
        self.cuts = 0  # armed commits forwarded
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._accept, name="proxy-accept", daemon=True)
        self._thread.start()

    # --- controls -------------------------------------------------------------
    def partition(self) -> None:
        self.flowing.clear()

    def heal(self) -> None:
        self.flowing.set()

    def cut_after_commit(self, marker: str) -> None:
        """Drop the reply to the next COMMIT of the transaction whose SQL contains ``marker``."""
        with self._lock:
            self.cut_marker, self.cut_partitions = marker.encode(), False

    def partition_after_commit(self, marker: str) -> None:
        """Let the next COMMIT of the transaction whose SQL contains ``marker``, and its reply,
        through; then partition."""
        with self._lock:
            self.cut_marker, self.cut_partitions = marker.encode(), True

    def reset(self) -> None:
        with self._lock:
            links, self.links = self.links, []
        for link in links:
            link.close()

    def close(self) -> None:
        self.stopping.set()
        self.flowing.set()
        self.listener.close()
        self.reset()

    # --- forwarding -----------------------------------------------------------
    def _accept(self) -> None:
        while not self.stopping.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            link = _Link(client)
            with self._lock:
                self.links.append(link)
            threading.Thread(target=self._serve, args=(link,), daemon=True).start()

    def _serve(self, link: _Link) -> None:
        # During a partition a new connection gets no upstream until it heals.
        while not self.flowing.wait(POLL_S):
            if self.stopping.is_set() or link.closed:
                return link.close()
        try:
            link.server = socket.create_connection(self.upstream, timeout=5)
            link.server.settimeout(None)
        except OSError:
            return link.close()
        upstream = threading.Thread(target=self._pump, args=(link, link.server, link.client, False), daemon=True)
        upstream.start()
        self._pump(link, link.client, link.server, True)

    def _pump(self, link: _Link, source: socket.socket, target: socket.socket, from_client: bool) -> None:
        try:
            while not link.closed:
                if not self.flowing.is_set():
                    self.flowing.wait(POLL_S)
                    continue
                readable, _, _ = select.select([source], [], [], POLL_S)
                if not readable or not self.flowing.is_set():
                    continue
                data = source.recv(CHUNK)
                if not data:
                    break
                if self.delay:
                    time.sleep(self.delay)
                if not from_client and link.mute:
                    break
                if from_client and self._inspect(link, data):
                    link.mute = not link.partition_on_reply
                    target.sendall(data)
                    if link.partition_on_reply:
                        continue  # the reply comes back through the other pump, then the partition
                    break  # the commit went through; its reply never will
                target.sendall(data)
                if not from_client and link.partition_on_reply:
                    link.partition_on_reply = False
                    self.partition()
        except OSError:
            pass
        link.close()

    def _inspect(self, link: _Link, data: bytes) -> bool:
        """True when ``data`` is the COMMIT after which this connection must be cut."""
        with self._lock:
            marker = self.cut_marker
            if marker is None:
                return False
            if marker in data:
                link.armed = True
            if link.armed and b"COMMIT" in data:
                self.cut_marker = None
                self.cuts += 1
                link.partition_on_reply = self.cut_partitions
                return True
        return False


def main() -> None:
    parser = argparse.ArgumentParser(description="a TCP proxy on 127.0.0.1 that delays what it forwards")
    parser.add_argument("port", type=int)
    parser.add_argument("upstream", help="HOST:PORT")
    parser.add_argument("--delay", type=float, default=0.0, help="seconds each forwarded chunk waits")
    args = parser.parse_args()
    host, _, port = args.upstream.rpartition(":")
    FaultProxy(int(port), host, port=args.port, delay=args.delay)
    threading.Event().wait()


if __name__ == "__main__":
    main()
