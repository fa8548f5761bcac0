"""The peer transport across real processes: a full mesh, a SIGKILLed peer, its restart.

The module doubles as the peer process: ``python -m tests.integration.test_transport_processes
INDEX PORT PEERS_JSON`` runs one PeerNetwork that broadcasts ``"<index>:<seq>"`` every 50 ms
and prints ``PORT p``, ``CONNECTED a,b,c`` (on every change) and ``MSG peer payload`` lines.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

import pytest

from tests.factory import make_fixture

ROOT = Path(__file__).resolve().parents[2]
MODULE = "tests.integration.test_transport_processes"


class Peer:
    """One peer process and the lines it printed so far."""

    def __init__(self, index: int, port: int, peers: dict[int, int]) -> None:
        self.index = index
        self.lines: list[str] = []
        self.err_lines: list[str] = []
        self.proc = subprocess.Popen(
            [sys.executable, "-m", MODULE, str(index), str(port), json.dumps(peers)],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self._pumps = [threading.Thread(target=_pump, args=(stream, into), daemon=True)
                       for stream, into in ((self.proc.stdout, self.lines),
                                            (self.proc.stderr, self.err_lines))]
        for t in self._pumps:
            t.start()

    @property
    def stderr(self) -> str:
        return "\n".join(self.err_lines)

    @property
    def port(self) -> int:
        wait_for(lambda: any(s.startswith("PORT ") for s in self.lines))
        return int(next(s for s in self.lines if s.startswith("PORT ")).split()[1])

    def connected(self) -> list[int]:
        last = [s for s in self.lines if s.startswith("CONNECTED")]
        if not last:
            return []
        text = last[-1].partition(" ")[2]
        return [int(x) for x in text.split(",") if x]

    def messages_from(self, peer: int, since: int = 0) -> list[int]:
        prefix = f"MSG {peer} {peer}:"
        return [int(s[len(prefix):]) for s in self.lines[since:] if s.startswith(prefix)]

    def terminate(self, sig: int = signal.SIGTERM) -> int:
        """Signal the process, wait for it, and collect its stderr; its exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for t in self._pumps:
            t.join(timeout=5)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()
        return self.proc.returncode


def _pump(stream: IO[str] | None, into: list[str]) -> None:
    assert stream is not None
    for line in stream:
        into.append(line.rstrip("\n"))


def wait_for(cond: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.02)


@pytest.fixture
def peers() -> Iterator[dict[int, Peer]]:
    running: dict[int, Peer] = {}
    try:
        yield running
    finally:
        for p in running.values():
            p.terminate()


@pytest.mark.slow
def test_processes_mesh_survive_a_killed_peer_and_its_restart(peers: dict[int, Peer]) -> None:
    ports: dict[int, int] = {}
    for i in (3, 2, 1, 0):  # each dials only higher indexes, which are already listening
        peers[i] = Peer(i, 0, {j: ports[j] for j in ports})
        ports[i] = peers[i].port
    everyone = range(4)
    wait_for(lambda: all(peers[i].connected() == [j for j in everyone if j != i]
                         for i in everyone))
    wait_for(lambda: all(peers[i].messages_from(j) for i in everyone for j in everyone
                         if j != i))
    for i in everyone:  # in order on every link
        for j in everyone:
            seq = peers[i].messages_from(j)
            assert seq == sorted(seq)

    peers[1].terminate(signal.SIGKILL)  # no goodbye: the kernel closes its sockets
    wait_for(lambda: all(1 not in peers[i].connected() for i in (0, 2, 3)))

    marks = {i: len(peers[i].lines) for i in (0, 2, 3)}
    peers[1] = Peer(1, ports[1], {2: ports[2], 3: ports[3]})
    wait_for(lambda: all(peers[i].connected() == [j for j in everyone if j != i]
                         for i in everyone))
    # The new process reaches everyone, and hears from everyone.
    wait_for(lambda: all(len(peers[i].messages_from(1, marks[i])) >= 3 for i in (0, 2, 3)))
    wait_for(lambda: all(peers[1].messages_from(j) for j in (0, 2, 3)))
    for i in (0, 2, 3):
        seq = peers[i].messages_from(1, marks[i])
        assert seq == sorted(seq) and seq[0] < 100  # the new process counts from 0 again

    for i in everyone:
        assert peers[i].terminate() == 0, peers[i].stderr
        assert "Traceback" not in peers[i].stderr, peers[i].stderr


async def _run(index: int, port: int, dial: dict[int, int]) -> None:
    from node.transport import PeerNetwork

    fx = make_fixture()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)

    def on_message(peer: int, payload: bytes) -> None:
        print(f"MSG {peer} {payload.decode()}", flush=True)

    net = PeerNetwork(genesis=fx.genesis, key=fx.validator_keys[index],
                      listen=("127.0.0.1", port),
                      peers={i: ("127.0.0.1", p) for i, p in dial.items()},
                      on_message=on_message, backoff_max=0.5)
    await net.start()
    print(f"PORT {net.port}", flush=True)
    seen: list[int] | None = None
    seq = 0
    while not stop.is_set():
        if net.connected() != seen:
            seen = net.connected()
            print("CONNECTED " + ",".join(map(str, seen)), flush=True)
        net.broadcast(f"{index}:{seq}".encode())
        seq += 1
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.05)
    await net.stop()


if __name__ == "__main__":
    import logging

    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(_run(int(sys.argv[1]), int(sys.argv[2]),
                     {int(k): v for k, v in json.loads(sys.argv[3]).items()}))
