"""The explorer's configuration page (SPEC section 9), in chromium, against a node (the real
API in-process, served by uvicorn on 127.0.0.1) whose chain holds two committed changes:
the version list, the height each governs from, the diff to the previous version, who
approved it, and links to the record and its block."""

from __future__ import annotations

import base64
import copy
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import uvicorn

from ledger.config import CONFIG_TAG, CONFIG_TYPE, Config, approval_message
from ledger.crypto import PrivateKey
from ledger.records import MAX_CONFIG_PAYLOAD_BYTES, MAX_PAYLOAD_BYTES, Record
from tests.browser.conftest import PHONE, new_page, screenshot
from tests.factory import change_bytes, config_doc, make_governed_fixture, seeded_key
from tests.inprocess import InProcessApi, msgpack_post, now_ms

pytestmark = pytest.mark.slow
FX = make_governed_fixture()
A0, A1, A2 = FX.admins
NEWCO = seeded_key("newco-member")


def change(config: Config, doc: dict[str, Any], signer: PrivateKey,
           approvers: list[PrivateKey], nonce: int) -> Record:
    data = change_bytes(config, doc)
    msg = approval_message(config.genesis_hash, data, CONFIG_TAG)
    return Record.create(signer, chain=config.chain_id, type=CONFIG_TYPE, subject="config",
                         payload={"change": data, "joins": [],
                                  "approvals": [[k.public, k.sign(msg)] for k in approvers]},
                         ts=now_ms(), nonce=nonce)


def build_chain() -> tuple[InProcessApi, dict[str, Any]]:
    """Height 1: a reading. Height 2: version 1 (the writer and validator node0 removed,
    organisation newco and a policy added). Height 3: a reading. Height 4: version 2
    (node2's power 1 -> 3, the governance threshold set to 3), approved by org1 and org2."""
    api = InProcessApi(FX)
    c0 = FX.genesis.config
    d1 = copy.deepcopy(config_doc(FX.genesis))
    writer = FX.writer.public.hex()
    for org in d1["organizations"]:
        org["members"] = [m for m in org["members"] if m["pubkey"] != writer]
    d1["validators"] = d1["validators"][1:]
    d1["organizations"].append({"name": "newco", "members": [
        {"name": "scanner", "pubkey": NEWCO.public.hex(), "roles": ["operator"]}]})
    d1["policies"]["shipment.received"] = ["operator"]
    v1 = change(c0, d1, A0, [A0, A1], nonce=1)
    d2 = copy.deepcopy(d1)
    d2["validators"][1]["power"] = 3
    d2["governance"] = {"role": "admin", "threshold": 3}

    # (synchronously: Playwright's sync API keeps an event loop running in this thread)
    with api.sync_client() as http:
        for batch in ([api.record()], [v1], [api.record(key=FX.operator)]):
            resp = http.post("/v1/records", **msgpack_post([r.envelope for r in batch]))
            assert {r["status"] for r in resp.json()["results"]} == {"accepted"}, resp.text
            assert api.commit() is not None
        history = api.store.history
        assert history is not None and history.latest.version == 1
        v2 = change(history.latest, d2, A2, [A1, A2], nonce=2)
        resp = http.post("/v1/records", **msgpack_post([v2.envelope]))
        assert resp.json()["results"][0]["status"] == "accepted", resp.text
        assert api.commit() is not None
    return api, {"v1": v1.id.hex(), "v2": v2.id.hex()}


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[str, dict[str, Any]]]:
    api, ids = build_chain()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(api.app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while not server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}", ids
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


def diff_of(page: Any, version: int) -> list[str]:
    items: list[str] = page.eval_on_selector_all(
        f"#version-{version} ul.diff li",
        "els => els.map(e => e.dataset.op + ' ' + e.dataset.section + ': ' + "
        "e.textContent.replace(/\\s+/g, ' ').trim())")
    return items


def test_the_configuration_page_lists_versions_diffs_and_approvers(
        browser: Any, served: tuple[str, dict[str, Any]]) -> None:
    base, ids = served
    page, errors = new_page(browser)
    page.goto(f"{base}/#/config")
    page.wait_for_selector("#config-versions tbody tr")
    rows = page.eval_on_selector_all(
        "#config-versions tbody tr",
        "rs => rs.map(r => [...r.cells].map(c => c.textContent.replace(/\\s+/g, ' ').trim()))")
    assert [r[0] for r in rows] == ["2", "1", "0"]
    assert [r[1] for r in rows] == ["5", "3", "1"]  # the height each governs from
    assert rows[1][2] == f"{ids['v1'][:10]}…{ids['v1'][-6:]} in block 2"
    assert rows[0][2] == f"{ids['v2'][:10]}…{ids['v2'][-6:]} in block 4"
    assert rows[2][2] == "genesis"
    # approvers named by the configuration in force when each change was approved
    assert rows[1][3] == "org0 / admin0, org1 / admin1"
    assert rows[0][3] == "org1 / admin1, org2 / admin2"

    v1 = diff_of(page, 1)
    writer, node0 = FX.writer.public.hex(), FX.validator_keys[0].public.hex()
    assert v1 == [
        "+ organisations: + organisations organisation newco",
        f"+ members: + members member newco / scanner (operator) key {NEWCO.public.hex()}",
        f"- members: − members member acme / gateway (writer) key {writer}",
        f"- validators: − validators validator node0 (power 1) key {node0}",
        "+ policies: + policies shipment.received: operator",
    ]
    assert diff_of(page, 2) == [
        "~ validators: ~ validators validator node2 power 1 → 3",
        "~ governance: ~ governance governance role admin (default), threshold default "
        "(a majority) → role admin, threshold 3",
    ]
    card = page.inner_text("#version-1")
    assert "submitted by\norg0 / admin0" in card or "org0 / admin0" in card
    assert "6 organisations, 5 members, 3 validators (power 3)" in card
    assert "3 validators (power 5)" in page.inner_text("#version-2")
    assert "Version 0 (genesis)" in page.inner_text("#version-0")
    # the links lead to the record and its block
    hrefs = page.eval_on_selector_all("#version-1 a", "as => as.map(a => a.getAttribute('href'))")
    assert f"#/record/{ids['v1']}" in hrefs and "#/block/2" in hrefs and "#/block/3" in hrefs
    screenshot(page, "config-page")
    page.click(f"#version-1 a[href='#/record/{ids['v1']}']")
    page.wait_for_selector("#record-status")
    assert page.inner_text("#record-status") == "committed"
    # a version in the address is shown (scrolled to), and the nav leads to the page
    page.goto(f"{base}/#/config/1")
    page.wait_for_selector("#version-1")
    page.click("nav a[href='#/config']")
    page.wait_for_selector("#config-versions")
    assert errors == []
    page.context.close()


def test_ledger_js_takes_a_1_mib_change_and_refuses_larger_payloads(
        browser: Any, served: tuple[str, dict[str, Any]]) -> None:
    """ledger.js bounds payloads as ledger/records.py does: 1 MiB for ledger.config, 64 KiB
    for every other type."""
    base, _ids = served
    c0 = FX.genesis.config

    def config_payload(size: int) -> Record:  # a payload of exactly ``size`` bytes encoded
        return Record.create(A0, chain=c0.chain_id, type=CONFIG_TYPE, subject="config", ts=1,
                             nonce=9, payload={"change": b"x" * (size - 31), "approvals": [],
                                               "joins": []})

    def plain(type: str, size: int) -> Record:
        return Record.create(FX.writer, chain=c0.chain_id, type=type, subject="s", ts=1,
                             nonce=9, payload=b"x" * (size - 5))

    cases = {"config 1 MiB": config_payload(MAX_CONFIG_PAYLOAD_BYTES),
             "config 1 MiB + 1": config_payload(MAX_CONFIG_PAYLOAD_BYTES + 1),
             "reading 64 KiB": plain("sensor.reading", MAX_PAYLOAD_BYTES),
             "reading 65 KiB": plain("sensor.reading", 65 * 1024),
             "redact 65 KiB": plain("ledger.redact", 65 * 1024)}
    page, errors = new_page(browser)
    page.goto(f"{base}/#/verify")
    page.wait_for_function("window.Ledger !== undefined")
    got = page.evaluate("""(cases) => Object.fromEntries(Object.entries(cases).map(([k, b]) => {
        try { Ledger.decodeEnvelope(Ledger.unb64(b, "envelope")); return [k, "ok"]; }
        catch (e) { return [k, e.message]; } }))""",
                        {k: base64.b64encode(r.envelope).decode() for k, r in cases.items()})
    assert got["config 1 MiB"] == "ok" and got["reading 64 KiB"] == "ok"
    assert got["config 1 MiB + 1"] == "record body.payload: 1048577 bytes exceeds 1048576"
    assert got["reading 65 KiB"] == "record body.payload: 66560 bytes exceeds 65536"
    assert got["redact 65 KiB"] == "record body.payload: 66560 bytes exceeds 65536"
    assert errors == []
    page.context.close()


def test_the_configuration_page_fits_a_phone(browser: Any,
                                             served: tuple[str, dict[str, Any]]) -> None:
    base, _ids = served
    page, errors = new_page(browser, PHONE)
    page.goto(f"{base}/#/config")
    page.wait_for_selector("#version-1 ul.diff li")
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= PHONE["width"], width
    screenshot(page, "phone-config")
    assert errors == []
    page.context.close()
