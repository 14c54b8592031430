"""The fleet bench's network: namespaces, veth links to a bridge, and the delaying wire.

bench/fleet.py runs the broker and the fake Coze in one network namespace and every speaker
in its own. *lan*: a veth pair from each namespace to a bridge in a hub namespace (addresses
10.77.0.1 for the broker, 10.77.1.i for speaker i). *jitter*: bench/fleet_wire.c, a TUN
device in each of the same namespaces (10.78.0.1, 10.78.1.i), every packet delayed on the
speaker's link (this kernel has no sch_netem). Namespaces are named fleetbench-PID-*; close()
removes them, and a later run removes those of a run that was killed (its PID is gone).
Without root (or with --loopback) there are none: everything is on 127.0.0.1.
"""

from __future__ import annotations

import ctypes
import os
import select
import shutil
import subprocess
from pathlib import Path
from typing import List, Optional, Sequence

from harness import BENCH

PREFIX = "fleetbench-"
LAN_NET, WIRE_NET = "10.77", "10.78"


def sh(*cmd: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout, check=check)


def compile_c(source: Path, out: Path, flags: Sequence[str] = (), libs: Sequence[str] = ()) -> Path:
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        raise SystemExit("fleet bench: a C compiler (cc) is needed for the sink plugin and the wire")
    r = subprocess.run([cc, "-O2", "-Wall", *flags, "-o", str(out), str(source), *libs],
                       capture_output=True, text=True, timeout=120)
    if r.returncode != 0:
        raise SystemExit(f"fleet bench: cannot build {source.name} (libasound2-dev?): {r.stderr[-500:]}")
    return out


# --------------------------------------------------------------------------- namespaces


class Net:
    """Namespaces: broker, hub (the bridge), s1..sN; or nothing (loopback, without root)."""

    def __init__(self, use_ns: bool, count: int) -> None:
        self.use_ns = use_ns
        self.tag = f"{PREFIX}{os.getpid()}"
        self.created: List[str] = []
        self.count = count

    def build(self, count: int) -> None:
        """Create the namespaces and links (close() removes whatever was made, also halfway)."""
        self.count = count
        if self.use_ns:
            self._sweep()
            self._build()

    def ns(self, i: int) -> str:
        return f"{self.tag}-s{i}"

    @property
    def broker_ns(self) -> str:
        return f"{self.tag}-broker"

    def broker_addr(self, variant: str) -> str:
        if not self.use_ns:
            return "127.0.0.1"
        return f"{WIRE_NET if variant == 'jitter' else LAN_NET}.0.1"

    def prefix(self, i: Optional[int]) -> List[str]:
        """Run a command in speaker i's namespace (None: the broker's, where the bench is)."""
        if not self.use_ns or i is None:
            return []
        return ["ip", "netns", "exec", self.ns(i)]

    @staticmethod
    def _sweep() -> None:
        """Namespaces left by an earlier run that was SIGKILLed (its pid is gone)."""
        for name in sh("ip", "netns", "list", check=False).stdout.split():
            if name.startswith(PREFIX):
                pid = name[len(PREFIX):].split("-")[0]
                if pid.isdigit() and not Path(f"/proc/{pid}").exists():
                    sh("ip", "netns", "del", name, check=False)

    def _add(self, name: str) -> None:
        sh("ip", "netns", "add", name)
        self.created.append(name)
        sh("ip", "-n", name, "link", "set", "lo", "up")

    def _build(self) -> None:
        hub = f"{self.tag}-hub"
        self._add(hub)
        sh("ip", "-n", hub, "link", "add", "br0", "type", "bridge")
        sh("ip", "-n", hub, "link", "set", "br0", "up")
        links = [(self.broker_ns, "hb", f"{LAN_NET}.0.1")]
        links += [(self.ns(i), f"h{i}", f"{LAN_NET}.1.{i}") for i in range(1, self.count + 1)]
        for ns, port, addr in links:
            self._add(ns)
            sh("ip", "-n", hub, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", ns)
            sh("ip", "-n", hub, "link", "set", port, "master", "br0", "up")
            sh("ip", "-n", ns, "addr", "add", f"{addr}/16", "dev", "eth0")
            sh("ip", "-n", ns, "link", "set", "eth0", "up")

    def enter_broker(self) -> None:
        """Move this process (the bench: its MQTT client, the broker and the fake it starts)
        into the broker's namespace: setns(2) on the main thread before any thread exists."""
        if not self.use_ns:
            return
        libc = ctypes.CDLL(None, use_errno=True)
        fd = os.open(f"/run/netns/{self.broker_ns}", os.O_RDONLY)
        try:
            if libc.setns(fd, 0x40000000) != 0:  # CLONE_NEWNET
                raise SystemExit(f"fleet bench: setns: {os.strerror(ctypes.get_errno())}")
        finally:
            os.close(fd)

    def start_wire(self, n: int, work: Path, delay_us: int, jitter_us: int, seed: int) -> subprocess.Popen:
        """bench/fleet_wire.c between the broker (hub) and speakers 1..n, addresses 10.78.x."""
        wire = compile_c(BENCH / "fleet_wire.c", work / "fleet_wire")
        specs = [f"{self.broker_ns}:wire0:{WIRE_NET}.0.1"]
        specs += [f"{self.ns(i)}:wire0:{WIRE_NET}.1.{i}" for i in range(1, n + 1)]
        proc = subprocess.Popen([str(wire), str(delay_us), str(jitter_us), str(seed), *specs], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=open(work / "wire.log", "ab"))
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 20)
        if not ready or proc.stdout.readline().strip() != b"ready":
            proc.kill()
            raise SystemExit(f"fleet bench: the wire did not start; see {work / 'wire.log'}")
        for ns, addr in [(self.broker_ns, f"{WIRE_NET}.0.1")] + [(self.ns(i), f"{WIRE_NET}.1.{i}")
                                                                 for i in range(1, n + 1)]:
            sh("ip", "-n", ns, "addr", "add", f"{addr}/16", "dev", "wire0")
            sh("ip", "-n", ns, "link", "set", "wire0", "up", "mtu", "1500", "txqueuelen", "10000")
        return proc

    def close(self) -> None:
        for name in reversed(self.created):
            sh("ip", "netns", "del", name, check=False)
        self.created.clear()
