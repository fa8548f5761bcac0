"""The SDK and ``ledger log`` demanding witness cosignatures (SPEC section 11):
``verified_checkpoint(..., witnesses=k)``, ``verified_receipt(..., witnesses=k,
checkpoints=...)`` and ``ledger log checkpoint|prove|consistency --witnesses K``.

The node is the real app in process (``InProcessApi``) on a genesis listing three witnesses;
``Cosigning`` stands between it and the client and adds, to each checkpoint and receipt it
serves, the cosignatures of the witnesses a test chooses (as the node lists those posted to
it), so the verifier's side is tested whatever the node keeps."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from starlette.testclient import TestClient

from ledger.blocks import Header
from ledger.crypto import PrivateKey
from ledger.encoding import b64decode
from ledger.errors import LogProofError, ReceiptError
from ledger.receipts import TrustedCheckpoint
from ledger.witness import cosign, for_header, witnesses_json
from node.client import LedgerClient
from tests.factory import make_fixture
from tests.inprocess import BASE, InProcessApi

FX = make_fixture(witnesses=3)


class Cosigning(httpx.BaseTransport):
    """Sends each request to the app; to a checkpoint's or receipt's JSON adds the
    cosignatures of ``signers`` (replacing what the node listed)."""

    def __init__(self, inner: TestClient) -> None:
        self.inner = inner
        self.signers: list[PrivateKey] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        resp = self.inner.request(request.method, request.url.path,
                                  params=request.url.params, headers=request.headers,
                                  content=request.read())
        path = request.url.path
        if resp.status_code != 200 or not (path == "/v1/log/checkpoint"
                                           or path.endswith("/receipt")):
            return httpx.Response(resp.status_code, headers=resp.headers, content=resp.content)
        doc = resp.json()
        header = Header.from_wire(b64decode(doc["header"], "header"))
        doc["witnesses"] = witnesses_json(
            (k.public, cosign(k, FX.genesis.hash, header)) for k in self.signers)
        return httpx.Response(200, json=doc)


@pytest.fixture(scope="module")
def api() -> InProcessApi:
    api = InProcessApi(FX)
    service = api.service
    for n in (2, 3, 1, 4):
        block = service.builder.block([api.record() for _ in range(n)])
        service.append(block)
        service.builder.blocks.append(block)
    return api


@pytest.fixture
def node(api: InProcessApi) -> Iterator[tuple[LedgerClient, Cosigning]]:
    with api.sync_client() as inner:
        proxy = Cosigning(inner)
        with httpx.Client(transport=proxy) as http:
            yield LedgerClient(BASE, http=http), proxy


def test_verified_checkpoint_counts_and_demands_witnesses(
        node: tuple[LedgerClient, Cosigning]) -> None:
    client, proxy = node
    assert client.verified_checkpoint(FX.genesis).witnesses == 0
    with pytest.raises(LogProofError, match="0 witness cosignatures of height 4, 1 required "
                                            r"\(the configuration lists 3 witnesses\)") as err:
        client.verified_checkpoint(FX.genesis, witnesses=1)
    assert err.value.code == "witnesses_insufficient"
    proxy.signers = FX.witnesses[:2]
    point = client.verified_checkpoint(FX.genesis, 2, witnesses=2)
    assert (point.height, point.witnesses) == (2, 2)
    with pytest.raises(LogProofError, match="2 witness cosignatures of height 4, 3 required"):
        client.verified_checkpoint(FX.genesis, witnesses=3)
    proxy.signers = [FX.outsider]
    with pytest.raises(LogProofError, match="is not a witness of height 4") as err:
        client.verified_checkpoint(FX.genesis)
    assert err.value.code == "unknown_witness"


def test_verified_receipt_with_witnesses_and_a_trusted_checkpoint(
        api: InProcessApi, node: tuple[LedgerClient, Cosigning]) -> None:
    client, proxy = node
    block = api.store.block(3)
    assert block is not None
    rid = block.records[0].id.hex()
    result = client.verified_receipt(rid, FX.genesis)
    assert (result.header.height, result.witnesses) == (3, 0)
    with pytest.raises(ReceiptError, match="0 witness cosignatures of height 3, 1 required"):
        client.verified_receipt(rid, FX.genesis, witnesses=1)
    proxy.signers = FX.witnesses
    trusted = TrustedCheckpoint(3, block.header.hash)
    result = client.verified_receipt(rid, FX.genesis, witnesses=3, checkpoints=[trusted])
    assert result.witnesses == 3 and result.checkpoints == ((trusted, "receipt"),)
    with pytest.raises(ReceiptError, match="is not the trusted checkpoint's") as err:
        client.verified_receipt(rid, FX.genesis,
                                checkpoints=[TrustedCheckpoint(3, bytes(32))])
    assert err.value.code == "checkpoint_mismatch"


def _run(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
         client: LedgerClient, genesis: str, *argv: str) -> tuple[int, str, str]:
    from node import logcli
    from node.cli import main

    monkeypatch.setattr(logcli, "_client", lambda args: client)
    code = main(["log", *argv, "--node", BASE, "--genesis", genesis])
    out, err = capsys.readouterr()
    return code, out, err


def test_ledger_log_commands_take_witnesses(
        api: InProcessApi, node: tuple[LedgerClient, Cosigning], tmp_path: Any,
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    client, proxy = node
    client.close = lambda: None  # type: ignore[method-assign]  # reused across commands
    genesis = str(FX.write_genesis(tmp_path))

    def run(*argv: str) -> tuple[int, str, str]:
        return _run(capsys, monkeypatch, client, genesis, *argv)

    code, out, err = run("checkpoint")
    assert code == 0 and err.rstrip().endswith("; cosigned by 0 of 3 witnesses"), err
    code, _, err = run("checkpoint", "--witnesses", "2")
    assert code == 1 and err == ("invalid: checkpoint at height 4: checkpoint: 0 witness "
                                 "cosignatures of height 4, 2 required (the configuration "
                                 "lists 3 witnesses)\n")
    proxy.signers = FX.witnesses[:2]
    code, out, err = run("checkpoint", "--witnesses", "2")
    assert code == 0 and json.loads(out)["height"] == 4
    assert "cosigned by 2 of 3 witnesses" in err
    rid = (api.store.block(2) or pytest.fail("no block")).records[1].id.hex()
    code, out, err = run("prove", "--record", rid, "--witnesses", "2", "--height", "3")
    assert code == 0, err
    assert "is log leaf 3 of the checkpoint at height 3" in out
    assert out.rstrip().endswith("the checkpoint is cosigned by 2 of 3 witnesses")
    code, _, err = run("prove", "--record", rid, "--witnesses", "3")
    assert code == 1 and "2 witness cosignatures of height 4, 3 required" in err
    code, _, err = run("prove", "--record", rid, "--height", "1")
    assert code == 1 and "--height 1 is below the record's height 2" in err
    code, out, _ = run("consistency", "--from-height", "2", "--witnesses", "1")
    assert code == 0 and "cosigned by 2 of 3 witnesses and cosigned by 2 of 3" in out
    proxy.signers = [FX.witnesses[0], FX.outsider]
    code, _, err = run("checkpoint")  # a bad entry fails with K = 0 too
    assert code == 1 and "is not a witness of height 4" in err


def test_against_the_node_holding_posted_cosignatures(tmp_path: Any,
                                                      capsys: pytest.CaptureFixture[str]
                                                      ) -> None:
    """No proxy: witnesses post to the node (``POST /v1/log/cosignatures``), the node lists
    what it kept, and the verifier counts it; ``ledger verify`` on the receipt as served."""
    from node.cli import main

    api = InProcessApi(FX)
    service = api.service
    for n in (2, 1):
        block = service.builder.block([api.record() for _ in range(n)])
        service.append(block)
        service.builder.blocks.append(block)
    tip = api.store.block(2)
    assert tip is not None
    rid = tip.records[0].id.hex()
    with api.sync_client() as http:
        client = LedgerClient(BASE, http=http)
        assert client.verified_checkpoint(FX.genesis).witnesses == 0
        for key in FX.witnesses[:2]:
            assert client.post_cosignature(for_header(key, FX.genesis.hash, tip.header))[
                "stored"] is True
        point = client.verified_checkpoint(FX.genesis, witnesses=2)
        assert (point.height, point.witnesses) == (2, 2)
        with pytest.raises(LogProofError, match="2 witness cosignatures of height 2, 3 "
                                                "required"):
            client.verified_checkpoint(FX.genesis, witnesses=3)
        assert client.verified_checkpoint(FX.genesis, 1).witnesses == 0
        receipt = client.receipt(rid)
        assert client.verified_receipt(rid, FX.genesis, witnesses=2, checkpoints=[
            TrustedCheckpoint(2, tip.header.hash)]).witnesses == 2
        assert len(client.block(2)["witnesses"]) == 2
    genesis = FX.write_genesis(tmp_path)
    path = tmp_path / "receipt.json"
    path.write_text(json.dumps(receipt))
    argv = ["verify", str(path), "--genesis", str(genesis)]
    assert main([*argv, "--witnesses", "2", "--checkpoint", f"2:{tip.header.hash.hex()}"]) == 0
    assert main([*argv, "--witnesses", "3"]) == 1
    out, err = capsys.readouterr()
    assert "; cosigned by 2 of 3 witnesses" in out
    assert err == ("invalid: receipt: 2 witness cosignatures of height 2, 3 required (the "
                   "configuration lists 3 witnesses)\n")


def test_verified_receipt_is_of_the_record_asked_for(api: InProcessApi) -> None:
    """Review 14: ``verified_receipt(A)`` verified whatever receipt the node sent: a node
    answering /v1/records/A/receipt with record B's (valid) receipt had it returned as A's,
    cosigned and checkpoint-matched as asked."""
    first, second = api.store.block(2), api.store.block(3)
    assert first is not None and second is not None
    a, b = first.records[0].id.hex(), second.records[0].id.hex()
    with api.sync_client() as inner:

        class Swapping(httpx.BaseTransport):
            def handle_request(self, request: httpx.Request) -> httpx.Response:
                path = request.url.path.replace(a, b)  # every question about A answered with B
                resp = inner.request(request.method, path, params=request.url.params,
                                     headers=request.headers, content=request.read())
                return httpx.Response(resp.status_code, headers=resp.headers,
                                      content=resp.content)

        with httpx.Client(transport=Swapping()) as http:
            client = LedgerClient(BASE, http=http)
            assert client.verified_receipt(b, FX.genesis).record.id.hex() == b
            with pytest.raises(ReceiptError, match=f"not of record {a}") as err:
                client.verified_receipt(a, FX.genesis)
            assert err.value.code == "bad_receipt"


def test_ledger_log_prove_refuses_another_record_s_receipt(
        api: InProcessApi, tmp_path: Any, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Review 14: `ledger log prove --record A` verified whatever receipt the node sent
    and proved that record: B's receipt for A passed, exit 0."""
    first, second = api.store.block(2), api.store.block(3)
    assert first is not None and second is not None
    a, b = first.records[0].id.hex(), second.records[0].id.hex()
    genesis = str(FX.write_genesis(tmp_path))
    with api.sync_client() as inner:

        class Swapping(httpx.BaseTransport):
            def handle_request(self, request: httpx.Request) -> httpx.Response:
                path = request.url.path.replace(a, b)
                resp = inner.request(request.method, path, params=request.url.params,
                                     headers=request.headers, content=request.read())
                return httpx.Response(resp.status_code, headers=resp.headers,
                                      content=resp.content)

        with httpx.Client(transport=Swapping()) as http:
            client = LedgerClient(BASE, http=http)
            client.close = lambda: None  # type: ignore[method-assign]
            code, out, err = _run(capsys, monkeypatch, client, genesis, "prove", "--record", b)
            assert code == 0, err
            code, out, err = _run(capsys, monkeypatch, client, genesis, "prove", "--record", a)
            assert code == 1 and out == "" and f"not of record {a}" in err, (out, err)
