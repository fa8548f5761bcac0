"""``GET /readyz``'s check (node.readiness): ready only when linked with a quorum and within
one height of what its peers report (their APIs' /healthz, or their consensus messages);
one validator claiming a height far ahead cannot hold the others unready."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

from node.readiness import ReadinessProbe

KEYS = [bytes([i]) * 32 for i in range(4)]


class StubNode:
    """What the probe reads of a node: validator 0 of four, power 1 each."""

    def __init__(self, height: int, linked: list[int], index: int | None = 0) -> None:
        validators = [SimpleNamespace(pubkey=k, power=1, api=f"http://n{i}.test:8000")
                      for i, k in enumerate(KEYS)]
        config = SimpleNamespace(validators=validators)
        self.core = SimpleNamespace(index=index, config_at=lambda h: config)
        self.config = SimpleNamespace(api=("n0.test", 8000), follow=[], tls_ca=None)
        self.store = SimpleNamespace(height=height)
        self.key = SimpleNamespace(public=KEYS[0])
        self.heard_heights: dict[bytes, int] = {}
        self.linked = [KEYS[i] for i in linked]

    def status(self) -> Any:
        return SimpleNamespace(peer_keys=tuple(self.linked))


def probe(node: StubNode, heights: dict[str, int | None]) -> Any:
    """The probe's verdict with peers' /healthz answering ``heights`` (None: down)."""
    asked: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        asked.append(request.url.host)
        assert request.url.path == "/healthz"
        height = heights.get(request.url.host)
        if height is None:
            raise httpx.ConnectError("Connection refused", request=request)
        return httpx.Response(200, json={"status": "ok", "height": height})

    result = asyncio.run(ReadinessProbe(node, httpx.MockTransport(handler))  # type: ignore[arg-type]
                         .check())
    assert sorted(asked) == ["n1.test", "n2.test", "n3.test"]  # never itself
    return result


def test_caught_up_and_linked_is_ready() -> None:
    r = probe(StubNode(10, [1, 2, 3]), {"n1.test": 10, "n2.test": 11, "n3.test": 10})
    assert r.ready and r.reason == "caught up"
    assert (r.height, r.highest, r.linked_power, r.total_power) == (10, 10, 4, 4)
    doc = r.to_json()
    assert doc["status"] == "ready" and doc["peer_heights"][KEYS[2].hex()] == 11


def test_behind_is_not_ready() -> None:
    r = probe(StubNode(8, [1, 2, 3]), {"n1.test": 10, "n2.test": 10, "n3.test": 10})
    assert not r.ready and "behind" in r.reason and r.highest == 10
    one_behind = probe(StubNode(9, [1, 2, 3]), {"n1.test": 10, "n2.test": 10, "n3.test": 10})
    assert one_behind.ready


def test_without_a_quorum_of_links_is_not_ready() -> None:
    r = probe(StubNode(10, [1]), {"n1.test": 10, "n2.test": 10, "n3.test": 10})
    assert not r.ready and "2 of 4" in r.reason
    assert probe(StubNode(10, [1, 3]), {"n1.test": 10, "n2.test": None, "n3.test": 10}).ready


def test_one_validator_claiming_a_far_height_does_not_hold_it_back() -> None:
    r = probe(StubNode(10, [1, 2, 3]), {"n1.test": 10**6, "n2.test": 10, "n3.test": 10})
    assert r.ready and r.highest == 10
    two = probe(StubNode(10, [1, 2, 3]), {"n1.test": 50, "n2.test": 50, "n3.test": 10})
    assert not two.ready and two.highest == 50  # f + 1 = 2 reports: the chain is there


def test_consensus_messages_count_when_the_apis_do_not_answer() -> None:
    node = StubNode(10, [1, 2, 3])
    node.heard_heights = {KEYS[1]: 20, KEYS[2]: 19}
    r = probe(node, {"n1.test": None, "n2.test": None, "n3.test": None})
    assert not r.ready and r.highest == 19
    quiet = probe(StubNode(10, [1, 2, 3]), {})
    assert quiet.ready and quiet.highest is None  # nothing shows it is behind


@pytest.mark.parametrize("answers", [{}, {"n1.test": 10}])
def test_a_follower_needs_no_link_but_a_report(answers: dict[str, int | None]) -> None:
    r = probe(StubNode(10, [], index=None), answers)
    assert r.ready is bool(answers)
    assert r.linked_power is None
