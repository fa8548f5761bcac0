"""One validity rule: the same single-fault blocks fed to consensus, the audit and the store.

Each block below breaks exactly one rule at height 3 of a two-block chain. Consensus
(``ConsensusCore.check_block``: would it prevote for it?), the audit (``ChainVerifier``) and
both stores (``append``: chain-extension rules only — a store does not check signatures)
must all refuse it, for the same reason, in the same words.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest

from ledger.audit import ChainVerifier
from ledger.blocks import Block, Header, build_header, sign_certificate
from ledger.consensus import ConsensusCore
from ledger.crypto import PrivateKey
from ledger.encoding import packb
from ledger.errors import LedgerError
from ledger.genesis import Genesis
from ledger.records import Record
from ledger.store import MemoryStore, SqliteStore
from tests.factory import (
    ChainBuilder,
    make_fixture,
    make_governed_fixture,
    redaction_record,
    sealed_record,
    seeded_key,
)
from tests.unit.consensus_helpers import ListMempool

FX = make_fixture()
Fault = Callable[["Chain"], tuple[Header, list[Record]]]


class Chain:
    """Two committed blocks and what a third would hold."""

    genesis = FX.genesis

    def __init__(self) -> None:
        self.builder = ChainBuilder(FX, MemoryStore(FX.genesis.hash))
        self.builder.add(2)
        self.builder.add(2)
        self.store = self.builder.store

    def sqlite(self, path: Path) -> SqliteStore:
        """An SQLite store holding the same two blocks."""
        store = SqliteStore(path, genesis_hash=self.genesis.hash)
        for b in self.builder.blocks:
            store.append(b)
        return store

    def records(self, n: int = 2) -> list[Record]:
        return [self.builder.record() for _ in range(n)]

    def header(self, records: list[Record], **fields: object) -> Header:
        """The valid header of block 3 over ``records``, with ``fields`` changed after."""
        tip = self.builder.blocks[-1].header
        header = build_header(chain=FX.genesis.chain_id, height=3, time_ms=tip.time_ms + 1000,
                              prev_hash=tip.hash, records=records, log=self.store.log,
                              proposer=3 % 4, validators_hash=FX.genesis.validators.hash)
        return replace(header, **fields) if fields else header

    def block(self, header: Header, records: list[Record]) -> bytes:
        keys = {i: FX.validator_keys[i] for i in range(3)}
        return Block(header, tuple(records),
                     sign_certificate(FX.genesis.chain_id, header, 0, keys)).to_wire()


def plain(change: dict[str, object]) -> Fault:
    def make(c: Chain) -> tuple[Header, list[Record]]:
        records = c.records()
        return c.header(records, **{k: (v(c) if callable(v) else v)
                                    for k, v in change.items()}), records
    return make


def with_records(make_records: Callable[[Chain], list[Record]]) -> Fault:
    def make(c: Chain) -> tuple[Header, list[Record]]:
        records = make_records(c)
        return c.header(records), records
    return make


def forged(c: Chain) -> list[Record]:
    r = c.records(1)[0]
    bad = bytes([r.sig[0] ^ 1]) + r.sig[1:]
    return [Record(r.body, r.body_bytes, bad, packb([r.body_bytes, bad]), r.id)]


def earlier(c: Chain) -> Record:
    return c.builder.blocks[0].records[0]


def same_nonce_as_earlier(c: Chain) -> Record:
    first = earlier(c)
    return Record.create(FX.writer, chain=FX.genesis.chain_id, type="sensor.reading",
                         subject="other", payload=1, ts=first.body.ts, nonce=first.body.nonce)


def fresh_with_nonce(c: Chain, nonce: int, key: object = None) -> Record:
    return Record.create(key or FX.writer, chain=FX.genesis.chain_id,  # type: ignore[arg-type]
                         type="sensor.reading", subject="s", payload=nonce, ts=0, nonce=nonce)


def governed_genesis() -> tuple[Genesis, PrivateKey]:
    """``make_governed_fixture``'s genesis (org0..org2, one admin each, threshold 2) with a
    writer in org0 too, so that org0's admin may redact that writer's records alone."""
    key = seeded_key("org0-writer")
    doc = json.loads(GX.genesis.raw)
    doc["organizations"][2]["members"].append(
        {"name": "writer0", "pubkey": key.public.hex(), "roles": ["writer"]})
    return Genesis.from_bytes(json.dumps(doc).encode()), key


GX = make_governed_fixture()
GOVERNED, ORG0_WRITER = governed_genesis()
A0, A1, A2 = GX.admins
GX = replace(GX, genesis=GOVERNED)


class SealedChain(Chain):
    """A governed chain: block 1 holds sealed records (one by org0's writer, two by acme's
    writer) and an inline one; block 2 redacts the second acme record (threshold
    approvals). Its stores follow the configuration, so they judge approvals too."""

    genesis = GOVERNED

    def __init__(self) -> None:
        config = GOVERNED.config
        self.builder = ChainBuilder(GX, MemoryStore(GOVERNED.hash, config=config))
        chain = GOVERNED.chain_id
        self.own = sealed_record(ORG0_WRITER, chain, nonce=10_001)
        self.acme = sealed_record(GX.writer, chain, nonce=10_002)
        self.gone = sealed_record(GX.writer, chain, nonce=10_003)
        self.inline = self.builder.record()
        for records in ([self.own, self.acme, self.gone, self.inline],
                        [redaction_record(config, A1, [self.gone.id], approvers=[A1, A2]),
                         self.builder.record()]):
            block = self.builder.block(records)
            self.builder.store.append(block)
            self.builder.blocks.append(block)
        self.store = self.builder.store

    def sqlite(self, path: Path) -> SqliteStore:
        store = SqliteStore(path, genesis_hash=GOVERNED.hash, config=GOVERNED.config)
        for b in self.builder.blocks:
            store.append(b)
        return store


def redacting(ids: Callable[[SealedChain], list[bytes]], approvers: list[PrivateKey],
              before: Callable[[SealedChain], list[Record]] = lambda c: []) -> Fault:
    """Block 3: ``before``'s records, then a redaction of ``ids`` approved by
    ``approvers``."""
    def make(c: Chain) -> tuple[Header, list[Record]]:
        assert isinstance(c, SealedChain)
        records = [*before(c), redaction_record(GOVERNED.config, A0, ids(c),
                                                approvers=approvers, nonce=3_000_000)]
        return c.header(records), records
    return make


def two_redactions_of_own(c: Chain) -> tuple[Header, list[Record]]:
    assert isinstance(c, SealedChain)
    records = [redaction_record(GOVERNED.config, A0, [c.own.id], approvers=[A0],
                                nonce=3_000_000 + i, reason=f"request {i}") for i in range(2)]
    return c.header(records), records


#: Faults of SPEC section 10's chain rules, on a ``SealedChain``; every store refuses them.
SEALED_FAULTS: dict[str, Fault] = {
    "a redaction of an inline record": redacting(lambda c: [c.inline.id], [A1, A2]),
    "a redaction of an id never committed": redacting(lambda c: [os.urandom(32)], [A1, A2]),
    "a redaction of an already redacted record": redacting(lambda c: [c.gone.id], [A1, A2]),
    "a redaction of a sealed record in the same block": redacting(
        lambda c: [sealed_record(GX.writer, GOVERNED.chain_id, nonce=10_050).id], [A1, A2],
        before=lambda c: [sealed_record(GX.writer, GOVERNED.chain_id, nonce=10_050)]),
    "two redactions of one record in one block": two_redactions_of_own,
    "a redaction of another organisation's record by one admin": redacting(
        lambda c: [c.acme.id], [A0]),
    "a redaction of two organisations' records by one's admin": redacting(
        lambda c: [c.own.id, c.acme.id], [A0]),
    "a sealed payload_digest committed at height 1": with_records(lambda c: [sealed_record(
        GX.writer, GOVERNED.chain_id, nonce=10_060, digest=c.own.body.payload_digest)]),
}


#: name -> (the block's fault, does a store refuse it too)
FAULTS: dict[str, tuple[Fault, bool]] = {
    "height skips one": (plain({"height": 4}), True),
    "height repeats the tip": (plain({"height": 2}), True),
    "prev_hash is random": (plain({"prev_hash": os.urandom(32)}), True),
    "prev_hash is the genesis hash": (plain({"prev_hash": FX.genesis.hash}), True),
    "prev_hash is block 1": (plain({"prev_hash": lambda c: c.builder.blocks[0].header.hash}),
                             True),
    "time equals the tip's": (plain({"time_ms": lambda c: c.builder.blocks[-1].header.time_ms}),
                              True),
    "time before the tip's": (
        plain({"time_ms": lambda c: c.builder.blocks[-1].header.time_ms - 1}), True),
    "log_size one more": (plain({"log_size": lambda c: c.store.log.size + 3}), True),
    "log_size one less": (plain({"log_size": lambda c: c.store.log.size + 1}), True),
    "log_root random": (plain({"log_root": os.urandom(32)}), True),
    "log_root of the previous log": (plain({"log_root": lambda c: c.store.log.root()}), True),
    "record count one more": (plain({"record_count": 3}), True),
    "record count one less": (plain({"record_count": 1}), True),
    "a record committed at height 1": (with_records(lambda c: [*c.records(1), earlier(c)]),
                                       True),
    "a (signer, nonce) used at height 1": (
        with_records(lambda c: [*c.records(1), same_nonce_as_earlier(c)]), True),
    "header names another chain": (plain({"chain": "another"}), False),
    "validators_hash of another set": (plain({"validators_hash": os.urandom(32)}), False),
    "proposer is not a validator": (plain({"proposer": 9}), False),
    "records_root random": (plain({"records_root": os.urandom(32)}), False),
    "a record's signature is forged": (with_records(forged), False),
    "a record by a signer nobody authorised": (
        with_records(lambda c: [fresh_with_nonce(c, 10**6, FX.outsider)]), False),
    "a record of another chain": (with_records(lambda c: [Record.create(
        FX.writer, chain="another", type="sensor.reading", subject="s", payload=1, ts=0,
        nonce=10**6 + 1)]), False),
    "the same record twice": (with_records(lambda c: [r := c.records(1)[0], r]), False),
    "two records share a (signer, nonce)": (with_records(lambda c: [
        fresh_with_nonce(c, 10**6 + 2), Record.create(
            FX.writer, chain=FX.genesis.chain_id, type="sensor.reading", subject="t",
            payload=2, ts=0, nonce=10**6 + 2)]), False),
}


def consensus_reason(c: Chain, header: Header, records: list[Record]) -> str:
    core = ConsensusCore(c.genesis, c.store, ListMempool(), key=FX.validator_keys[0])
    core._reset_height(3)
    with pytest.raises(LedgerError) as err:
        core.check_block(header, tuple(records))
    assert not core._check_block(header, tuple(records))  # and it would prevote nil
    assert core.invalid_blocks == {type(err.value).__name__: 1}
    return str(err.value)


def audit_reason(c: Chain, data: bytes) -> str:
    verifier = ChainVerifier(c.genesis)
    for b in c.builder.blocks:
        verifier.verify_next(b.to_wire())
    with pytest.raises(LedgerError) as err:
        verifier.verify_next(data)
    return str(err.value)


def store_reason(store: MemoryStore | SqliteStore, data: bytes) -> str:
    with pytest.raises(LedgerError) as err:
        store.append(Block.from_wire(data))
    return str(err.value)


def test_the_table_has_twenty_faults_or_more() -> None:
    assert len(FAULTS) >= 20


@pytest.mark.parametrize("name", [*FAULTS, *SEALED_FAULTS])
def test_consensus_audit_and_store_refuse_for_one_reason(name: str, tmp_path: Path) -> None:
    make, store_too = FAULTS[name] if name in FAULTS else (SEALED_FAULTS[name], True)
    c = SealedChain() if name in SEALED_FAULTS else Chain()
    header, records = make(c)
    data = c.block(header, records)
    reason = consensus_reason(c, header, records)
    audited = audit_reason(c, data)
    assert audited == f"height 3: {reason}", (audited, reason)
    if store_too:
        sqlite = c.sqlite(tmp_path / "chain.db")
        for store in (c.store, sqlite):
            assert store_reason(store, data) == f"height {header.height}: {reason}"
            assert store.height == 2
        sqlite.close()


def test_the_valid_block_passes_all_three(tmp_path: Path) -> None:
    c = Chain()
    records = c.records()
    header = c.header(records)
    data = c.block(header, records)
    core = ConsensusCore(FX.genesis, c.store, ListMempool(), key=FX.validator_keys[0])
    core._reset_height(3)
    core.check_block(header, tuple(records))
    verifier = ChainVerifier(FX.genesis)
    for b in [*c.builder.blocks]:
        verifier.verify_next(b.to_wire())
    verifier.verify_next(data)
    c.store.append(Block.from_wire(data))
    assert c.store.height == verifier.height == 3


def test_metrics_count_invalid_blocks_by_reason() -> None:
    from node.metrics import Metrics

    text = Metrics().render(3, {"BlockError": 2, "DuplicateError": 1})
    assert 'ledger_invalid_blocks_total{reason="BlockError"} 2' in text
    assert 'ledger_invalid_blocks_total{reason="DuplicateError"} 1' in text


def test_valid_redactions_pass_all_three_and_the_stores_book_them(tmp_path: Path) -> None:
    """An own-organisation redaction (org0's admin alone, of org0's writer's record) and a
    threshold one (two organisations, of acme's record) in one block: consensus, the audit
    and both stores accept it; the stores answer "redacted at height 3", also reopened."""
    c = SealedChain()
    records = [redaction_record(GOVERNED.config, A0, [c.own.id], approvers=[A0], nonce=7),
               redaction_record(GOVERNED.config, A1, [c.acme.id], approvers=[A1, A2], nonce=8)]
    header = c.header(records)
    data = c.block(header, records)
    path = tmp_path / "chain.db"
    sqlite = c.sqlite(path)
    core = ConsensusCore(GOVERNED, c.store, ListMempool(), key=FX.validator_keys[0])
    core._reset_height(3)
    core.check_block(header, tuple(records))
    verifier = ChainVerifier(GOVERNED)
    for b in c.builder.blocks:
        verifier.verify_next(b.to_wire())
    verifier.verify_next(data)
    assert verifier.redacted == {c.own.id, c.acme.id, c.gone.id}
    ids = [c.own.id, c.acme.id, c.gone.id, c.inline.id]
    for store in (c.store, sqlite):
        assert store.redacted(ids) == {c.gone.id}
        store.append(Block.from_wire(data))
        assert store.height == 3
        assert store.redacted(ids) == {c.own.id, c.acme.id, c.gone.id}
        assert [store.redacted_at(i) for i in ids] == [3, 3, 2, None]
        assert store.sealed_signers(ids) == {c.own.id: ORG0_WRITER.public,
                                             c.acme.id: GX.writer.public,
                                             c.gone.id: GX.writer.public}
        assert store.seen_digests([c.own.body.payload_digest or b"", os.urandom(32)]) == {
            c.own.body.payload_digest}
    sqlite.close()
    with SqliteStore(path, readonly=True) as reopened:
        assert [reopened.redacted_at(i) for i in ids] == [3, 3, 2, None]
        assert reopened.sealed_signers([c.inline.id, c.own.id]) == {
            c.own.id: ORG0_WRITER.public}


def test_a_proposer_leaves_out_what_the_rule_would_refuse() -> None:
    """Records admitted before a block made them invalid (a redaction whose target has been
    redacted since, a sealed record whose digest has been committed since) are left out
    of a proposal, and so is the second of two redactions of one record; the rest stays."""
    c = SealedChain()
    stale = redaction_record(GOVERNED.config, A1, [c.gone.id], approvers=[A1, A2], nonce=7)
    first = redaction_record(GOVERNED.config, A0, [c.own.id], approvers=[A0], nonce=8)
    again = redaction_record(GOVERNED.config, A0, [c.own.id], approvers=[A0], nonce=9,
                             reason="again")
    reused = sealed_record(GX.writer, GOVERNED.chain_id, nonce=10_070,
                           digest=c.acme.body.payload_digest)
    fresh = sealed_record(GX.writer, GOVERNED.chain_id, nonce=10_071)
    plain_record = c.builder.record()
    core = ConsensusCore(GOVERNED, c.store, ListMempool(), key=FX.validator_keys[0])
    kept = core._fresh_records([stale, first, again, reused, fresh, plain_record])
    assert kept == [first, fresh, plain_record]
    header = c.header(kept)
    core._reset_height(3)
    core.check_block(header, tuple(kept))  # the block it would propose is valid
