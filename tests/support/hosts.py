"""Hosts on this machine: Linux network namespaces on one bridge, each with an address of
its own and a private directory, so that processes in them share nothing but the network.

    with Network() as network:
        db = network.add("db")            # 10.77.N.2, its own loopback, its own nftables
        db.cut()                          # its packets dropped silently (no RST), both ways
        db.heal()

Faults are nftables rules inside a host's namespace (this kernel has no netem): ``cut``
(drop everything but loopback), ``lossy`` (drop a share of packets at random). ``lose``
kills every process of a host at once and deletes its directory. Clocks: ``skewed_env``
runs a process with its wall clock shifted (``clock_skew.c``, built here with gcc, moves
only ``CLOCK_REALTIME``: sleeps and timeouts, which use the monotonic clock, are
untouched, as on a host whose NTP is off).

The namespaces, the bridge and everything in them are named with a random tag and removed
when the ``with`` block ends. Traffic stays on the bridge: the test process reaches the
hosts from the bridge's own address. Networks of test processes running side by side
(pytest-xdist) never share a subnet: each holds a lock on its 10.77.N.0/24 while it lives
(released by the kernel if the process dies) and skips one another interface still has.
"""

from __future__ import annotations

import fcntl
import os
import random
import shutil
import signal
import subprocess
import tempfile
import uuid
from pathlib import Path

SKEW_SOURCE = Path(__file__).with_name("clock_skew.c")


def run(*command: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, check=check, capture_output=True, text=True)


class Host:
    def __init__(self, network: Network, name: str, index: int) -> None:
        self.name = name
        self.namespace = f"{network.tag}-{name}"
        self.address = f"{network.prefix}.{index}"
        self.directory = Path(tempfile.mkdtemp(prefix=f"{self.namespace}-"))
        (self.directory / "tmp").mkdir()

    def command(self, *args: str) -> list[str]:
        """``args`` run inside this host."""
        return ["ip", "netns", "exec", self.namespace, *args]

    def named_command(self, *args: str) -> list[str]:
        """``args`` run inside this host, under its own host name (a UTS namespace of its
        own: what ``socket.gethostname()`` says there, as on a real machine). The process
        keeps its pid: nothing forks."""
        return self.command("unshare", "--uts", "sh", "-c", f'hostname {self.name} && exec "$@"', "sh", *args)

    def env(self) -> dict[str, str]:
        """Environment of this host's processes: its own temporary directory."""
        return {"TMPDIR": str(self.directory / "tmp")}

    def nft(self, ruleset: str) -> None:
        subprocess.run(self.command("nft", "-f", "-"), input=ruleset, text=True, check=True, capture_output=True)

    def cut(self) -> None:
        """Drop every packet in and out (loopback aside), silently: peers see no reset."""
        self.heal()
        self.nft("table inet fault {\n"
                 " chain input { type filter hook input priority 0; iifname \"lo\" accept; drop; }\n"
                 " chain output { type filter hook output priority 0; oifname \"lo\" accept; drop; }\n}\n")

    def lossy(self, percent: int) -> None:
        """Drop ``percent`` % of the packets in and out, at random."""
        self.heal()
        self.nft("table inet fault {\n"
                 f" chain input {{ type filter hook input priority 0; iifname \"lo\" accept; "
                 f"numgen random mod 100 < {percent} drop; }}\n"
                 f" chain output {{ type filter hook output priority 0; oifname \"lo\" accept; "
                 f"numgen random mod 100 < {percent} drop; }}\n}}\n")

    def heal(self) -> None:
        run(*self.command("nft", "delete", "table", "inet", "fault"), check=False)

    def pids(self) -> list[int]:
        return [int(pid) for pid in run("ip", "netns", "pids", self.namespace, check=False).stdout.split()]

    def lose(self) -> None:
        """The host is gone: every process in it killed at once, its disk with it."""
        for pid in self.pids():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        shutil.rmtree(self.directory, ignore_errors=True)


LOCKS = Path(tempfile.gettempdir()) / "hpsearch-test-subnets"


def claim_subnet() -> tuple[str, int]:
    """A free 10.77.N prefix and the open lock file that holds it for this process."""
    LOCKS.mkdir(exist_ok=True)
    used = run("ip", "-o", "-4", "addr", "show").stdout
    for n in random.sample(range(1, 255), 254):
        prefix = f"10.77.{n}"
        if f" {prefix}." in used:
            continue  # a network left by a killed run, or another program's
        handle = os.open(LOCKS / str(n), os.O_CREAT | os.O_RDWR, 0o600)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(handle)
            continue
        return prefix, handle
    raise RuntimeError("no free 10.77.N.0/24 for a test network")


class Network:
    def __init__(self) -> None:
        self.tag = f"hps{uuid.uuid4().hex[:5]}"
        self.bridge = f"{self.tag}br"
        self.prefix, self.lock = claim_subnet()
        self.hosts: dict[str, Host] = {}
        self.skew_library: Path | None = None

    @property
    def gateway(self) -> str:
        """The bridge's own address: where the test process reaches the hosts from."""
        return f"{self.prefix}.1"

    def __enter__(self) -> Network:
        try:
            run("ip", "link", "add", "name", self.bridge, "type", "bridge")
            run("ip", "addr", "add", f"{self.gateway}/24", "dev", self.bridge)
            run("ip", "link", "set", self.bridge, "up")
        except BaseException:
            self.__exit__()
            raise
        return self

    def add(self, name: str) -> Host:
        index = len(self.hosts) + 2
        host = Host(self, name, index)
        self.hosts[name] = host
        outside, inside = f"{self.tag}o{index}", f"{self.tag}i{index}"
        run("ip", "netns", "add", host.namespace)
        run("ip", "link", "add", outside, "type", "veth", "peer", "name", inside)
        run("ip", "link", "set", inside, "netns", host.namespace)
        run("ip", "link", "set", outside, "master", self.bridge)
        run("ip", "link", "set", outside, "up")
        run(*host.command("ip", "link", "set", "lo", "up"))
        run(*host.command("ip", "link", "set", inside, "name", "eth0"))
        run(*host.command("ip", "addr", "add", f"{host.address}/24", "dev", "eth0"))
        run(*host.command("ip", "link", "set", "eth0", "up"))
        return host

    def skewed_env(self, seconds: int) -> dict[str, str]:
        """Environment for a process whose wall clock is ``seconds`` off."""
        if self.skew_library is None:
            target = Path(tempfile.mkdtemp(prefix=f"{self.tag}-skew-")) / "clock_skew.so"
            run("gcc", "-shared", "-fPIC", "-O2", "-o", str(target), str(SKEW_SOURCE), "-ldl")
            self.skew_library = target
        return {"LD_PRELOAD": str(self.skew_library), "CLOCK_SKEW_SECONDS": str(seconds)}

    def __exit__(self, *exc: object) -> None:
        try:
            for host in self.hosts.values():
                host.lose()
                run("ip", "netns", "del", host.namespace, check=False)
            run("ip", "link", "del", self.bridge, check=False)
            if self.skew_library is not None:
                shutil.rmtree(self.skew_library.parent, ignore_errors=True)
        finally:
            os.close(self.lock)  # the subnet is free again
