"""``ledger submit`` signs and submits through the SDK (node/client.py), and running a node
without the ``node`` extra says what to install in one line."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

import node.cli
from ledger.crypto import write_key_file
from ledger.encoding import b64decode
from ledger.records import Record
from node.client import LedgerClient
from tests.unit.test_sdk import KEY, TIP, FakeNode

NEEDS_SERVER = "ledger: running a node needs the server extra: pip install 'ledger[node]'\n"


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeNode:
    """The CLI's LedgerClient talks to a FakeNode in-process."""
    fake_node = FakeNode()

    def client(url: str, **kw: Any) -> LedgerClient:
        return LedgerClient(url, http=httpx.Client(transport=httpx.MockTransport(fake_node)),
                            **kw)

    monkeypatch.setattr(node.cli, "LedgerClient", client)
    return fake_node


@pytest.fixture
def key(tmp_path: Path) -> Path:
    path = tmp_path / "k.pem"
    write_key_file(path, KEY, None)
    return path


def _submit(key: Path, *extra: str) -> int:
    return node.cli.main(["submit", "--identity", str(key), "--type", "sensor.reading",
                          "--subject", "plant/t", "--payload", '{"v": 1}', *extra])


def test_submit_asks_the_chain_then_posts_through_the_sdk(
        fake: FakeNode, key: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _submit(key, "--node", "http://n.test", "--wait", "--nonce", "5") == 0
    rid = next(iter(fake.records))
    assert capsys.readouterr().out == f"{rid} height {TIP + 1}\n"
    assert [(r.method, r.url.path) for r in fake.requests] == [
        ("GET", "/v1/status"), ("POST", "/v1/records")]
    assert fake.requests[1].url.params["wait"] == "commit"
    record = fake.records[rid]
    assert (record.body.chain, record.body.nonce, record.body.signer) == ("demo", 5, KEY.public)

    assert _submit(key, "--node", "http://n.test", "--chain", "demo") == 0
    second = list(fake.records)[1]
    assert capsys.readouterr().out == f"{second}\n"  # no --wait: no height
    assert [r.url.path for r in fake.requests[2:]] == ["/v1/records"]  # --chain: no status
    assert "wait" not in fake.requests[2].url.params


def test_print_envelope_signs_offline_or_asks_the_chain(
        fake: FakeNode, key: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _submit(key, "--print-envelope", "--chain", "other") == 0
    out = dict(line.split(" ", 1) for line in capsys.readouterr().out.splitlines())
    record = Record.from_wire(b64decode(out["envelope"], "envelope"))
    assert record.id.hex() == out["id"] and record.body.chain == "other"
    assert fake.requests == []
    assert _submit(key, "--print-envelope", "--node", "http://n.test") == 0
    out = dict(line.split(" ", 1) for line in capsys.readouterr().out.splitlines())
    assert Record.from_wire(b64decode(out["envelope"], "envelope")).body.chain == "demo"
    assert [r.url.path for r in fake.requests] == ["/v1/status"] and fake.records == {}


def test_a_rejected_record_exits_1(monkeypatch: pytest.MonkeyPatch, key: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(202, json={"results": [
            {"id": None, "status": "rejected", "error": "unauthorised", "detail": "no"}]})

    monkeypatch.setattr(node.cli, "LedgerClient", lambda url, **kw: LedgerClient(
        url, http=httpx.Client(transport=httpx.MockTransport(handler)), **kw))
    assert _submit(key, "--node", "http://n.test", "--chain", "demo") == 1
    assert capsys.readouterr().err == "rejected: unauthorised: no\n"


@pytest.mark.parametrize("argv", [["node", "run"], ["cluster", "up"]])
@pytest.mark.parametrize("missing", ["uvicorn", "fastapi", "fastapi_offline"])
def test_running_a_node_without_the_server_extra_is_one_line(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path,
        argv: list[str], missing: str) -> None:
    monkeypatch.setitem(sys.modules, missing, None)  # find_spec answers None: not installed
    assert node.cli.main([*argv, str(tmp_path)]) == 2
    assert capsys.readouterr().err == NEEDS_SERVER
