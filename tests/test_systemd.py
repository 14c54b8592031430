"""The systemd unit (systemd/coze-speaker.service) and the daemon's side of it.

* The unit: the settings the README promises, `systemd-analyze verify` clean, and
  `systemd-analyze security --offline=true` rating it at most 3.5.
* The sandbox, as far as it can be reproduced without systemd as PID 1: the daemon,
  with aplay playing through ALSA, runs under the unit's own system call filter,
  MemoryDenyWriteExecute= and RestrictAddressFamilies= (rebuilt here with libseccomp
  from the settings in the unit file).
* The notify protocol: READY=1 only once the broker is connected, WATCHDOG=1 pings,
  RELOADING=1 on SIGHUP, STOPPING=1 and exit code 0 on SIGTERM, received on a unix
  datagram socket that stands in for systemd's $NOTIFY_SOCKET.

PID 1 is not systemd on the test machines, so the unit itself is never started
(`systemd-run` needs a running manager); DynamicUser=, ProtectSystem=, DevicePolicy= and
the other namespace/cgroup settings are checked only by `systemd-analyze`.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional, Set, Tuple

import pytest

from alsa_sink import alsa_sink  # noqa: F401  (fixture)
from conftest import TOKEN, VOICE
from fake_coze import FakeCoze
from mqtt_helpers import Probe, broker, probe  # noqa: F401  (fixtures)
from test_daemon import write_config

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "systemd" / "coze-speaker.service"
EXEC_START = "/opt/coze-speaker/bin/coze-speaker -c /etc/coze-speaker/config.yaml run"
MAX_EXPOSURE = 3.5

B, D = "coze-speaker", "testspk"  # as in test_daemon.write_config
SAY, EVENT, AVAIL = f"{B}/{D}/say", f"{B}/{D}/event", f"{B}/{D}/availability"

SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(
    SYSTEMD_ANALYZE is None, reason="systemd-analyze is not installed (Debian package: systemd)")


# ----------------------------------------------------------------------------- the unit


def unit_settings(text: str) -> List[Tuple[str, str, str]]:
    """(section, key, value) for every assignment, in order (repeated keys kept)."""
    out, section = [], ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        key, sep, value = line.partition("=")
        assert sep, f"not a key=value line: {raw!r}"
        out.append((section, key.strip(), value.strip()))
    return out


def service(key: str) -> List[str]:
    return [v for s, k, v in unit_settings(UNIT.read_text()) if s == "Service" and k == key]


def one(key: str) -> str:
    values = service(key)
    assert len(values) == 1, f"{key}= should be set once in [Service], found {values}"
    return values[0]


def test_unit_has_the_promised_settings():
    assert one("Type") == "notify"
    assert one("NotifyAccess") == "main"
    assert one("WatchdogSec") == "30"
    assert one("Restart") == "on-failure"
    assert one("RestartSec") == "5"
    assert one("TimeoutStopSec") == "10"
    assert one("ExecStart") == EXEC_START
    assert one("ExecReload") == "/bin/kill -HUP $MAINPID"
    assert one("SupplementaryGroups") == "audio"
    assert one("CacheDirectory") == "coze-speaker"
    assert one("StateDirectory") == "coze-speaker"
    assert "coze-token:/etc/coze-speaker/coze-token" in service("LoadCredential")
    assert one("DynamicUser") == "yes"
    # sound: /dev/snd must stay visible and allowed
    assert one("PrivateDevices") == "no"
    assert one("DevicePolicy") == "closed"
    assert one("DeviceAllow") == "char-alsa rw"
    # network, the notify socket and ALSA plugins
    assert set(one("RestrictAddressFamilies").split()) == {"AF_UNIX", "AF_INET", "AF_INET6"}
    # aplay must stay executable
    assert not service("NoExecPaths") and not service("ExecPaths")
    assert one("CapabilityBoundingSet") == ""
    assert one("UMask") == "0077"


def _run_analyze(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([SYSTEMD_ANALYZE, "--no-pager", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "SYSTEMD_COLORS": "0", "LC_ALL": "C.UTF-8"})


@needs_analyze
def test_security_exposure_is_at_most_3_5():
    result = _run_analyze("security", "--offline=true", str(UNIT))
    if "--offline" in result.stderr and ("unrecognized" in result.stderr or "unknown" in result.stderr):
        pytest.skip(f"this systemd-analyze has no --offline (systemd >= 250 needed): {result.stderr.strip()}")
    out = result.stdout + result.stderr
    match = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", out)
    assert match, f"no exposure level in the output:\n{out[-2000:]}"
    exposure = float(match.group(1))
    assert exposure <= MAX_EXPOSURE, f"exposure {exposure} > {MAX_EXPOSURE}:\n{out}"


def _runnable_exec_start() -> str:
    """An ExecStart binary that exists on this machine, with the same arguments."""
    script = Path(sys.executable).parent / "coze-speaker"
    if script.is_file() and os.access(script, os.X_OK):
        return str(script)
    return f"{sys.executable} -m coze_speaker"


@needs_analyze
def test_systemd_analyze_verify_passes(tmp_path):
    """`systemd-analyze verify` checks that ExecStart's binary exists, and
    /opt/coze-speaker/bin/coze-speaker is only there on an installed speaker. So the unit
    is copied (same file name) into a temporary directory with ExecStart pointing at this
    test run's coze-speaker (or `python -m coze_speaker`); everything else is verified as is.
    """
    text = UNIT.read_text()
    assert text.count("ExecStart=/opt/coze-speaker/bin/coze-speaker ") == 1
    copy = tmp_path / UNIT.name
    copy.write_text(text.replace("ExecStart=/opt/coze-speaker/bin/coze-speaker ",
                                 f"ExecStart={_runnable_exec_start()} "))
    result = _run_analyze("verify", str(copy))
    ours = [line for line in (result.stdout + result.stderr).splitlines()
            if UNIT.name in line or str(tmp_path) in line]
    assert result.returncode == 0 and not ours, result.stdout + result.stderr

    # The original file: at most the one complaint about the missing /opt binary.
    result = _run_analyze("verify", str(UNIT))
    others = [line for line in (result.stdout + result.stderr).splitlines()
              if UNIT.name in line and "/opt/coze-speaker/bin/coze-speaker" not in line]
    assert not others, result.stdout + result.stderr


# ----------------------------------------------------------------------------- sandbox

# Rebuilds the unit's seccomp policy with libseccomp (through ctypes: no callbacks, so
# nothing here needs writable+executable memory), then execs the command. The filter,
# like systemd's, survives execve and applies to every child (aplay, cat).
SANDBOX = r'''
import ctypes, ctypes.util, json, os, sys

spec = json.load(open(sys.argv[1]))
lib = ctypes.CDLL(ctypes.util.find_library("seccomp") or "libseccomp.so.2", use_errno=True)
lib.seccomp_init.restype = ctypes.c_void_p
lib.seccomp_init.argtypes = [ctypes.c_uint32]
lib.seccomp_syscall_resolve_name.restype = ctypes.c_int
lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]

class Cmp(ctypes.Structure):
    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int), ("a", ctypes.c_uint64), ("b", ctypes.c_uint64)]

lib.seccomp_rule_add_array.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint,
                                       ctypes.POINTER(Cmp)]
lib.seccomp_load.argtypes = [ctypes.c_void_p]
ALLOW, EQ, MASKED_EQ = 0x7FFF0000, 4, 7
ctx = lib.seccomp_init(0x00050000 | spec["errno"])  # SCMP_ACT_ERRNO; implies no_new_privs
assert ctx, "seccomp_init failed"

def rule(name, *conds):
    nr = lib.seccomp_syscall_resolve_name(name.encode())
    if nr < 0:
        return  # not a system call of this architecture
    arr = (Cmp * max(1, len(conds)))(*[Cmp(*c) for c in conds])
    rc = lib.seccomp_rule_add_array(ctx, ALLOW, nr, len(conds), arr)
    if rc < 0 and name in spec["required"]:
        raise SystemExit(f"seccomp_rule_add({name}) failed: {rc}")

for name in spec["allow"]:
    if name not in spec["conditional"]:
        rule(name)
if spec["mdwe"]:  # MemoryDenyWriteExecute=, as systemd's seccomp rules
    PROT_WRITE, PROT_EXEC, SHM_EXEC = 2, 4, 0o100000
    if "mmap" in spec["allow"]:
        rule("mmap", (2, MASKED_EQ, PROT_EXEC, 0))
        rule("mmap", (2, MASKED_EQ, PROT_WRITE, 0))
    for name in ("mprotect", "pkey_mprotect"):
        if name in spec["allow"]:
            rule(name, (2, MASKED_EQ, PROT_EXEC, 0))
    if "shmat" in spec["allow"]:
        rule("shmat", (2, MASKED_EQ, SHM_EXEC, 0))
if spec["families"] is not None and "socket" in spec["allow"]:  # RestrictAddressFamilies=
    for family in spec["families"]:
        rule("socket", (0, EQ, family, 0))
rc = lib.seccomp_load(ctx)
if rc < 0:
    raise SystemExit(f"seccomp_load failed: {rc}")
os.execv(sys.argv[2], sys.argv[2:])
'''

ADDRESS_FAMILIES = {"AF_UNIX": socket.AF_UNIX, "AF_INET": socket.AF_INET, "AF_INET6": socket.AF_INET6}


def syscall_groups() -> Dict[str, List[str]]:
    """Every group of `systemd-analyze syscall-filter`: its members (calls and @groups)."""
    out = _run_analyze("syscall-filter").stdout
    groups: Dict[str, List[str]] = {}
    current: Optional[List[str]] = None
    for line in out.splitlines():
        if line.startswith("@"):
            current = groups.setdefault(line.split()[0], [])
        elif line.startswith((" ", "\t")) and current is not None:
            item = line.strip()
            if item and not item.startswith("#"):
                current.append(item.split()[0])
    return groups


def expand(items: List[str], groups: Dict[str, List[str]], seen: Optional[Set[str]] = None) -> Set[str]:
    seen = set() if seen is None else seen
    names: Set[str] = set()
    for item in items:
        if item.startswith("@"):
            if item in seen:
                continue
            seen.add(item)
            assert item in groups, f"unknown system call group {item}"
            names |= expand(groups[item], groups, seen)
        else:
            names.add(item)
    return names


def sandbox_spec() -> dict:
    """The unit's SystemCallFilter= / MemoryDenyWriteExecute= / RestrictAddressFamilies=."""
    groups = syscall_groups()
    allow: Optional[Set[str]] = None
    for value in service("SystemCallFilter"):
        deny = value.startswith("~")
        names = expand(value.lstrip("~").split(), groups)
        assert allow is not None or not deny, "the unit should use an allow list"
        allow = (allow - names) if deny else ((allow or set()) | names)
    assert allow, "no SystemCallFilter= in the unit"
    errno_name = one("SystemCallErrorNumber")
    import errno as errno_mod
    families = service("RestrictAddressFamilies")
    return {
        "allow": sorted(allow),
        "errno": getattr(errno_mod, errno_name),
        "mdwe": service("MemoryDenyWriteExecute") == ["yes"],
        "families": [ADDRESS_FAMILIES[f] for f in families[-1].split()] if families else None,
        "conditional": ["mmap", "mprotect", "pkey_mprotect", "shmat", "socket"],
        "required": ["execve", "read", "write", "exit_group"],
    }


@pytest.fixture
def sandboxed(tmp_path):
    """A command prefix that runs a program under the unit's seccomp policy."""
    if SYSTEMD_ANALYZE is None:
        pytest.skip("systemd-analyze is not installed (Debian package: systemd)")
    try:
        ctypes.CDLL(ctypes.util.find_library("seccomp") or "libseccomp.so.2")
    except OSError:
        pytest.skip("libseccomp is not installed (Debian package: libseccomp2)")
    spec_path = tmp_path / "seccomp.json"
    spec_path.write_text(json.dumps(sandbox_spec()))
    script = tmp_path / "sandbox.py"
    script.write_text(SANDBOX)
    prefix = [sys.executable, str(script), str(spec_path)]
    check = subprocess.run([*prefix, sys.executable, "-c", "pass"], capture_output=True, text=True, timeout=60)
    if "seccomp_load failed" in check.stderr:
        pytest.skip(f"this machine does not allow seccomp filters: {check.stderr.strip()}")
    assert check.returncode == 0, check.stderr
    return prefix


def test_sandbox_emulation_really_restricts(sandboxed):
    """The rebuilt policy is live: what the unit forbids fails with EPERM."""
    probe_code = r'''
import mmap, os, socket
def denied(f):
    try:
        f()
    except PermissionError:
        return True
    return False
print(denied(lambda: os.setpriority(os.PRIO_PROCESS, 0, 5)),                        # @resources
      denied(lambda: os.setuid(os.getuid())),                                          # @privileged
      denied(lambda: mmap.mmap(-1, 4096, prot=mmap.PROT_WRITE | mmap.PROT_EXEC)),      # MDWE
      denied(lambda: socket.socket(socket.AF_PACKET, socket.SOCK_RAW)),                # address families
      not denied(lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM).close()),
      not denied(lambda: socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM).close()),
      not denied(lambda: mmap.mmap(-1, 4096).close()))
'''
    result = subprocess.run([*sandboxed, sys.executable, "-c", probe_code], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["True"] * 7, result.stdout + result.stderr


def test_daemon_speaks_through_aplay_under_the_units_syscall_filter(sandboxed, tmp_path, fake_coze, broker,
                                                                    probe, alsa_sink):
    """A say message is synthesized, cached and played by a real aplay, all inside the
    unit's seccomp policy (SystemCallFilter=, SystemCallErrorNumber=,
    MemoryDenyWriteExecute=, RestrictAddressFamilies=, NoNewPrivileges=)."""
    path = write_config(tmp_path, fake_coze, broker)
    env = dict(os.environ)  # carries ALSA_CONFIG_PATH of the sink
    env.pop("COZE_API_TOKEN", None)
    env.pop("NOTIFY_SOCKET", None)
    proc = subprocess.Popen([*sandboxed, sys.executable, "-m", "coze_speaker", "-c", str(path), "run"],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        probe.wait_for(lambda ms: [m for m in ms if m.topic == AVAIL and m.payload == b"online"], timeout=30)
        status = Path(f"/proc/{proc.pid}/status").read_text()
        assert re.search(r"^Seccomp:\s+2$", status, re.M), "the daemon is not under a seccomp filter"
        assert re.search(r"^NoNewPrivs:\s+1$", status, re.M)
        probe.publish(SAY, {"text": "Sandboxed and speaking", "id": "sb"})
        finished = probe.wait_event(EVENT, id="sb", event="finished", timeout=30)
        assert finished["cached"] is False
        audio = FakeCoze.pcm_for("Sandboxed and speaking", VOICE, 24000)
        assert alsa_sink.wait_for(len(audio)).startswith(audio)
        probe.publish(SAY, {"text": "Sandboxed and speaking", "id": "sb2"})
        assert probe.wait_event(EVENT, id="sb2", event="finished", timeout=30)["cached"] is True
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
    err = proc.stderr.read().decode("utf-8", "replace")
    proc.stderr.close()
    assert code == 0, err
    assert "Operation not permitted" not in err and "Traceback" not in err, err
    assert TOKEN not in err


# ----------------------------------------------------------------------------- notify


class NotifySocket:
    """A unix datagram socket in the role of systemd's $NOTIFY_SOCKET. With `only_pid`, only
    datagrams from that process count (as with NotifyAccess=main; the sender's pid comes with
    each one, SO_PASSCRED): mosquitto started by a test inherits NOTIFY_SOCKET and sends its
    own READY=1, which must not be taken for the daemon's."""

    def __init__(self, only_pid: Optional[int] = None) -> None:
        # sun_path is limited to 108 bytes: a short directory of our own, not tmp_path
        self.dir = tempfile.mkdtemp(prefix="cs-notify-")
        self.path = os.path.join(self.dir, "notify")
        self.only_pid = only_pid
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        if only_pid is not None:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.sock.bind(self.path)
        self.messages: List[List[str]] = []  # each datagram (that counts) as its lines

    def _receive(self, timeout: Optional[float]) -> bool:
        """Take one datagram (False if none came within timeout; 0 = do not wait)."""
        self.sock.settimeout(timeout)
        creds = struct.calcsize("3i")
        try:
            data, ancillary, _, _ = self.sock.recvmsg(4096, socket.CMSG_SPACE(creds))
        except (socket.timeout, BlockingIOError):
            return False
        if self.only_pid is not None:
            pids = [struct.unpack("3i", d[:creds])[0] for level, kind, d in ancillary
                    if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS]
            if pids != [self.only_pid]:
                return True
        self.messages.append(data.decode("utf-8", "replace").splitlines())
        return True

    def drain(self) -> None:
        while self._receive(0):
            pass

    def wait_for(self, line: str, timeout: float, proc: Optional[subprocess.Popen] = None,
                 after: int = 0) -> int:
        """Receive until a datagram (index >= after) has ``line``; returns its index."""
        deadline = time.monotonic() + timeout
        while True:
            for i in range(after, len(self.messages)):
                if line in self.messages[i]:
                    return i
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {line} within {timeout} s; got {self.messages}"
                                     + (_stderr_tail(proc) if proc is not None else ""))
            if not self._receive(min(left, 0.5)):
                if proc is not None and proc.poll() is not None and line != "STOPPING=1":
                    raise AssertionError(f"the daemon exited ({proc.returncode}) before {line}"
                                         + _stderr_tail(proc))

    def seen(self, line: str, before: Optional[int] = None) -> bool:
        return any(line in m for m in self.messages[:before])

    def close(self) -> None:
        self.sock.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def _stderr_tail(proc: subprocess.Popen) -> str:
    if proc.poll() is None or proc.stderr is None:
        return ""
    return "\nstderr:\n" + proc.stderr.read().decode("utf-8", "replace")[-3000:]


@pytest.fixture
def notify_socket():
    s = NotifySocket()
    yield s
    s.close()


def test_notify_protocol_ready_watchdog_reload_stopping(tmp_path, fake_coze, broker, alsa_sink, notify_socket):
    """READY=1 waits for the broker; WATCHDOG=1 pings with $WATCHDOG_USEC; SIGHUP gives
    RELOADING=1 then READY=1 again; SIGTERM gives STOPPING=1 and exit code 0."""
    path = write_config(tmp_path, fake_coze, broker)
    broker.stop()  # the daemon starts while the broker is down
    env = dict(os.environ, NOTIFY_SOCKET=notify_socket.path, WATCHDOG_USEC="2000000")
    for var in ("WATCHDOG_PID", "COZE_API_TOKEN"):
        env.pop(var, None)
    proc = subprocess.Popen([sys.executable, "-m", "coze_speaker", "-c", str(path), "run"], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    ns = notify_socket
    try:
        # Up and pinging the watchdog, but not ready: no broker yet.
        first_ping = ns.wait_for("WATCHDOG=1", 30, proc)
        assert not ns.seen("READY=1"), ns.messages

        broker.start()
        ready = ns.wait_for("READY=1", 60, proc)
        # READY=1 comes the moment the broker accepted the connection, so the retained `online`
        # may still be on its way: a subscriber that comes after it has arrived gets it retained
        for _ in range(2):
            late = Probe(broker.port)
            try:
                online = late.wait_for(lambda _: [m for m in late.on(AVAIL) if m.payload == b"online"], timeout=10)
            finally:
                late.close()
        assert online[0].retain
        assert ns.wait_for("WATCHDOG=1", 15, proc, after=ready + 1) > ready > first_ping

        proc.send_signal(signal.SIGHUP)
        reloading = ns.wait_for("RELOADING=1", 15, proc, after=ready + 1)
        ns.wait_for("READY=1", 60, proc, after=reloading + 1)

        proc.send_signal(signal.SIGTERM)
        ns.wait_for("STOPPING=1", 15, proc)
        code = proc.wait(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
    err = proc.stderr.read().decode("utf-8", "replace")
    proc.stderr.close()
    assert code == 0, err
    assert any(line.startswith("STATUS=") for m in ns.messages for line in m), ns.messages
    assert TOKEN not in err
