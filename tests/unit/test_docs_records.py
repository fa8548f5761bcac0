"""docs/records.md's worked example is what the code makes, byte for byte."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from ledger.crypto import PrivateKey
from ledger.encoding import b64encode
from ledger.records import Record

DOC = Path(__file__).resolve().parents[2] / "docs" / "records.md"


def _block(text: str, name: str) -> str:
    """The hex of a ``name = ...`` block in the doc, whitespace removed."""
    match = re.search(rf"^{name}\s+= ((?:[0-9a-f]+\s*\n?\s*)+)", text, re.M)
    assert match, name
    return re.sub(r"\s", "", match.group(1))


def test_the_worked_example_matches_the_code() -> None:
    text = DOC.read_text()
    key = PrivateKey.from_seed(bytes(range(32)))
    record = Record.create(key, chain="demo", type="sensor.reading",
                           subject="plant-7/line-3/temp", payload={"c": 21.5},
                           ts=1700000000000, nonce=7)
    assert key.public.hex() in text
    assert _block(text, "body") == record.body_bytes.hex()
    assert len(record.body_bytes) == 140 and "Body** (140 bytes)" in text
    assert _block(text, "sig ") == record.sig.hex()
    assert len(record.envelope) == 209 and record.envelope.hex().startswith("92c48c")
    assert b64encode(record.envelope) in text
    assert record.id.hex() == hashlib.sha256(record.body_bytes).hexdigest()
    assert record.id.hex() in text
    assert b"ledger.record.v1\x00".hex() in text
    assert record.sign_bytes() == b"ledger.record.v1\x00" + record.body_bytes
    assert Record.from_wire(record.envelope).id == record.id
    rows = re.findall(r"^\| `([0-9a-f` …]+)` \|", text, re.M)
    assert len(rows) == 8
    for row in rows:
        for part in row.replace("`", " ").split():
            if "…" not in part:
                assert part in record.body_bytes.hex(), part
