"""The explorer's subject view over cursor pages (issue 14), in chromium, against the real API
in-process (served by uvicorn on 127.0.0.1): newest first, older pages and newer records
while blocks commit (none twice, none lost), oldest first, a block-time range, and every
record proved in the log against a checkpoint verified in the browser — through the chain's
two configuration changes — and a node whose log does not match its checkpoint caught."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import uvicorn
from playwright.sync_api import expect

from tests.browser.conftest import DESKTOP, PageErrors
from tests.browser.test_config_page import FX, build_chain
from tests.inprocess import InProcessApi, msgpack_post

pytestmark = pytest.mark.slow
S = "plant-2/press-1/bar"


class Served:
    """The app on a free port; ``add`` commits one block of one reading of S (over HTTP:
    the server's own loop commits it) and returns its id."""

    def __init__(self, api: InProcessApi, base: str) -> None:
        self.api, self.base = api, base
        self.ids: list[str] = []
        self.times: list[int] = []

    def add(self, value: float) -> str:
        record = self.api.record(key=FX.operator, subject=S, payload={"value": value})
        resp = httpx.post(f"{self.base}/v1/records", params={"wait": "commit", "timeout": 10},
                          **msgpack_post([record.envelope]))
        assert resp.json()["results"][0]["status"] == "accepted", resp.text
        self.ids.append(record.id.hex())
        block = self.api.store.block(self.api.store.height)
        assert block is not None
        self.times.append(block.header.time_ms)
        return record.id.hex()


@pytest.fixture(scope="module")
def served() -> Iterator[Served]:
    api, _ = build_chain()  # 4 blocks, two configuration changes
    api.service.autocommit = True
    # the next blocks on whole seconds: a range typed in seconds falls on them exactly
    api.service.builder.time_ms = (api.service.builder.time_ms // 1000 + 10) * 1000
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(api.app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while not server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.05)
        s = Served(api, f"http://127.0.0.1:{sock.getsockname()[1]}")
        for i in range(10):
            s.add(20.0 + i)
        yield s
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    page = browser.new_context(viewport=DESKTOP, timezone_id="UTC").new_page()
    page.set_default_timeout(20_000)
    errors = PageErrors()
    page.on("pageerror", lambda exc: errors.append(f"pageerror: {exc}"))
    page.on("console", lambda m: errors.append(f"console: {m.text}") if m.type == "error"
            else None)
    yield page
    page.context.close()
    assert errors == []


def shown_ids(page: Any) -> list[str]:
    """The full record ids of the rows, top to bottom (from each row's record link)."""
    hrefs: list[str] = page.eval_on_selector_all(
        "#history tbody tr td:nth-child(2) a", "as => as.map(a => a.getAttribute('href'))")
    return [h.removeprefix("#/record/") for h in hrefs]


def open_subject(page: Any, served: Served, size: int) -> None:
    page.goto(f"{served.base}/?page_size={size}#/subject/{quote(S, safe='')}")


def test_newest_first_older_pages_and_newer_records_while_blocks_commit(
        served: Served, page: Any) -> None:
    open_subject(page, served, 4)
    expect(page.locator("#history-count")).to_have_text(" (newest 4 records)")
    first = list(served.ids)
    assert shown_ids(page) == first[::-1][:4]
    added = [served.add(40.0), served.add(41.0)]  # commit while the reader pages back
    page.click("#more")
    expect(page.locator("#history-count")).to_have_text(" (newest 8 records)")
    page.click("#more")
    expect(page.locator("#history-count")).to_have_text(" (all 10 records, newest first)")
    assert shown_ids(page) == first[::-1]  # the newer two are not mixed into older pages
    assert page.locator("#more").is_hidden()
    page.click("#newer")
    expect(page.locator("#history-count")).to_have_text(" (all 12 records, newest first)")
    assert shown_ids(page) == (first + added)[::-1]
    page.click("#newer")  # nothing new: nothing added twice
    expect(page.locator("#history-count")).to_have_text(" (all 12 records, newest first)")
    assert shown_ids(page) == (first + added)[::-1]


def test_oldest_first_and_a_time_range(served: Served, page: Any) -> None:
    open_subject(page, served, 3)
    page.locator("#history tbody tr").first.wait_for()
    page.select_option("#order", "asc")
    page.click("#history-apply")
    expect(page.locator("#history-count")).to_have_text(" (oldest 3 records)")
    assert shown_ids(page) == served.ids[:3]
    page.click("#newer")
    expect(page.locator("#history-count")).to_have_text(" (oldest 6 records)")
    assert shown_ids(page) == served.ids[:6]

    def typed(ms: int) -> str:  # a datetime-local value (the page's time zone is UTC)
        return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S")

    page.select_option("#order", "desc")
    page.fill("#since", typed(served.times[2]))
    page.fill("#until", typed(served.times[6]))
    page.click("#history-apply")
    expect(page.locator("#history-count")).to_have_text(
        " (newest 3 records in the time range)")
    page.click("#more")
    expect(page.locator("#history-count")).to_have_text(
        " (all 5 records in the time range, newest first)")
    assert shown_ids(page) == served.ids[2:7][::-1]
    page.fill("#since", typed(served.times[6]))
    page.fill("#until", typed(served.times[2]))
    page.click("#history-apply")
    expect(page.locator("#history-error")).to_have_text("the time range ends before it starts")
    assert shown_ids(page) == served.ids[2:7][::-1]  # what was shown stays


def test_every_record_proved_in_the_log_and_a_lying_node_caught(
        served: Served, page: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    open_subject(page, served, 5)
    page.locator("#history tbody tr").first.wait_for()
    page.check("#prove")
    page.click("#history-apply")
    rows = page.locator("#history tbody tr[data-proved]")
    rows.nth(4).wait_for()
    assert rows.count() == 5
    assert page.locator('#history tbody tr[data-proved="true"]').count() == 5
    height = served.api.store.height
    assert f"✓ proved in log (checkpoint {height})" in rows.first.inner_text()
    page.click("#more")
    expect(page.locator('#history tbody tr[data-proved="true"]')).to_have_count(10)
    expect(page.locator("#proof-note")).to_contain_text("All 10 records shown are proved")

    real = served.api.store.log_nodes  # the node now serves a log that is not the signed one
    monkeypatch.setattr(served.api.store, "log_nodes",
                        lambda ids: {k: bytes(32) for k in real(ids)})
    page.click("#history-apply")
    expect(page.locator('#history tbody tr[data-proved="false"]')).to_have_count(5)
    expect(page.locator("#proof-note")).to_contain_text("5 of 5 records shown are NOT proved")
    assert "not the checkpoint's log root" in page.locator(
        "#history tbody tr td.unproved").first.get_attribute("title")


def test_a_proved_row_shows_its_envelope_s_values_not_the_node_s(
        served: Served, page: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Review 14: the proof covered the envelope, but the row and the chart showed the
    node's JSON fields: a node serving every true envelope beside a made-up `payload` had
    its values drawn under '✓ proved in log' and 'All N records shown are proved'. Now each
    such row is marked not proved, as the SDK's HistoryWalk refuses it."""
    import node.api

    real = node.api.record_json

    def lying(*args: Any, **kw: Any) -> dict[str, Any]:
        doc = real(*args, **kw)
        if doc.get("subject") == S:
            doc["payload"] = {"value": 999.5}
        return doc
    monkeypatch.setattr(node.api, "record_json", lying)
    open_subject(page, served, 5)
    page.locator("#history tbody tr").first.wait_for()
    page.check("#prove")
    page.click("#history-apply")
    rows = page.locator("#history tbody tr[data-proved]")
    rows.nth(4).wait_for()
    expect(page.locator('#history tbody tr[data-proved="false"]')).to_have_count(5)
    assert "its fields are not its envelope's" in page.locator("#history").inner_text()
    expect(page.locator("#proof-note")).to_contain_text("5 of 5 records shown are NOT proved")
