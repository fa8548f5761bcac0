"""Readiness (``GET /readyz``): is this node caught up, so a client may be sent to it?

``/healthz`` says the process serves; a node that has just restarted serves long before it
has its peer links back and has fetched the blocks committed while it was down. A load
balancer (or a Kubernetes readiness probe) that sends clients to it then sends them to a
node whose reads are stale. ``/readyz`` answers 200 only when

- a validator is linked with validators that, with itself, hold more than 2/3 of the
  voting power of the configuration in force (it can take part in deciding a height; a
  node that is not a validator, following the chain, needs no link), and
- its height is within 1 of the highest height its peers report: the other validators'
  APIs (``api`` of the configuration in force, and the node's ``follow`` URLs) are asked
  for ``GET /healthz`` (a second at most; one answer serves probes for ``CACHE_S``), and the
  heights its peers' consensus messages show (one for height h says its sender committed
  h - 1) count too, so a node whose peers' APIs it cannot reach still sees how far the
  chain got. "Highest" is the height at least f + 1 reports reach (f = (n - 1) // 3 of n
  validators): one faulty validator claiming a height far ahead cannot keep every node
  unready.

Otherwise 503 ``not_ready`` with the reason. When no peer reports any height (every API
unreachable on an idle chain), a linked validator is ready: nothing shows it is behind.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import httpx

if TYPE_CHECKING:
    from node.runtime import Node

CACHE_S = 0.5  # one answer serves every probe within this long
ASK_TIMEOUT_S = 1.0  # each peer's /healthz
LAG = 1  # heights behind the highest reported that still count as caught up


@dataclass(frozen=True)
class Readiness:
    """One readiness check's outcome (``to_json`` is the body of ``/readyz``)."""

    ready: bool
    reason: str
    height: int
    highest: int | None  # the highest height a peer reported (None: none did)
    linked_power: int | None  # a validator's own power plus its linked peers' (None: not one)
    total_power: int | None
    reported: dict[str, int] = field(default_factory=dict)  # source -> height

    def to_json(self) -> dict[str, Any]:
        return {"status": "ready" if self.ready else "not_ready", "reason": self.reason,
                "height": self.height, "highest_peer_height": self.highest,
                "linked_power": self.linked_power, "total_power": self.total_power,
                "peer_heights": self.reported}


class ReadinessProbe:
    """``check()`` for one node; concurrent probes share one round of peer questions."""

    def __init__(self, node: Node, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.node = node
        self.transport = transport
        self._cached: tuple[float, Readiness] | None = None
        self._running: asyncio.Task[Readiness] | None = None
        self._verify: ssl.SSLContext | bool | None = None

    def _sources(self) -> list[tuple[str, str]]:
        """(who, API URL) to ask: the other validators of the configuration in force
        (``who`` is the validator's public key, hex) and the node's ``follow`` URLs."""
        node = self.node
        config = node.core.config_at(node.store.height + 1)
        own = f"{node.config.api[0]}:{node.config.api[1]}"
        out: list[tuple[str, str]] = []
        seen: set[str] = set()
        for who, url in [*((v.pubkey.hex(), v.api) for v in config.validators
                           if v.api and v.pubkey != node.key.public),
                         *((u, u) for u in node.config.follow)]:
            url = url.strip().rstrip("/")
            if "://" not in url:
                url = f"http://{url}"
            if url.split("://", 1)[1] != own and url not in seen:
                seen.add(url)
                out.append((who, url))
        return out

    async def _ask(self, http: httpx.AsyncClient, url: str) -> int | None:
        try:
            resp = await http.get(f"{url}/healthz")
            doc = json.loads(resp.content) if resp.status_code == 200 else None
        except (httpx.HTTPError, ValueError):
            return None
        height = doc.get("height") if isinstance(doc, dict) else None
        return height if type(height) is int and height >= 0 else None

    async def _reported(self) -> dict[str, int]:
        """Each source's height: its API's answer, or what its consensus messages show,
        whichever is higher."""
        node = self.node
        sources = self._sources()
        out: dict[str, int] = {}
        if sources:
            if self._verify is None:
                ca = node.config.tls_ca
                self._verify = (True if ca is None
                                else ssl.create_default_context(cafile=str(ca)))
            async with httpx.AsyncClient(timeout=ASK_TIMEOUT_S, verify=self._verify,
                                         transport=self.transport) as http:
                heights = await asyncio.gather(*(self._ask(http, u) for _, u in sources))
            out = {who: h for (who, _), h in zip(sources, heights, strict=True)
                   if h is not None}
        members = {v.pubkey for v in node.core.config_at(node.store.height + 1).validators}
        for key, h in node.heard_heights.items():
            if key in members:  # a validator the configuration removed reports nothing
                who = key.hex()
                out[who] = max(h, out.get(who, -1))
        return out

    async def _check(self) -> Readiness:
        node = self.node
        reported = await self._reported()
        height = node.store.height
        config = node.core.config_at(height + 1)
        # The height at least f+1 of the reports reach (f: the faults the set tolerates):
        # one validator reporting a height far ahead cannot keep every node unready.
        f = (len(config.validators) - 1) // 3
        ranked = sorted(reported.values(), reverse=True)
        highest = ranked[min(f, len(ranked) - 1)] if ranked else None
        linked = total = None
        if node.core.index is not None:
            keys = set(node.status().peer_keys) | {node.key.public}
            total = sum(v.power for v in config.validators)
            linked = sum(v.power for v in config.validators if v.pubkey in keys)
            if linked * 3 <= total * 2:
                return Readiness(False, f"linked with validators holding {linked} of {total} "
                                 "voting power (itself included); deciding a height needs "
                                 "more than 2/3", height, highest, linked, total, reported)
        elif not reported:
            return Readiness(False, "not a validator, and no validator's API answered: "
                             "cannot tell how far the chain got", height, highest, linked,
                             total, reported)
        if highest is not None and height < highest - LAG:
            return Readiness(False, f"at height {height}, behind the height its peers report "
                             f"({highest})", height, highest, linked, total, reported)
        return Readiness(True, "caught up" if highest is not None else
                         "linked; no peer reported a height", height, highest, linked, total,
                         reported)

    async def check(self) -> Readiness:
        """The node's readiness, at most ``CACHE_S`` old."""
        now = time.monotonic()
        if self._cached is not None and now - self._cached[0] < CACHE_S:
            return self._cached[1]
        if self._running is None or self._running.done():
            self._running = asyncio.ensure_future(self._check())
        result = await asyncio.shield(self._running)
        self._cached = (time.monotonic(), result)
        return result
