"""Deterministic chains for tests and benchmarks, built with the library itself.

(The independent writer in ``tests/independent`` builds chains *without* the library.)
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ledger.blocks import Block, build_header, sign_certificate
from ledger.crypto import PrivateKey
from ledger.genesis import Genesis
from ledger.records import Record
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

    def write_genesis(self, directory: Path) -> Path:
        """Write genesis.json (its exact bytes) into ``directory``."""
        path = directory / "genesis.json"
        path.write_bytes(self.genesis.raw)
        return path


def make_fixture(validators: int = 4, chain: str = CHAIN) -> Fixture:
    """Four validators, a writer (any type) and an operator (sensor.reading only)."""
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
    raw = json.dumps(doc, indent=2).encode()
    return Fixture(Genesis.from_bytes(raw), vkeys, writer, operator, outsider)


@dataclass
class ChainBuilder:
    """Appends valid, certified blocks of records to a store."""

    fx: Fixture
    store: BlockStore
    time_ms: int = 1_700_000_000_000
    nonce: int = 0
    blocks: list[Block] = field(default_factory=list)

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
        height = self.store.height + 1
        self.time_ms += 1000
        header = build_header(
            chain=g.chain_id, height=height, time_ms=self.time_ms,
            prev_hash=self.store.tip_hash() or g.hash, records=records, log=self.store.log,
            proposer=height % len(g.validators), validators_hash=g.validators.hash,
        )
        keys = {i: self.fx.validator_keys[i] for i in range(signers)}
        return Block(header, tuple(records), sign_certificate(g.chain_id, header, round, keys))

    def add(self, n_records: int = 3, **kw: Any) -> Block:
        """Build and store a block of ``n_records`` fresh records."""
        block = self.block([self.record(**kw) for _ in range(n_records)])
        self.store.append(block)
        self.blocks.append(block)
        return block
