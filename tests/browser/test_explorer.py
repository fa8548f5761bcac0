"""The explorer in chromium against a real 4-node cluster (issue 7)."""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from playwright.sync_api import expect

from ledger.crypto import PrivateKey, read_key_file
from node.client import LedgerClient
from tests.browser.conftest import PHONE, new_page, screenshot
from tests.integration.cluster_util import Cluster

pytestmark = pytest.mark.slow
SUBJECT = "plant-7/line-3/temp"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    c = Cluster.create(tmp_path_factory.mktemp("explorer"))
    c.start_all()
    yield c
    c.stop_all()


@pytest.fixture(scope="module")
def client(cluster: Cluster) -> Iterator[LedgerClient]:
    key = read_key_file(cluster.dir / "clients" / "demo.pem")
    with LedgerClient(cluster.url(1), identity=key) as c:
        yield c


@pytest.fixture(scope="module")
def readings(client: LedgerClient) -> list[dict[str, Any]]:
    """Six committed temperature readings of one subject."""
    return [client.write(type="sensor.reading", subject=SUBJECT,
                         payload={"value": v, "unit": "C"}, wait=True)
            for v in (21.5, 22.0, 21.25, 23.5, 22.75, 24.0)]


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    page, errors = new_page(browser)
    yield page
    page.context.close()
    assert errors == []


def verdict(page: Any) -> tuple[str, str]:
    result = page.locator("#verify-result .result")
    result.wait_for()
    reason = page.locator("#verify-result .reason")
    return (page.locator("#verify-result .verdict").inner_text(),
            reason.inner_text() if reason.count() else "")


def test_explorer_is_served_beside_the_api(cluster: Cluster) -> None:
    url = cluster.url(0)
    home = httpx.get(f"{url}/")
    assert home.status_code == 200 and home.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in home.headers["content-security-policy"]
    for name in ("app.js", "ledger.js", "style.css"):
        assert httpx.get(f"{url}/explorer/{name}").status_code == 200
    genesis = httpx.get(f"{url}/v1/genesis")
    raw = (cluster.dir / "genesis.json").read_bytes()
    assert genesis.content == raw and genesis.headers["content-type"] == "application/json"
    status = httpx.get(f"{url}/v1/status").json()
    assert hashlib.sha256(raw).hexdigest() == status["genesis_hash"]
    for path in ("/docs", "/healthz", "/metrics", "/openapi.json"):
        assert httpx.get(url + path).status_code == 200
    assert httpx.get(f"{url}/explorer/nope.js").json()["code"] == "not_found"


def test_home_shows_chain_and_tip_advances_live(cluster: Cluster, client: LedgerClient,
                                               page: Any) -> None:
    page.goto(cluster.url(0) + "/")
    expect(page.locator("#chain-id")).to_have_text("demo")
    page.locator("#live.on").wait_for()
    before = client.status()["height"]
    expect(page.locator("#tip-height")).to_have_text(str(before))
    # Records submitted to another node: the page learns of the blocks over SSE only.
    heights = [client.write(type="sensor.reading", subject="live/test", payload=i,
                            wait=True)["height"] for i in range(3)]
    top = max(heights)
    assert top > before
    expect(page.locator("#tip-height")).to_have_text(str(top))
    page.locator(f"#blocks-body tr[data-height='{top}']").wait_for()
    genesis_hash = hashlib.sha256((cluster.dir / "genesis.json").read_bytes()).hexdigest()
    assert page.locator("#genesis-hash").inner_text() == genesis_hash
    screenshot(page, "desktop-home")


def test_block_view_names_the_signing_validators(cluster: Cluster, readings: list[dict[str, Any]],
                                                 page: Any) -> None:
    height = readings[0]["height"]
    page.goto(f"{cluster.url(2)}/#/block/{height}")
    page.get_by_role("heading", name=f"Block {height}").wait_for()
    signers = page.locator("#cert-signers").inner_text().split(", ")
    assert len(signers) >= 3 and all(re.fullmatch(r"node[0-3]", s) for s in signers)
    assert page.get_by_role("link", name=SUBJECT).count() >= 1
    page.click("#verify-block")
    assert verdict(page) == ("VALID", "")
    screenshot(page, "desktop-block")


def test_record_receipt_verifies_in_the_page(cluster: Cluster, readings: list[dict[str, Any]],
                                             page: Any) -> None:
    rid = readings[1]["id"]
    page.goto(f"{cluster.url(3)}/#/record/{rid}")
    assert page.locator("#record-status").inner_text() == "committed"
    assert page.locator("#record-org").inner_text() == "demo-org / demo"
    assert json.loads(page.locator("#payload").inner_text()) == {"value": 22.0, "unit": "C"}
    page.click("#verify-button")
    assert verdict(page) == ("VALID", "")
    with page.expect_download() as download:
        page.click("#download-receipt")
    receipt = json.loads(Path(download.value.path()).read_text())
    assert receipt["record_id"] == rid and receipt["height"] == readings[1]["height"]
    screenshot(page, "desktop-record-valid")


def flip(b64: str, at: int = 0) -> str:
    data = bytearray(base64.b64decode(b64))
    data[at] ^= 0x01
    return base64.b64encode(bytes(data)).decode()


def test_tampered_receipts_are_invalid_with_the_reason(cluster: Cluster, client: LedgerClient,
                                                       readings: list[dict[str, Any]],
                                                       page: Any) -> None:
    receipt = client.receipt(readings[2]["id"])
    cert_sig = json.loads(json.dumps(receipt))
    cert_sig["cert"]["signatures"][0]["sig"] = flip(cert_sig["cert"]["signatures"][0]["sig"], 5)
    path = json.loads(json.dumps(receipt))
    path["audit_path"] = ["00" * 32]  # a block of one record has an empty path
    record_sig = json.loads(json.dumps(receipt))
    envelope = bytearray(base64.b64decode(record_sig["envelope"]))
    envelope[-1] ^= 0x01  # the last byte of the record signature
    record_sig["envelope"] = base64.b64encode(bytes(envelope)).decode()
    page.goto(f"{cluster.url(0)}/#/verify")
    cases = [(receipt, "VALID", ""),
             (cert_sig, "INVALID", "certificate signature of validator"),
             (path, "INVALID", "wrong proof length"),
             (record_sig, "INVALID", "signature does not verify")]
    for i, (doc, want, reason) in enumerate(cases):
        page.fill("#receipt-input", json.dumps(doc))
        page.click("#verify-button")
        got, why = verdict(page)
        assert got == want and reason in why, (i, got, why)
        if i == 1:
            screenshot(page, "desktop-verify-tampered")


def test_audit_path_byte_flip_is_invalid(cluster: Cluster, client: LedgerClient,
                                         page: Any) -> None:
    for attempt in range(5):  # a batch of three almost always shares a block
        results = client.submit([client.make_record(type="sensor.reading", subject="batch/flip",
                                                    payload=[attempt, i], chain="demo")
                                 for i in range(3)], wait=True)
        receipt = client.receipt(results[0]["id"])
        if receipt["audit_path"]:
            break
    assert receipt["audit_path"], "five batches of three records never shared a block"
    first = receipt["audit_path"][0]
    receipt["audit_path"][0] = first[:10] + ("0" if first[10] != "0" else "1") + first[11:]
    page.goto(f"{cluster.url(0)}/#/verify")
    page.set_input_files("#receipt-file", files=[{"name": "r.json", "mimeType":
                                                  "application/json",
                                                  "buffer": json.dumps(receipt).encode()}])
    got, why = verdict(page)
    assert got == "INVALID" and "audit path leads to root" in why


def test_wrong_genesis_makes_a_receipt_invalid(cluster: Cluster, readings: list[dict[str, Any]],
                                               page: Any, tmp_path: Path) -> None:
    # The same chain and members, but one validator key swapped for an impostor's.
    doc = json.loads((cluster.dir / "genesis.json").read_text())
    doc["validators"][0]["pubkey"] = PrivateKey.generate().public.hex()
    other = tmp_path / "genesis.json"
    other.write_text(json.dumps(doc, indent=2))
    page.goto(f"{cluster.url(1)}/#/record/{readings[3]['id']}")
    page.set_input_files("#genesis-file", str(other))
    other_hash = hashlib.sha256(other.read_bytes()).hexdigest()
    expect(page.locator("#genesis-hash")).to_have_text(other_hash)
    assert "differs from the node's genesis" in page.locator("#genesis-source").inner_text()
    page.click("#verify-button")
    got, why = verdict(page)
    assert got == "INVALID" and "validators_hash does not match genesis" in why
    assert other_hash in page.locator("#verify-result").inner_text()
    screenshot(page, "desktop-wrong-genesis")
    # The real genesis, loaded from the user's own copy, makes it valid again.
    page.set_input_files("#genesis-file", str(cluster.dir / "genesis.json"))
    real_hash = hashlib.sha256((cluster.dir / "genesis.json").read_bytes()).hexdigest()
    expect(page.locator("#genesis-hash")).to_have_text(real_hash)
    assert "the node reports the same" in page.locator("#genesis-source").inner_text()
    page.click("#verify-button")
    assert verdict(page)[0] == "VALID"


def test_subject_view_shows_history_and_chart(cluster: Cluster, readings: list[dict[str, Any]],
                                              page: Any) -> None:
    page.goto(f"{cluster.url(0)}/#/subject/{quote(SUBJECT, safe='')}")
    page.locator("#history tbody tr").nth(5).wait_for()
    assert page.locator("#history tbody tr").count() == 6
    assert page.locator("#chart-svg").get_attribute("data-points") == "6"
    assert page.locator("#chart-svg circle").count() == 6
    newest = page.locator("#history tbody tr").first.inner_text()
    assert readings[-1]["id"][:10] in newest
    assert "all 6 records" in page.locator("#history-count").inner_text()
    assert page.locator("#more").is_hidden()
    screenshot(page, "desktop-subject")


def test_subject_view_shows_the_newest_page_first_and_loads_older(
        cluster: Cluster, readings: list[dict[str, Any]], page: Any) -> None:
    """Pages of 4 (the explorer's `?page_size=`): the newest 4 first, newest at the top;
    "Load older records" adds the 2 older ones below them; the chart stays in time order."""
    ids = [r["id"] for r in readings]  # oldest first
    rows = page.locator("#history tbody tr")
    page.goto(f"{cluster.url(0)}/?page_size=4#/subject/{quote(SUBJECT, safe='')}")
    rows.nth(3).wait_for()
    assert rows.count() == 4
    shown = [rows.nth(i).inner_text() for i in range(4)]
    assert all(rid[:10] in row for rid, row in zip(ids[::-1][:4], shown, strict=True)), shown
    expect(page.locator("#history-count")).to_have_text(" (newest 4 records)")
    expect(page.locator("#more")).to_have_text("Load older records")
    assert page.locator("#chart-svg").get_attribute("data-points") == "4"

    page.click("#more")
    rows.nth(5).wait_for()
    assert rows.count() == 6
    shown = [rows.nth(i).inner_text() for i in range(6)]
    assert all(rid[:10] in row for rid, row in zip(ids[::-1], shown, strict=True)), shown
    expect(page.locator("#history-count")).to_have_text(" (all 6 records, newest first)")
    assert page.locator("#more").is_hidden()
    # The chart's line runs left to right in time: x grows along its points.
    points = page.locator("#chart-svg polyline").get_attribute("points")
    xs = [float(p.split(",")[0]) for p in points.split()]
    assert len(xs) == 6 and xs == sorted(xs) and xs[0] < xs[-1]


def test_search_navigates_by_id_subject_and_height(cluster: Cluster,
                                                  readings: list[dict[str, Any]],
                                                  page: Any) -> None:
    page.goto(cluster.url(0) + "/")
    for query, hash_, ready in [
            (readings[0]["id"].upper(), f"#/record/{readings[0]['id']}", "#record-status"),
            (SUBJECT, f"#/subject/{quote(SUBJECT, safe='')}", "#history tbody tr"),
            (str(readings[4]["height"]), f"#/block/{readings[4]['height']}", "#cert-signers")]:
        page.fill("#search-input", query)
        page.press("#search-input", "Enter")
        expect(page).to_have_url(f"{cluster.url(0)}/{hash_}")
        page.locator(ready).first.wait_for()


def test_payloads_are_shown_as_text_never_as_html(cluster: Cluster, client: LedgerClient,
                                                  page: Any) -> None:
    evil = '<img src=x onerror="window.pwned=1"><script>window.pwned=1</script>'
    res = client.write(type="sensor.reading", subject=f"x/{evil}", payload={"value": evil},
                       wait=True)
    for route in (f"#/record/{res['id']}", f"#/block/{res['height']}",
                  f"#/subject/{quote('x/' + evil, safe='')}"):
        page.goto(f"{cluster.url(0)}/{route}")
        page.locator("main h1").wait_for()
        page.wait_for_timeout(300)
        assert page.locator("main img, main script").count() == 0
        assert page.evaluate("window.pwned") is None
    assert evil in page.locator("#subject-name").inner_text()


def test_phone_viewport_has_no_horizontal_overflow(cluster: Cluster, browser: Any,
                                                   readings: list[dict[str, Any]]) -> None:
    page, errors = new_page(browser, PHONE)
    url = cluster.url(0)
    for name, route, ready in [
            ("home", "#/", "#blocks-body tr"),
            ("block", f"#/block/{readings[0]['height']}", "#cert-signers"),
            ("record", f"#/record/{readings[0]['id']}", "#verify-button"),
            ("subject", f"#/subject/{quote(SUBJECT, safe='')}", "#chart-svg"),
            ("verify", "#/verify", "#receipt-input")]:
        page.goto(f"{url}/{route}")
        page.locator(ready).first.wait_for()
        if name == "record":
            page.click("#verify-button")
            assert verdict(page)[0] == "VALID"
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= PHONE["width"], (name, width)
        screenshot(page, f"phone-{name}")
    page.context.close()
    assert errors == []
