"""A WAN test bed on one machine: one network namespace per host, joined by a userspace
switch (tests/wan/switch.py) that shapes each host's egress like ``tc netem`` would.

    with Bed(["node0", "node1", "node2", "node3", "client"]) as bed:
        bed.shape("*", delay_ms=25, jitter_ms=1)
        bed.popen("node0", [sys.executable, "-m", "node.cli", "node", "run", ...])
        bed.call("client", httpx.get, f"http://{bed.address('node0')}:8000/healthz")
        bed.down("node3"); bed.up("node3")

Host ``i`` is the namespace ``lw<pid>-<name>`` at ``10.231.0.<i+1>/24`` on a TUN device
``wan0`` (MTU 65000, no ARP), with ``lo`` up. Nothing is created in the machine's own
namespace: the switch creates each TUN from inside its namespace, and the devices vanish with
the switch. ``Bed`` removes its namespaces and kills its processes on exit, on an exception,
SIGINT and SIGTERM (handlers + atexit); at start it removes stale ``lw<pid>-*`` namespaces of
dead pids (``sweep_stale``). ``call`` runs a function on a thread that has entered a host's
namespace (``setns``), so the test process itself can open sockets there.

Needs root (CAP_SYS_ADMIN and CAP_NET_ADMIN); otherwise :class:`BedUnavailable` says how to
run it (``unshare --user --map-root-user --net --mount``).
"""

from __future__ import annotations

import atexit
import concurrent.futures
import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from tests.wan.switch import die_with_parent, setns

ROOT = Path(__file__).resolve().parents[2]
SUBNET = "10.231.0"
MTU = 65000
PREFIX = "lw"
T = TypeVar("T")


class BedUnavailable(RuntimeError):
    """The bed cannot be built here (not root, no ``ip``, no /dev/net/tun)."""


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check)


def our_namespaces(prefix: str = PREFIX) -> list[str]:
    """Names in ``ip netns list`` that a bed made (``lw<pid>-...``)."""
    out = ip("netns", "list", check=False).stdout
    return [line.split()[0] for line in out.splitlines()
            if re.match(rf"{prefix}\d+-", line)]


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def delete_namespace(name: str) -> None:
    """Kill what runs in ``name`` and delete it."""
    pids = ip("netns", "pids", name, check=False).stdout.split()
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), signal.SIGKILL)
    ip("netns", "delete", name, check=False)


def sweep_stale() -> list[str]:
    """Delete namespaces of beds whose owner (the pid in ``lw<pid>-``) is dead."""
    removed = []
    for name in our_namespaces():
        m = re.match(rf"{PREFIX}(\d+)-", name)
        if m and not pid_alive(int(m.group(1))):
            delete_namespace(name)
            removed.append(name)
    return removed


def check_available() -> None:
    if os.geteuid() != 0:
        raise BedUnavailable(
            "the WAN bed needs root (network namespaces and TUN devices); run as root, as CI "
            "does, or inside `unshare --user --map-root-user --net --mount --propagation "
            "private sh -c 'mount -t tmpfs none /run && exec make test'`")
    if not os.path.exists("/dev/net/tun"):
        raise BedUnavailable("the WAN bed needs /dev/net/tun (TUN devices)")
    if subprocess.run(["ip", "-V"], capture_output=True).returncode != 0:
        raise BedUnavailable("the WAN bed needs iproute2's `ip`")


class Bed:
    """Hosts in namespaces joined by the shaping switch. A context manager."""

    def __init__(self, hosts: list[str], seed: int = 0) -> None:
        check_available()
        self.hosts = list(hosts)
        self.seed = seed
        self.tag = f"{PREFIX}{os.getpid()}"
        self.procs: list[subprocess.Popen[Any]] = []
        self.switch: subprocess.Popen[str] | None = None
        self.namespaces: list[str] = []
        self.executors: dict[str, concurrent.futures.ThreadPoolExecutor] = {}
        self._control: socket.socket | None = None
        self._tmp = tempfile.TemporaryDirectory(prefix="wanbed-")
        self._closed = False
        self._old_handlers: dict[int, Any] = {}

    # -- names and addresses

    def netns(self, host: str) -> str:
        return f"{self.tag}-{host}"

    def address(self, host: str) -> str:
        return f"{SUBNET}.{self.hosts.index(host) + 1}"

    # -- life cycle

    def __enter__(self) -> Bed:
        sweep_stale()
        atexit.register(self.close)
        if threading_is_main():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._old_handlers[sig] = signal.getsignal(sig)
                signal.signal(sig, self._on_signal)
        try:
            self._build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _on_signal(self, signum: int, frame: object) -> None:
        self.close()
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        raise SystemExit(128 + signum)

    def _build(self) -> None:
        for host in self.hosts:
            name = self.netns(host)
            ip("netns", "add", name)
            self.namespaces.append(name)
            ip("-n", name, "link", "set", "lo", "up")
        spec = {"control": str(Path(self._tmp.name) / "switch.sock"), "seed": self.seed,
                "hosts": [{"name": h, "netns": self.netns(h), "address": self.address(h)}
                          for h in self.hosts]}
        spec_path = Path(self._tmp.name) / "switch.json"
        spec_path.write_text(json.dumps(spec))
        self.switch = subprocess.Popen(
            [sys.executable, "-m", "tests.wan.switch", str(spec_path)], cwd=ROOT,
            stdout=subprocess.PIPE, stderr=open(Path(self._tmp.name) / "switch.log", "w"),  # noqa: SIM115
            text=True)
        assert self.switch.stdout is not None
        line = self.switch.stdout.readline()
        if line.strip() != "ready":
            raise BedUnavailable("the switch did not start: "
                                 + (Path(self._tmp.name) / "switch.log").read_text()[-2000:])
        for host in self.hosts:
            name = self.netns(host)
            ip("-n", name, "link", "set", "wan0", "mtu", str(MTU))
            ip("-n", name, "addr", "add", f"{self.address(host)}/24", "dev", "wan0")
            ip("-n", name, "link", "set", "wan0", "up")
        self._control = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._control.connect(spec["control"])

    def close(self) -> None:
        """Kill the bed's processes and delete its namespaces (idempotent)."""
        if self._closed:
            return
        self._closed = True
        for ex in self.executors.values():
            ex.shutdown(wait=False, cancel_futures=True)
        for proc in self.procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        for proc in self.procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._control is not None:
            self._control.close()
        if self.switch is not None and self.switch.poll() is None:
            self.switch.kill()
            self.switch.wait()
        for name in self.namespaces:
            delete_namespace(name)
        self._tmp.cleanup()
        for sig, handler in self._old_handlers.items():
            with contextlib.suppress(ValueError):
                signal.signal(sig, handler)
        atexit.unregister(self.close)

    # -- running things on hosts

    def popen(self, host: str, argv: list[str], **kwargs: Any) -> subprocess.Popen[Any]:
        """Start ``argv`` inside ``host``'s namespace (``ip netns exec``); killed by close()."""
        proc: subprocess.Popen[Any] = subprocess.Popen(
            ["ip", "netns", "exec", self.netns(host), *argv], cwd=kwargs.pop("cwd", ROOT),
            preexec_fn=die_with_parent, **kwargs)
        self.procs.append(proc)
        return proc

    def run(self, host: str, argv: list[str], timeout: float = 300,
            **kwargs: Any) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` in ``host``'s namespace to completion; its output as text."""
        proc = self.popen(host, argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, **kwargs)
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)

    def call(self, host: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``fn(*args, **kwargs)`` on a thread inside ``host``'s namespace: sockets it opens
        live there (the thread entered it with setns)."""
        return self.submit(host, fn, *args, **kwargs).result()

    def submit(self, host: str, fn: Callable[..., T], *args: Any,
               **kwargs: Any) -> concurrent.futures.Future[T]:
        """:meth:`call` without waiting: its future (four threads per host)."""
        ex = self.executors.get(host)
        if ex is None:
            path = f"/run/netns/{self.netns(host)}"

            def enter() -> None:
                fd = os.open(path, os.O_RDONLY)
                try:
                    setns(fd)
                finally:
                    os.close(fd)

            ex = self.executors[host] = concurrent.futures.ThreadPoolExecutor(
                max_workers=4, initializer=enter, thread_name_prefix=f"ns-{host}")
        return ex.submit(fn, *args, **kwargs)

    # -- shaping and faults (netem's names: delay, jitter, loss, rate in bits/s)

    def control(self, **doc: Any) -> dict[str, Any]:
        assert self._control is not None
        self._control.sendall(json.dumps(doc).encode() + b"\n")
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = self._control.recv(65536)
            if not chunk:
                raise RuntimeError("the switch closed its control socket")
            buf += chunk
        reply: dict[str, Any] = json.loads(buf)
        if not reply.get("ok"):
            raise RuntimeError(f"switch: {reply.get('error')}")
        return reply

    def shape(self, host: str = "*", *, delay_ms: float = 0, jitter_ms: float = 0,
              loss: float = 0, rate: float = 0) -> None:
        """Host ``host``'s (or every host's, "*") egress, as
        ``tc qdisc replace dev wan0 root netem delay {delay_ms}ms {jitter_ms}ms loss
        {loss*100}% rate {rate}bit`` would set it: the one place to swap in netem."""
        self.control(op="shape", host=host, delay_ms=delay_ms, jitter_ms=jitter_ms,
                     loss=loss, rate=rate)

    def down(self, host: str) -> None:
        self.control(op="down", host=host)

    def up(self, host: str) -> None:
        self.control(op="up", host=host)

    def partition(self, *groups: list[str]) -> None:
        self.control(op="partition", groups=[list(g) for g in groups])

    def heal(self) -> None:
        self.control(op="heal")

    def burst(self, host: str, loss: float, seconds: float) -> None:
        self.control(op="burst", host=host, loss=loss, seconds=seconds)

    def stats(self) -> dict[str, Any]:
        """The switch's counters and CPU seconds (``cpu_s``) since it started."""
        return self.control(op="stats")


def threading_is_main() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


@contextlib.contextmanager
def bed(hosts: list[str], seed: int = 0) -> Iterator[Bed]:
    with Bed(hosts, seed) as b:
        yield b
