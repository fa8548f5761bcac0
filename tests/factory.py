"""Deterministic chains for tests and benchmarks, built with the library itself.

(The independent writer in ``tests/independent`` builds chains *without* the library.)
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ledger.blocks import Block, build_header, sign_certificate
from ledger.config import CONFIG_TAG, CONFIG_TYPE, JOIN_TAG, Config, approval_message
from ledger.crypto import RECORD_TAG, PrivateKey, sha256
from ledger.encoding import packb
from ledger.genesis import Genesis
from ledger.records import Record, RecordBody
from ledger.store.base import BlockStore

CHAIN = "test-chain"


def seeded_key(label: str) -> PrivateKey:
    """A key derived from a label, the same in every run."""
    import hashlib

    return PrivateKey.from_seed(hashlib.sha256(label.encode()).digest())


@dataclass
class Fixture:
    """A genesis with its validator and client keys."""

    genesis: Genesis
    validator_keys: list[PrivateKey]
    writer: PrivateKey
    operator: PrivateKey
    outsider: PrivateKey
    #: Governance keys (``make_governed_fixture``): one admin per organisation org0, org1...
    admins: list[PrivateKey] = field(default_factory=list)
    #: Witness keys (``make_fixture(witnesses=k)``): ``witness-i``, listed in genesis.
    witnesses: list[PrivateKey] = field(default_factory=list)

    def write_genesis(self, directory: Path) -> Path:
        """Write genesis.json (its exact bytes) into ``directory``."""
        path = directory / "genesis.json"
        path.write_bytes(self.genesis.raw)
        return path


def make_fixture(validators: int = 4, chain: str = CHAIN, witnesses: int = 0) -> Fixture:
    """Four validators, a writer (any type) and an operator (sensor.reading only); with
    ``witnesses``, that many witnesses (keys ``witness-i``) in genesis (SPEC section 11)."""
    vkeys = [seeded_key(f"validator-{i}") for i in range(validators)]
    writer, operator, outsider = (seeded_key(n) for n in ("writer", "operator", "outsider"))
    doc: dict[str, Any] = {
        "chain_id": chain,
        "validators": [
            {"name": f"node{i}", "pubkey": k.public.hex(), "power": 1,
             "p2p": f"127.0.0.1:{8100 + i}", "api": f"http://127.0.0.1:{8000 + i}"}
            for i, k in enumerate(vkeys)
        ],
        "organizations": [
            {"name": "acme", "members": [
                {"name": "gateway", "pubkey": writer.public.hex(), "roles": ["writer"]}]},
            {"name": "plantco", "members": [
                {"name": "sensor", "pubkey": operator.public.hex(), "roles": ["operator"]}]},
        ],
        "policies": {"sensor.reading": ["writer", "operator"], "*": ["writer"]},
    }
    wkeys = [seeded_key(f"witness-{i}") for i in range(witnesses)]
    if wkeys:
        doc["witnesses"] = [{"name": f"witness{i}", "pubkey": k.public.hex()}
                            for i, k in enumerate(wkeys)]
    raw = json.dumps(doc, indent=2).encode()
    return Fixture(Genesis.from_bytes(raw), vkeys, writer, operator, outsider,
                   witnesses=wkeys)


def make_governed_fixture(validators: int = 4, orgs: int = 3,
                          governance: dict[str, Any] | None = None) -> Fixture:
    """``make_fixture``'s chain with ``orgs`` governing organisations org0.., each with one
    admin (key ``admin-i``): the default threshold is ``orgs // 2 + 1``."""
    fx = make_fixture(validators)
    doc = json.loads(fx.genesis.raw)
    admins = [seeded_key(f"admin-{i}") for i in range(orgs)]
    doc["organizations"] += [
        {"name": f"org{i}", "members": [
            {"name": f"admin{i}", "pubkey": k.public.hex(), "roles": ["admin"]}]}
        for i, k in enumerate(admins)]
    if governance is not None:
        doc["governance"] = governance
    raw = json.dumps(doc, indent=2).encode()
    return Fixture(Genesis.from_bytes(raw), fx.validator_keys, fx.writer, fx.operator,
                   fx.outsider, admins)


def config_doc(genesis: Genesis) -> dict[str, Any]:
    """The configuration keys of ``genesis`` as a JSON object (what a change restates)."""
    doc = json.loads(genesis.raw)
    return {k: v for k, v in doc.items()
            if k in ("validators", "organizations", "policies", "governance", "witnesses",
                     "read_policies")}


def change_bytes(config: Config, doc: dict[str, Any], *, version: int | None = None,
                 prev: bytes | None = None) -> bytes:
    """A change map: ``doc`` (the whole new configuration) after version and prev, which
    default to those following ``config``."""
    return packb({"version": config.version + 1 if version is None else version,
                  "prev": config.id if prev is None else prev, **doc})


def change_record(config: Config, signer: PrivateKey, change: bytes, *,
                  approvers: list[PrivateKey], joiners: list[PrivateKey] | None = None,
                  approvals: list[list[bytes]] | None = None,
                  joins: list[list[bytes]] | None = None, nonce: int = 1_000_000,
                  genesis_hash: bytes | None = None) -> Record:
    """A signed ``ledger.config`` record: approvals by ``approvers`` and joins by
    ``joiners`` over ``change`` (or the given ``approvals``/``joins`` pairs verbatim)."""
    anchor = config.genesis_hash if genesis_hash is None else genesis_hash
    if approvals is None:
        msg = approval_message(anchor, change, CONFIG_TAG)
        approvals = [[k.public, k.sign(msg)] for k in approvers]
    if joins is None:
        msg = approval_message(anchor, change, JOIN_TAG)
        joins = [[k.public, k.sign(msg)] for k in joiners or []]
    return Record.create(signer, chain=config.chain_id, type=CONFIG_TYPE, subject="config",
                         payload={"change": change, "approvals": approvals, "joins": joins},
                         ts=1_700_000_000_000, nonce=nonce)


def sealed_record(key: PrivateKey, chain: str, *, nonce: int, payload: Any = None,
                  type: str = "batch.recipe", subject: str = "oven", salt: bytes | None = None,
                  digest: bytes | None = None, ts: int = 1_700_000_000_000) -> Record:
    """A signed sealed record (SPEC section 10): ``payload_digest`` over a salt (derived from
    the nonce unless given) and ``payload``, or the given ``digest`` verbatim."""
    if digest is None:
        salt = salt if salt is not None else sha256(b"salt" + nonce.to_bytes(8, "big"))
        digest = sha256(b"ledger.payload.v1\x00" + salt
                        + packb({"secret": nonce} if payload is None else payload))
    body = RecordBody(chain, type, subject, None, ts, nonce, key.public, payload_digest=digest)
    raw = body.to_wire()
    return Record.from_wire(packb([raw, key.sign(RECORD_TAG + raw)]))


def redaction_record(config: Config, signer: PrivateKey, ids: list[bytes], *,
                     approvers: list[PrivateKey], nonce: int = 2_000_000,
                     reason: str = "erasure request", ts: int = 1_700_000_000_000) -> Record:
    """A signed ``ledger.redact`` record of ``ids`` approved by ``approvers`` (admins of
    ``config``), built the way ``ledger redact`` / ``config approve`` / ``submit`` do."""
    from node.governance import approve_redaction, propose_redaction, record_of

    proposal = propose_redaction(config, ids, reason)
    for key in approvers:
        proposal = approve_redaction(proposal, key, config).proposal
    type_, subject, payload = record_of(proposal)
    return Record.create(signer, chain=config.chain_id, type=type_, subject=subject,
                         payload=payload, ts=ts, nonce=nonce)


@dataclass
class ChainBuilder:
    """Appends valid, certified blocks of records to a store."""

    fx: Fixture
    store: BlockStore
    time_ms: int = 1_700_000_000_000
    nonce: int = 0
    blocks: list[Block] = field(default_factory=list)
    #: The configuration in force at the next height (None: genesis's), and private keys of
    #: validators not in genesis (``follow`` a change to use them).
    config: Config | None = None
    extra_keys: list[PrivateKey] = field(default_factory=list)

    def follow(self, config: Config) -> None:
        """Certify the next blocks under ``config`` (a change committed in the last one)."""
        self.config = config

    def record(self, key: PrivateKey | None = None, *, type: str = "sensor.reading",
               subject: str = "plant-7/line-3/temp", payload: Any = None) -> Record:
        """A new signed record with a fresh nonce."""
        self.nonce += 1
        return Record.create(
            key or self.fx.writer, chain=self.fx.genesis.chain_id, type=type, subject=subject,
            payload={"v": self.nonce * 0.5, "unit": "C"} if payload is None else payload,
            ts=self.time_ms, nonce=self.nonce,
        )

    def block(self, records: list[Record], signers: int = 3, round: int = 0) -> Block:
        """Build (but do not store) the next block, certified by ``signers`` validators."""
        g = self.fx.genesis
        vset = (self.config or g.config).validators
        height = self.store.height + 1
        self.time_ms += 1000
        header = build_header(
            chain=g.chain_id, height=height, time_ms=self.time_ms,
            prev_hash=self.store.tip_hash() or g.hash, records=records, log=self.store.log,
            proposer=height % len(vset), validators_hash=vset.hash,
        )
        known = {k.public: k for k in [*self.fx.validator_keys, *self.extra_keys]}
        keys = {i: known[vset[i].pubkey] for i in range(signers)}
        return Block(header, tuple(records), sign_certificate(g.chain_id, header, round, keys))

    def add(self, n_records: int = 3, **kw: Any) -> Block:
        """Build and store a block of ``n_records`` fresh records."""
        block = self.block([self.record(**kw) for _ in range(n_records)])
        self.store.append(block)
        self.blocks.append(block)
        return block
