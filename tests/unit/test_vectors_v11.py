"""The SPEC v1.1 conformance chains (tests/vectors/v1.1, made by an independent
implementation): the audit accepts ``valid`` — validator set replaced at height 2 (governing
from 3) and again at 4, a sealed record at 3 redacted at 5 — and rejects every other chain at
exactly its ``first_bad_height``, accepting every block before it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgpack
import pytest

from ledger.audit import BytesChunk, ChainVerifier, audit_chunks
from ledger.crypto import sha256
from ledger.errors import AuditError, ReceiptError
from ledger.genesis import Genesis
from ledger.receipts import verify_receipt

VECTORS = Path(__file__).parents[1] / "vectors" / "v1.1"
MANIFEST: dict[str, Any] = json.loads((VECTORS / "manifest.json").read_text())
CHAINS = {c["name"]: c for c in MANIFEST["chains"]}


def genesis() -> Genesis:
    raw = (VECTORS / MANIFEST["genesis"]).read_bytes()
    assert sha256(raw).hex() == MANIFEST["genesis_sha256"]
    return Genesis.from_bytes(raw)


def blocks(name: str) -> list[bytes]:
    unpacker = msgpack.Unpacker(raw=False)
    unpacker.feed((VECTORS / CHAINS[name]["blocks"]).read_bytes())
    return list(unpacker)


def test_the_manifest_lists_the_chains_this_file_checks() -> None:
    assert set(CHAINS) == {"valid", "ext-type-payload", "repeated-key-payload",
                           "approvals-one-org", "missing-join", "two-configs-one-block",
                           "old-set-cert", "stale-prev", "reserved-type-in-policy",
                           "redact-unsealed", "digest-repeated"}


def test_the_valid_chain_is_accepted_following_both_changes() -> None:
    verifier = ChainVerifier(genesis())
    for data in blocks("valid"):
        verifier.verify_next(data)
    assert verifier.height == 6
    history = verifier.history
    assert [start for start, _ in history] == [1, 3, 5]
    assert [len(history.validators_at(h)) for h in range(1, 7)] == [4, 4, 5, 5, 4, 4]
    # the sealed record of height 3 was redacted at height 5
    assert len(verifier.sealed) == 1 and set(verifier.sealed) == verifier.redacted


@pytest.mark.parametrize("name", sorted(n for n, c in CHAINS.items() if not c["valid"]))
def test_each_faulty_chain_is_rejected_at_its_first_bad_height(name: str) -> None:
    bad_height = CHAINS[name]["first_bad_height"]
    verifier = ChainVerifier(genesis())
    data = blocks(name)
    for i in range(bad_height - 1):  # every block before the fault is accepted
        verifier.verify_next(data[i])
    with pytest.raises(AuditError) as info:
        verifier.verify_next(data[bad_height - 1])
    assert info.value.height == bad_height
    assert str(info.value).startswith(f"height {bad_height}:")


@pytest.mark.parametrize("chunk_size", [1, 2, 4])
def test_audit_chunks_follows_changes_across_chunks(chunk_size: int) -> None:
    g = genesis()
    data: list[bytes | None] = list(blocks("valid"))
    chunks = [BytesChunk(1 + i, data[i:i + chunk_size]) for i in range(0, len(data), chunk_size)]
    report = audit_chunks(g, chunks, workers=1)
    assert report.height == 6
    bad: list[bytes | None] = list(blocks("old-set-cert"))
    chunks = [BytesChunk(1 + i, bad[i:i + chunk_size]) for i in range(0, len(bad), chunk_size)]
    with pytest.raises(AuditError, match=r"^height 3:"):
        audit_chunks(g, chunks, workers=1)


def test_audit_chunks_in_worker_processes_rechecks_chunks_made_stale_by_a_change() -> None:
    # Chunks of one block, handed out before the change at height 2 is seen: the workers
    # check heights 3.. under the genesis set, and the calling process must check them again.
    g = genesis()
    data: list[bytes | None] = list(blocks("valid"))
    report = audit_chunks(g, [BytesChunk(1 + i, [d]) for i, d in enumerate(data)], workers=2)
    assert report.height == 6
    bad: list[bytes | None] = list(blocks("stale-prev"))
    with pytest.raises(AuditError, match=r"^height 4:"):
        audit_chunks(g, [BytesChunk(1 + i, [d]) for i, d in enumerate(bad)], workers=2)


@pytest.mark.parametrize("entry", MANIFEST["receipts"], ids=lambda e: e["file"])
def test_receipts_follow_the_config_proof(entry: dict[str, Any]) -> None:
    text = (VECTORS / entry["file"]).read_bytes()
    if entry["valid"]:
        result = verify_receipt(text, genesis())
        assert result.header.height == json.loads(text)["height"]
    else:
        with pytest.raises(ReceiptError, match="validators_hash"):
            verify_receipt(text, genesis())


def test_the_sealed_payload_vector_matches_its_digest() -> None:
    """``manifest.sealed``: ``ledger.records.check_sealed_payload`` (the one rule) accepts the
    independent implementation's (salt, payload_bytes, payload_digest) and refuses it with
    one byte of the salt changed."""
    from ledger.errors import PayloadMismatchError
    from ledger.records import check_sealed_payload, payload_digest

    v = MANIFEST["sealed"]
    salt, payload, digest = (bytes.fromhex(v[k]) for k in
                             ("salt", "payload_bytes", "payload_digest"))
    assert payload_digest(salt, payload) == digest
    check_sealed_payload(digest, salt, payload, "vector")
    with pytest.raises(PayloadMismatchError, match="payload_digest"):
        check_sealed_payload(digest, bytes([salt[0] ^ 1]) + salt[1:], payload, "vector")
