"""An in-memory network for in-process runtime tests: N nodes in one event loop exchanging
frames through queues, no sockets.

``MemNet(n)`` holds one ``MemTransport`` per validator index; ``net.factory`` is what
``Node.start(transport=...)`` takes (it builds the node's transport around
``node.on_frame``). A frame sent is put at once in the receiver's inbox, a bounded FIFO
(the oldest frame is dropped when full, as ``PeerNetwork`` drops from a full outbound
queue); each transport drains its inbox in its own task, handing frames to ``on_message``
in the order they arrived (so per sender, in the order sent).

Faults: ``net.partition([0, 1], [2, 3])`` separates groups until ``net.heal()``: frames
across groups are lost, those sent and those still queued (the links stay "connected", as a
TCP link does until its keepalive gives up, so the node keeps sending into the void);
``net.loss`` drops that fraction of frames at random (``net.rng``, seeded);
``net.drop(src, dst, payload)`` may be replaced to drop frames selectively; ``disconnect``
with a backoff takes the link down both ways for that long. A transport that starts is linked
with every started one (``on_link`` is called at both ends). ``net.tap`` is called as each
frame leaves its sender, with the frame, before any fault applies.
"""

from __future__ import annotations

import asyncio
import collections
import random
from collections.abc import Callable, Iterable
from typing import Any

MAX_FRAME = 32 * 1024 * 1024


class MemNet:
    """The validators' links, all in this process."""

    def __init__(self, n: int, *, queue_limit: int = 20_000, seed: int = 0) -> None:
        self.n = n
        self.queue_limit = queue_limit
        self.transports: dict[int, MemTransport] = {}  # started, by index
        self.groups: list[set[int]] = []
        self.loss = 0.0
        self.rng = random.Random(seed)
        self.tap: Callable[[int, int, bytes], None] | None = None
        self.stats: collections.Counter[str] = collections.Counter()

    def factory(self, node: Any) -> MemTransport:
        """A ``TransportFactory`` for ``Node.start``."""
        return MemTransport(self, node.config.index, node.on_frame,
                            getattr(node, "on_link", None))

    # -- faults ---------------------------------------------------------------------

    def partition(self, *groups: Iterable[int]) -> None:
        """Only validators in one group reach each other (until ``heal``)."""
        self.groups = [set(g) for g in groups]

    def heal(self) -> None:
        self.groups = []

    def linked(self, a: int, b: int) -> bool:
        """Both are up and neither backs the other off (``disconnect``)."""
        if a not in self.transports or b not in self.transports or a == b:
            return False
        return not (self.transports[a].refuses(b) or self.transports[b].refuses(a))

    def separated(self, a: int, b: int) -> bool:
        """A partition lies between ``a`` and ``b``."""
        return bool(self.groups) and not any(a in g and b in g for g in self.groups)

    def drop(self, src: int, dst: int, payload: bytes) -> bool:
        """True to lose this frame (random loss at ``self.loss``; replace to select)."""
        return self.loss > 0 and self.rng.random() < self.loss

    # -- delivery -------------------------------------------------------------------

    def deliver(self, src: int, dst: int, payload: bytes) -> bool:
        """Put ``payload`` in ``dst``'s inbox; False if the link is down."""
        if not self.linked(src, dst):
            self.stats["unlinked"] += 1
            return False
        if self.tap is not None:
            self.tap(src, dst, payload)
        if self.separated(src, dst):
            self.stats["partitioned"] += 1
            return True
        if self.drop(src, dst, payload):
            self.stats["dropped"] += 1
            return True  # lost in flight: the sender cannot tell
        self.transports[dst].receive(src, payload)
        self.stats["delivered"] += 1
        return True


class MemTransport:
    """One validator's end of a ``MemNet``: what ``node.runtime.Transport`` asks for."""

    max_frame = MAX_FRAME
    read_burst = 64  # frames handed over before the drain task yields to the loop

    def __init__(self, net: MemNet, index: int, on_message: Callable[[int, bytes], None],
                 on_link: Callable[[int], None] | None = None) -> None:
        self.net = net
        self.index = index
        self.on_message = on_message
        self.on_link = on_link
        self.inbox: collections.deque[tuple[int, bytes]] = collections.deque()
        self.wakeup = asyncio.Event()
        self.backoff_until: dict[int, float] = {}
        self.disconnects: list[tuple[int, str, float]] = []
        self.dropped_full_queue = 0
        self.errors: list[BaseException] = []  # raised by on_message (the link stays up)
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        if self.index in self.net.transports:
            raise RuntimeError(f"validator {self.index} is already on the network")
        self.net.transports[self.index] = self
        self._task = asyncio.create_task(self._drain(), name=f"memnet-{self.index}")
        for peer in self.connected():  # links come up both ways, as PeerNetwork's do
            for a, b in ((self, peer), (self.net.transports[peer], self.index)):
                if a.on_link is not None:
                    a.on_link(b)

    async def stop(self) -> None:
        if self.net.transports.get(self.index) is self:
            del self.net.transports[self.index]
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self.inbox.clear()

    def set_peers(self, peers: Any) -> None:
        """The in-memory network links every validator index; the keys are ignored."""

    def broadcast(self, payload: bytes) -> None:
        for peer in self.connected():
            self.send(peer, payload)

    def send(self, peer: int, payload: bytes) -> bool:
        if not 1 <= len(payload) <= self.max_frame:
            raise ValueError(f"payload of {len(payload)} bytes: must be 1..{self.max_frame}")
        return self.net.deliver(self.index, peer, bytes(payload))

    def disconnect(self, peer: int, reason: str, backoff_s: float = 0.0) -> None:
        self.disconnects.append((peer, reason, backoff_s))
        if backoff_s > 0:
            self.backoff_until[peer] = asyncio.get_running_loop().time() + backoff_s

    def refuses(self, peer: int) -> bool:
        until = self.backoff_until.get(peer)
        return until is not None and asyncio.get_running_loop().time() < until

    def connected(self) -> list[int]:
        return [i for i in sorted(self.net.transports) if self.net.linked(self.index, i)]

    def queue_length(self, peer: int) -> int:
        other = self.net.transports.get(peer)
        return len(other.inbox) if other is not None else 0

    # -- receiving --------------------------------------------------------------------

    def receive(self, src: int, payload: bytes) -> None:
        if len(self.inbox) >= self.net.queue_limit:
            self.inbox.popleft()
            self.dropped_full_queue += 1
        self.inbox.append((src, payload))
        self.wakeup.set()

    async def _drain(self) -> None:
        while True:
            await self.wakeup.wait()
            self.wakeup.clear()
            handed = 0
            while self.inbox:
                src, payload = self.inbox.popleft()
                if not self.net.linked(src, self.index):  # the sender left or was cut off
                    self.net.stats["unlinked"] += 1
                    continue
                if self.net.separated(src, self.index):  # queued before the partition
                    self.net.stats["partitioned"] += 1
                    continue
                try:
                    self.on_message(src, payload)
                except Exception as exc:  # as PeerNetwork: counted, the link stays up
                    self.errors.append(exc)
                handed += 1
                if handed % self.read_burst == 0:
                    await asyncio.sleep(0)


class Unlinked:
    """A transport with no peer link (a non-validator's: no validator accepts it; the node's own
    BlockRequests go nowhere)."""

    max_frame = 32 << 20

    def send(self, peer: int, payload: bytes) -> bool:
        return False

    def broadcast(self, payload: bytes) -> None:
        pass

    def disconnect(self, peer: int, reason: str, backoff_s: float = 0.0) -> None:
        pass

    def connected(self) -> list[int]:
        return []

    def queue_length(self, peer: int) -> int:
        return 0
