"""Hostile client input against a real node: 4xx problem+json with a stable code, never 5xx,
and nothing invalid reaches a block. Then schemathesis fuzzes the whole OpenAPI surface."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import msgpack
import pytest

from ledger.crypto import RECORD_TAG, PrivateKey, read_key_file
from ledger.encoding import packb
from ledger.genesis import Genesis
from ledger.records import Record
from tests.integration.cluster_util import ROOT, Cluster

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    c = Cluster.create(tmp_path_factory.mktemp("hostile"), nodes=1)
    config_path = c.dir / "node0" / "config.json"
    config = json.loads(config_path.read_text())
    config.update(max_body_bytes=200_000, max_batch=5)
    config_path.write_text(json.dumps(config))
    c.start_all()
    yield c
    c.stop_all()


def problem(resp: httpx.Response, status: int, code: str) -> None:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"] == "application/problem+json"
    doc = resp.json()
    assert doc["code"] == code and doc["status"] == status and doc["detail"]


def post(url: str, body: bytes, content_type: str = "application/msgpack",
         params: dict[str, str] | None = None) -> httpx.Response:
    return httpx.post(f"{url}/v1/records", content=body, params=params,
                      headers={"Content-Type": content_type}, timeout=30)


def body_bytes(fields: dict[str, object], repeat: tuple[str, object] | None = None) -> bytes:
    packer = msgpack.Packer(use_bin_type=True)
    items = list(fields.items()) + ([repeat] if repeat else [])
    return packer.pack_map_header(len(items)) + b"".join(
        packer.pack(k) + packer.pack(v) for k, v in items)


def test_hostile_requests_get_4xx_problems_and_stable_codes(node: Cluster) -> None:
    url = node.url(0)
    problem(post(url, b"\xc1\xc1\xc1"), 400, "malformed")
    problem(post(url, packb({"not": "an array"})), 400, "malformed")
    problem(post(url, packb([1, 2])), 400, "malformed")
    problem(post(url, packb([])), 400, "empty_batch")
    problem(post(url, b"hello", "text/plain"), 415, "unsupported_media_type")
    problem(post(url, b"hello", ""), 415, "unsupported_media_type")
    problem(post(url, b"x" * 300_000), 413, "body_too_large")
    problem(post(url, packb([b"x"] * 6)), 413, "batch_too_large")
    problem(post(url, b"{", "application/json"), 400, "malformed")
    problem(post(url, b'{"records": 5}', "application/json"), 400, "malformed")
    problem(post(url, b'{"records": [{"envelope": "%%%"}]}', "application/json"), 400,
            "malformed")
    problem(post(url, packb([b"x"]), params={"wait": "soon"}), 400, "invalid_parameter")
    problem(post(url, packb([b"x"]), params={"timeout": "-1"}), 400, "invalid_parameter")
    problem(httpx.get(f"{url}/v1/records/ZZZ"), 400, "invalid_id")
    problem(httpx.get(f"{url}/v1/records/{'A' * 64}"), 400, "invalid_id")
    problem(httpx.get(f"{url}/v1/records/{'0' * 64}"), 404, "not_found")
    problem(httpx.get(f"{url}/v1/records/{'0' * 64}/receipt"), 404, "not_found")
    problem(httpx.get(f"{url}/v1/blocks/-1"), 400, "invalid_height")
    problem(httpx.get(f"{url}/v1/blocks/0"), 400, "invalid_height")
    problem(httpx.get(f"{url}/v1/blocks/1e9"), 400, "invalid_height")
    problem(httpx.get(f"{url}/v1/blocks/{'9' * 40}"), 400, "invalid_height")
    problem(httpx.get(f"{url}/v1/subjects/x/history", params={"limit": "100000"}), 400,
            "invalid_parameter")
    problem(httpx.get(f"{url}/v1/subjects/x/history", params={"after": "abc"}), 400,
            "invalid_parameter")
    problem(httpx.get(f"{url}/v1/subjects/x/history", params={"order": "newest"}), 400,
            "invalid_parameter")
    problem(httpx.get(f"{url}/v1/subjects/x/history", params={"order": "desc", "after": "1"}),
            400, "invalid_parameter")
    problem(httpx.get(f"{url}/v1/events", params={"from_height": "-5"}), 400,
            "invalid_parameter")
    # Once 500s (issue 11): non-ASCII digits, over-long numbers, deep or lax JSON bodies.
    problem(httpx.get(f"{url}/v1/blocks/%C2%B2"), 400, "invalid_height")
    problem(httpx.get(f"{url}/v1/blocks/%D9%A3"), 400, "invalid_height")
    problem(httpx.get(f"{url}/v1/events", headers={"Last-Event-ID": "9" * 5000}), 400,
            "invalid_parameter")
    superscript_two = "\u00b2".encode("latin-1")
    problem(httpx.get(f"{url}/v1/events", headers={"Last-Event-ID": superscript_two}), 400,
            "invalid_parameter")
    problem(httpx.get(f"{url}/v1/events", params={"from_height": "\u00b2"}), 400,
            "invalid_parameter")
    problem(httpx.get(f"{url}/v1/events", params={"from_height": "9" * 5000}), 400,
            "invalid_parameter")
    problem(httpx.get(f"{url}/v1/subjects/x/history", params={"after": "9" * 5000}), 400,
            "invalid_parameter")
    problem(post(url, b"[" * 100_000, "application/json"), 400, "malformed")
    problem(post(url, b'{"records": [' + b"[" * 100_000, "application/json"), 400,
            "malformed")
    problem(post(url, b'{"records": [{"envelope": "QQ==", "envelope": "QQ=="}]}',
                 "application/json"), 400, "malformed")  # a repeated key
    problem(post(url, b'{"records": [{"envelope": "QR=="}]}', "application/json"), 400,
            "malformed")  # not canonical base64 (stray bits)
    problem(post(url, b'{"records": [{"envelope": "QQ"}]}', "application/json"), 400,
            "malformed")  # no padding
    problem(post(url, b'{"records": [{"envelope": "QQ==", "x": 1}]}', "application/json"),
            400, "malformed")  # an unknown key
    problem(post(url, b'{"records": []}', "application/json"), 400, "empty_batch")
    problem(post(url, b'{"records": [' + b'{"envelope": "QQ=="},' * 9 + b'{"envelope": ""}]}',
                 "application/json"), 413, "batch_too_large")
    problem(post(url, b'\xff{"records": []}', "application/json"), 400, "malformed")
    problem(post(url, b"\xdd\xff\xff\xff\xff\x80"), 413, "batch_too_large")
    problem(post(url, b"\x92\xc4\x05ab"), 400, "malformed")  # a truncated item
    problem(post(url, b"\x91\xc4\x01ab"), 400, "malformed")  # trailing bytes
    problem(post(url, b"\x91\xa1a"), 400, "malformed")  # str, not bin
    empty = httpx.get(f"{url}/v1/subjects/%ED%A0%80%00/history")
    assert empty.status_code == 200 and empty.json()["records"] == []
    problem(httpx.delete(f"{url}/v1/status"), 405, "method_not_allowed")
    problem(httpx.get(f"{url}/nope"), 404, "not_found")


def test_hostile_records_are_rejected_per_record_and_never_committed(node: Cluster) -> None:
    url = node.url(0)
    genesis = Genesis.load(node.dir / "genesis.json")
    key = read_key_file(node.dir / "clients" / "demo.pem")
    now = time.time_ns() // 1_000_000
    fields: dict[str, object] = {"chain": genesis.chain_id, "type": "sensor.reading",
                                 "subject": "s", "payload": 1, "ts": now, "nonce": 1,
                                 "signer": key.public}

    def envelope(body: bytes, signer: PrivateKey = key) -> bytes:
        return packb([body, signer.sign(RECORD_TAG + body)])

    stranger = PrivateKey.generate()
    good = Record.create(key, chain=genesis.chain_id, type="sensor.reading", subject="s",
                         payload=1, ts=now, nonce=1)
    cases = {
        "bad_signature": packb([good.body_bytes, bytes(64)]),
        "wrong_chain": envelope(body_bytes({**fields, "chain": "other", "nonce": 2})),
        "unauthorized": envelope(body_bytes({**fields, "signer": stranger.public, "nonce": 3}),
                                 stranger),
        "repeated_key": envelope(body_bytes(fields, ("nonce", 9))),
        "extra_key": envelope(body_bytes({**fields, "extra": 1, "nonce": 4})),
        "missing_key": envelope(body_bytes({k: v for k, v in fields.items() if k != "ts"})),
        "not_an_envelope": b"\x92\xc4\x01x",
    }
    expected = {"bad_signature": "bad_signature", "wrong_chain": "wrong_chain",
                "unauthorized": "unauthorized", "repeated_key": "malformed",
                "extra_key": "malformed", "missing_key": "malformed",
                "not_an_envelope": "malformed"}
    for name, env in cases.items():
        res = post(url, packb([env])).json()["results"][0]
        assert (res["status"], res["error"]) == ("rejected", expected[name]), (name, res)
    accepted = post(url, packb([good.envelope]), params={"wait": "commit"}).json()["results"][0]
    assert accepted["status"] == "accepted" and accepted["height"] >= 1
    replay = post(url, packb([good.envelope])).json()["results"][0]
    assert replay["status"] == "duplicate"
    replay = post(url, packb([good.envelope]), params={"wait": "commit", "timeout": "5"})
    assert replay.json()["results"][0] == {"id": good.id.hex(), "status": "duplicate",
                                           "height": accepted["height"]}
    reused = Record.create(key, chain=genesis.chain_id, type="sensor.reading", subject="t",
                           payload=2, ts=now, nonce=1)
    res = post(url, packb([reused.envelope])).json()["results"][0]
    assert (res["status"], res["error"]) == ("rejected", "nonce_reused")
    skewed = Record.create(key, chain=genesis.chain_id, type="sensor.reading", subject="t",
                           payload=2, ts=now - 86_400_000, nonce=77)
    res = post(url, packb([skewed.envelope])).json()["results"][0]
    assert (res["status"], res["error"]) == ("rejected", "clock_skew")
    json_body = json.dumps({"records": [{"envelope": base64.b64encode(
        cases["bad_signature"]).decode()}]}).encode()
    res = post(url, json_body, "application/json").json()["results"][0]
    assert (res["status"], res["error"]) == ("rejected", "bad_signature")
    # Nothing but the one good record is on the chain.
    tip = int(httpx.get(f"{url}/v1/status").json()["height"])
    ids = [r["id"] for h in range(1, tip + 1)
           for r in httpx.get(f"{url}/v1/blocks/{h}").json()["records"]]
    assert ids == [good.id.hex()]


def test_schemathesis_finds_no_server_error(node: Cluster) -> None:
    res = subprocess.run(
        [sys.executable, "-m", "schemathesis.cli", "run", f"{node.url(0)}/openapi.json",
         "--checks", "not_a_server_error", "--max-examples", "50", "--seed", "20261128",
         "--exclude-path", "/v1/events", "--request-timeout", "20"],
        cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-2000:]
    assert "passed" in res.stdout and "generated" in res.stdout
