"""The WAN bed's switch: one process holding every host's TUN device, forwarding IPv4
packets by destination address with each host's egress shaped (netem's parameters: delay,
jitter, loss, rate) and faults applied (link down, partition groups, loss bursts).

Why userspace: this machine's kernel has no ``sch_netem`` (``tc qdisc add dev lo root netem
delay 10ms`` -> "Specified qdisc kind is unknown"), so the issue's bridge + ``tc netem`` cannot
be built here; the shaping is done per packet by this process instead (docs/wan.md).

Started by :class:`tests.wan.bed.Bed` as ``python -m tests.wan.switch SPEC.json``; SPEC names
the control socket and, per host, its network namespace (``/run/netns/NAME``), address and
shaping. The switch enters each namespace (``setns`` on its own thread-less process), creates
a TUN device ``wan0`` there, and returns to its own namespace: the devices vanish with it.

Forwarding: a packet read from host A's TUN for host B's address is dropped if A or B is down,
if they are in different partition groups, or by A's loss (a seeded ``random.Random``);
otherwise it leaves A's link after serialisation at A's ``rate`` (bits/s; 0 = unlimited) and
arrives at ``max(now + delay + uniform(-jitter, jitter), previous arrival on A's link)``
(netem without reordering). Pending packets sit in a heap of arrival times.

Control: JSON lines on a unix socket, one reply line each::

    {"op": "shape", "host": "node0", "delay_ms": 10, "jitter_ms": 1, "loss": 0.01, "rate": 0}
    {"op": "shape", "host": "*", ...}          every host
    {"op": "down", "host": "node3"}  /  {"op": "up", "host": "node3"}
    {"op": "partition", "groups": [["node0", "node1"], ["node2", "node3"]]}
                                               hosts in no group reach everyone
    {"op": "heal"}                             no partition
    {"op": "burst", "host": "node1", "loss": 0.5, "seconds": 2}
    {"op": "stats"}                            packets, drops, bytes, CPU seconds
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import heapq
import json
import os
import random
import resource
import selectors
import signal
import socket
import struct
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CLONE_NEWNET = 0x40000000
TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
PR_SET_PDEATHSIG = 1
READS_PER_WAKEUP = 256  # packets read from one TUN per selector wakeup


def libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def setns(fd: int) -> None:
    """Move the calling thread into the network namespace ``fd`` refers to."""
    if libc().setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


def die_with_parent(sig: int = signal.SIGKILL) -> None:
    """PR_SET_PDEATHSIG: the kernel sends ``sig`` to this process when its parent dies (a
    bed killed with SIGKILL leaves no switch or node running)."""
    libc().prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0)


def open_tun(netns: str, name: str = "wan0") -> int:
    """A TUN device (L3, no packet info) created inside the named namespace; its fd."""
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(f"/run/netns/{netns}", os.O_RDONLY)
    try:
        setns(target)
        try:
            fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
            fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TUN | IFF_NO_PI))
        finally:
            setns(own)
    finally:
        os.close(own)
        os.close(target)
    return fd


@dataclass
class Link:
    """One host's egress: netem's parameters and the state that keeps it in order."""

    name: str
    address: bytes  # IPv4, 4 bytes
    fd: int
    delay: float = 0.0  # seconds
    jitter: float = 0.0  # seconds, uniform in [-jitter, +jitter]
    loss: float = 0.0  # fraction
    rate: float = 0.0  # bits/s, 0 = unlimited
    down: bool = False
    burst_loss: float = 0.0
    burst_until: float = 0.0
    tx_free: float = 0.0  # when the link has serialised what it holds
    last_arrival: float = 0.0  # no reordering within a link
    group: int = -1  # partition group, -1 = none
    stats: dict[str, int] = field(default_factory=lambda: {
        "rx": 0, "tx": 0, "bytes": 0, "lost": 0, "dropped_down": 0, "partitioned": 0})


class Switch:
    def __init__(self, spec: dict[str, Any]) -> None:
        self.rng = random.Random(int(spec.get("seed", 0)))
        self.links: dict[str, Link] = {}
        self.by_address: dict[bytes, Link] = {}
        self.by_fd: dict[int, Link] = {}
        for host in spec["hosts"]:
            fd = open_tun(host["netns"])
            link = Link(host["name"], socket.inet_aton(host["address"]), fd)
            self.links[link.name] = link
            self.by_address[link.address] = link
            self.by_fd[fd] = link
            self.shape(link, host)
        self.heap: list[tuple[float, int, int, bytes]] = []
        self.seq = 0
        self.sel = selectors.DefaultSelector()
        for fd in self.by_fd:
            self.sel.register(fd, selectors.EVENT_READ, "tun")
        self.control = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.control.bind(spec["control"])
        self.control.listen(8)
        self.control.setblocking(False)
        self.sel.register(self.control, selectors.EVENT_READ, "accept")
        self.buffers: dict[socket.socket, bytes] = {}
        self.started = time.monotonic()
        self.unknown = 0
        self.not_ipv4 = 0

    @staticmethod
    def shape(link: Link, p: dict[str, Any]) -> None:
        if "delay_ms" in p:
            link.delay = float(p["delay_ms"]) / 1000
        if "jitter_ms" in p:
            link.jitter = float(p["jitter_ms"]) / 1000
        if "loss" in p:
            link.loss = float(p["loss"])
        if "rate" in p:
            link.rate = float(p["rate"])

    def forward(self, src: Link, packet: bytes, now: float) -> None:
        src.stats["rx"] += 1
        if packet[0] >> 4 != 4:
            self.not_ipv4 += 1  # IPv6 router solicitations and the like
            return
        dst = self.by_address.get(packet[16:20])
        if dst is None:
            self.unknown += 1
            return
        if src.down or dst.down:
            src.stats["dropped_down"] += 1
            return
        if src.group != dst.group and src.group >= 0 and dst.group >= 0:
            src.stats["partitioned"] += 1
            return
        loss = src.burst_loss if now < src.burst_until else src.loss
        if loss and self.rng.random() < loss:
            src.stats["lost"] += 1
            return
        sent = now
        if src.rate:
            sent = src.tx_free = max(now, src.tx_free) + len(packet) * 8 / src.rate
        arrival = sent + src.delay
        if src.jitter:
            arrival += self.rng.uniform(-src.jitter, src.jitter)
        arrival = max(arrival, src.last_arrival, now)
        src.last_arrival = arrival
        self.seq += 1
        heapq.heappush(self.heap, (arrival, self.seq, dst.fd, packet))
        src.stats["tx"] += 1
        src.stats["bytes"] += len(packet)

    def deliver(self, now: float) -> None:
        heap = self.heap
        while heap and heap[0][0] <= now:
            _, _, fd, packet = heapq.heappop(heap)
            try:  # noqa: SIM105 - the hot path: no context manager per packet
                os.write(fd, packet)
            except OSError:
                pass  # the receiving device's queue is full: the packet is lost, as on a wire

    def command(self, doc: dict[str, Any]) -> dict[str, Any]:
        op = doc.get("op")
        hosts = (list(self.links.values()) if doc.get("host") == "*"
                 else [self.links[doc["host"]]] if "host" in doc else [])
        if op == "shape":
            for link in hosts:
                self.shape(link, doc)
        elif op in ("down", "up"):
            for link in hosts:
                link.down = op == "down"
        elif op == "partition":
            for link in self.links.values():
                link.group = -1
            for g, names in enumerate(doc["groups"]):
                for name in names:
                    self.links[name].group = g
        elif op == "heal":
            for link in self.links.values():
                link.group = -1
        elif op == "burst":
            for link in hosts:
                link.burst_loss = float(doc["loss"])
                link.burst_until = time.monotonic() + float(doc["seconds"])
        elif op == "stats":
            usage = resource.getrusage(resource.RUSAGE_SELF)
            return {"ok": True, "uptime_s": time.monotonic() - self.started,
                    "cpu_s": usage.ru_utime + usage.ru_stime, "queued": len(self.heap),
                    "unknown": self.unknown, "not_ipv4": self.not_ipv4,
                    "links": {n: {**link.stats, "delay_ms": link.delay * 1000,
                                  "jitter_ms": link.jitter * 1000, "loss": link.loss,
                                  "rate": link.rate, "down": link.down, "group": link.group}
                              for n, link in self.links.items()}}
        else:
            return {"ok": False, "error": f"unknown op {op!r}"}
        return {"ok": True}

    def on_control(self, conn: socket.socket) -> None:
        try:
            data = conn.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self.sel.unregister(conn)
            self.buffers.pop(conn, None)
            conn.close()
            return
        buf = self.buffers.get(conn, b"") + data
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            try:
                reply = self.command(json.loads(line))
            except (ValueError, KeyError, TypeError) as exc:
                reply = {"ok": False, "error": repr(exc)}
            conn.setblocking(True)
            conn.sendall(json.dumps(reply).encode() + b"\n")
            conn.setblocking(False)
        self.buffers[conn] = buf

    def run(self) -> None:
        read = os.read
        by_fd = self.by_fd
        while True:
            timeout = max(0.0, self.heap[0][0] - time.monotonic()) if self.heap else 1.0
            for key, _ in self.sel.select(timeout):
                if key.data == "tun":
                    src = by_fd[key.fd]  # type: ignore[index]
                    now = time.monotonic()
                    for _ in range(READS_PER_WAKEUP):
                        try:
                            packet = read(key.fd, 65536)  # type: ignore[arg-type]
                        except BlockingIOError:
                            break
                        self.forward(src, packet, now)
                elif key.data == "accept":
                    conn, _ = self.control.accept()
                    conn.setblocking(False)
                    self.sel.register(conn, selectors.EVENT_READ, "control")
                else:
                    self.on_control(key.fileobj)  # type: ignore[arg-type]
            self.deliver(time.monotonic())


def main() -> None:
    die_with_parent()
    spec = json.loads(Path(sys.argv[1]).read_text())
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    switch = Switch(spec)
    print("ready", flush=True)  # the devices exist: the bed may configure them
    with contextlib.suppress(KeyboardInterrupt):
        switch.run()


if __name__ == "__main__":
    main()
