"""Write a complete chain (genesis.json and block wire bytes) following SPEC sections 1–6 literally.

Independent of the ``ledger`` package by design: stdlib, ``msgpack`` and ``nacl.signing`` only.
Every key is derived from a fixed seed, every clock value is a constant, so the same call always
yields the same bytes.

    genesis, blocks = build_chain()                      # a clean chain of 6 blocks
    genesis, blocks = build_chain(fault="weak_cert")     # the only defect is at height 3

Run ``python -m tests.independent.writer OUT_DIR [--fault F]`` to write ``OUT_DIR/genesis.json``
and ``OUT_DIR/blocks/{h}.msgpack``.
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass
from typing import Any

import msgpack
from nacl.signing import SigningKey

RECORD_TAG = b"ledger.record.v1\x00"
VOTE_TAG = b"ledger.vote.v1\x00"
PRECOMMIT = 2
HEADER_VERSION = 1
CHAIN_ID = "indep"
BASE_TIME_MS = 1_700_000_000_000
FAULT_HEIGHT = 3
FAULTS = (
    "bad_record_sig",
    "unauthorised_signer",
    "broken_prev_hash",
    "weak_cert",
    "wrong_log_root",
)


def packb(obj: Any) -> bytes:
    """Encode as SPEC section 1 says: msgpack, str as str, bytes as bin, smallest ints."""
    data: bytes = msgpack.packb(obj, use_bin_type=True)
    return data


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


# --- keys and identities -------------------------------------------------------------------


@dataclass(frozen=True)
class Identity:
    """A named Ed25519 key derived deterministically from its name."""

    name: str

    @property
    def key(self) -> SigningKey:
        return SigningKey(sha256(b"tests.independent seed:" + self.name.encode()))

    @property
    def pubkey(self) -> bytes:
        return bytes(self.key.verify_key)

    def sign(self, message: bytes) -> bytes:
        return self.key.sign(message).signature


VALIDATORS = [Identity(f"val{i}") for i in range(4)]

# organisation -> [(member, roles)]
ORGANIZATIONS: dict[str, list[tuple[Identity, list[str]]]] = {
    "acme": [(Identity("alice"), ["writer"]), (Identity("bob"), ["operator"])],
    "globex": [(Identity("carol"), ["auditor"]), (Identity("dave"), ["writer", "operator"])],
}
ALICE, BOB = (m for m, _ in ORGANIZATIONS["acme"])
CAROL, DAVE = (m for m, _ in ORGANIZATIONS["globex"])
# Holds a perfectly good key, but is a member of no organisation.
OUTSIDER = Identity("mallory")

POLICIES: dict[str, list[str]] = {
    "sensor.reading": ["writer", "operator"],
    "maintenance.log": ["operator"],
    "*": ["writer"],
}

# (signer, type) pairs genesis authorises; "batch.created" has no entry, so "*" governs it.
AUTHORISED_WRITES: list[tuple[Identity, str]] = [
    (ALICE, "sensor.reading"),
    (BOB, "sensor.reading"),
    (DAVE, "maintenance.log"),
    (ALICE, "batch.created"),
    (BOB, "maintenance.log"),
    (DAVE, "batch.created"),
    (DAVE, "sensor.reading"),
]

PAYLOADS: list[Any] = [
    {"celsius": 21.5, "ok": True, "unit": "°C"},
    [1, -2, 2**63, -(2**63), 0.1, None],
    b"\x00\x01\xfe\xff raw sensor frame",
    "a plain string payload",
    None,
    {"nested": {"list": [b"bin", "str", 3.25], "empty": {}}, "n": 2**64 - 1},
    7,
    -0.0,
    [],
]


def genesis_bytes(chain_id: str = CHAIN_ID) -> bytes:
    """The genesis.json file of SPEC section 5, as the exact bytes that are hashed."""
    doc = {
        "chain_id": chain_id,
        "validators": [
            {
                "name": f"node{i}",
                "pubkey": v.pubkey.hex(),
                "power": 1,
                "p2p": f"127.0.0.1:{9100 + i}",
                "api": f"http://127.0.0.1:{9000 + i}",
            }
            for i, v in enumerate(VALIDATORS)
        ],
        "organizations": [
            {
                "name": org,
                "members": [
                    {"name": m.name, "pubkey": m.pubkey.hex(), "roles": roles}
                    for m, roles in members
                ],
            }
            for org, members in ORGANIZATIONS.items()
        ],
        "policies": POLICIES,
        # A key a verifier does not need: SPEC section 5 says it must be ignored.
        "consensus": {"timeout_propose_ms": 3000, "note": "written by tests.independent"},
    }
    return (json.dumps(doc, indent=2, ensure_ascii=False) + "\n").encode()


def validators_hash() -> bytes:
    return sha256(packb([[v.pubkey, 1] for v in VALIDATORS]))


# --- records (SPEC section 2) ---------------------------------------------------------------


def record_body(
    *,
    chain: str,
    type_: str,
    subject: str,
    payload: Any,
    ts: int,
    nonce: int,
    signer: bytes,
) -> bytes:
    # A dict keeps insertion order, so the map is written in exactly this key order.
    return packb(
        {
            "chain": chain,
            "type": type_,
            "subject": subject,
            "payload": payload,
            "ts": ts,
            "nonce": nonce,
            "signer": signer,
        }
    )


def sign_record(identity: Identity, body: bytes) -> bytes:
    return identity.sign(RECORD_TAG + body)


def envelope(body: bytes, sig: bytes) -> bytes:
    return packb([body, sig])


def record_id(body: bytes) -> bytes:
    return sha256(body)


def make_record(
    identity: Identity, type_: str, subject: str, payload: Any, ts: int, nonce: int
) -> bytes:
    """A signed envelope by ``identity``."""
    body = record_body(
        chain=CHAIN_ID,
        type_=type_,
        subject=subject,
        payload=payload,
        ts=ts,
        nonce=nonce,
        signer=identity.pubkey,
    )
    return envelope(body, sign_record(identity, body))


# --- Merkle trees (SPEC section 3, RFC 9162 section 2.1), written out literally -------------


def leaf_hash(entry: bytes) -> bytes:
    return sha256(b"\x00" + entry)


def node_hash(left: bytes, right: bytes) -> bytes:
    return sha256(b"\x01" + left + right)


def _split(n: int) -> int:
    """The largest power of two strictly less than n (n >= 2)."""
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def merkle_root(entries: list[bytes]) -> bytes:
    """MTH(D[n]) of RFC 9162 section 2.1.1."""
    n = len(entries)
    if n == 0:
        return sha256(b"")
    if n == 1:
        return leaf_hash(entries[0])
    k = _split(n)
    return node_hash(merkle_root(entries[:k]), merkle_root(entries[k:]))


def audit_path(index: int, entries: list[bytes]) -> list[bytes]:
    """PATH(m, D[n]) of RFC 9162 section 2.1.3.1, leaf-side sibling first."""
    n = len(entries)
    if not 0 <= index < n:
        raise IndexError(index)
    if n == 1:
        return []
    k = _split(n)
    if index < k:
        return [*audit_path(index, entries[:k]), merkle_root(entries[k:])]
    return [*audit_path(index - k, entries[k:]), merkle_root(entries[:k])]


# --- blocks and certificates (SPEC section 4) -----------------------------------------------


def vote_bytes(chain: str, kind: int, height: int, round_: int, block_hash: bytes | None) -> bytes:
    return packb([chain, kind, height, round_, block_hash])


def make_cert(height: int, round_: int, block_hash: bytes, signers: list[int]) -> list[Any]:
    vote = vote_bytes(CHAIN_ID, PRECOMMIT, height, round_, block_hash)
    sigs = [[i, VALIDATORS[i].sign(VOTE_TAG + vote)] for i in sorted(signers)]
    return [height, round_, block_hash, sigs]


@dataclass(frozen=True)
class Block:
    header: list[Any]
    envelopes: list[bytes]
    cert: list[Any]

    @property
    def height(self) -> int:
        return int(self.header[2])

    @property
    def block_hash(self) -> bytes:
        return sha256(packb(self.header))

    @property
    def wire(self) -> bytes:
        """What ``GET /v1/blocks/{h}`` returns as msgpack: envelopes are msgpack bin."""
        return packb([self.header, self.envelopes, self.cert])


def _signers_for(height: int) -> list[int]:
    """Alternate 4-of-4 and 3-of-4 certificates, leaving out a different validator each time."""
    if height % 2 == 0:
        return [0, 1, 2, 3]
    return [i for i in range(4) if i != (height // 2) % 4]


def _round_for(height: int) -> int:
    return 1 if height % 3 == 2 else 0


def build_blocks(
    n_blocks: int = 6,
    records_per_block: int = 5,
    fault: str | None = None,
    empty_heights: tuple[int, ...] = (),
) -> tuple[bytes, list[Block]]:
    """Genesis bytes and the blocks of a chain; with ``fault``, the one defect is at height 3."""
    if fault is not None and fault not in FAULTS:
        raise ValueError(f"unknown fault {fault!r}; choose from {FAULTS}")
    if fault is not None and n_blocks < FAULT_HEIGHT:
        raise ValueError("a faulty chain needs at least 3 blocks")
    if fault in ("bad_record_sig", "unauthorised_signer") and (
        records_per_block < 3 or FAULT_HEIGHT in empty_heights
    ):
        raise ValueError("a record fault needs at least 3 records at height 3")

    genesis = genesis_bytes()
    vhash = validators_hash()
    prev_hash = sha256(genesis)
    log: list[bytes] = []
    nonces: dict[str, int] = {}
    blocks: list[Block] = []
    serial = 0

    for height in range(1, n_blocks + 1):
        count = 0 if height in empty_heights else records_per_block
        envelopes: list[bytes] = []
        for i in range(count):
            identity, type_ = AUTHORISED_WRITES[serial % len(AUTHORISED_WRITES)]
            nonce = nonces.get(identity.name, 0)
            nonces[identity.name] = nonce + 1
            subject = f"plant-{height % 2}/line-{i}/{type_.split('.')[0]}"
            if serial % 4 == 3:
                subject = f"werk-süd/linie-{i}/temperatur"  # multi-byte UTF-8
            ts = BASE_TIME_MS + height * 1000 + i
            payload = PAYLOADS[serial % len(PAYLOADS)]
            envelopes.append(make_record(identity, type_, subject, payload, ts, nonce))
            serial += 1

        if height == FAULT_HEIGHT and fault == "bad_record_sig":
            body, sig = msgpack.unpackb(envelopes[1], raw=False)
            envelopes[1] = envelope(body, bytes([sig[0] ^ 0x01]) + sig[1:])
        if height == FAULT_HEIGHT and fault == "unauthorised_signer":
            envelopes[2] = make_record(
                OUTSIDER,
                "sensor.reading",
                "plant-x/line-9/temp",
                {"celsius": 99.0},
                BASE_TIME_MS + height * 1000 + 2,
                0,
            )

        log.extend(envelopes)
        header: list[Any] = [
            HEADER_VERSION,
            CHAIN_ID,
            height,
            BASE_TIME_MS + height * 1000 + 500,
            prev_hash,
            merkle_root(envelopes),
            len(envelopes),
            merkle_root(log),
            len(log),
            height % 4,
            vhash,
        ]
        if height == FAULT_HEIGHT and fault == "broken_prev_hash":
            header[4] = sha256(b"not the previous block")
        if height == FAULT_HEIGHT and fault == "wrong_log_root":
            # A real tree head, but of the log one record short (or of nothing at all).
            header[7] = merkle_root(log[:-1]) if log else sha256(b"not the log root")

        block_hash = sha256(packb(header))
        signers = _signers_for(height)
        if height == FAULT_HEIGHT and fault == "weak_cert":
            signers = [0, 2]  # power 2 of 4: not more than 2/3
        cert = make_cert(height, _round_for(height), block_hash, signers)
        blocks.append(Block(header, envelopes, cert))
        prev_hash = block_hash

    return genesis, blocks


def build_chain(
    n_blocks: int = 6,
    records_per_block: int = 5,
    fault: str | None = None,
    empty_heights: tuple[int, ...] = (),
) -> tuple[bytes, list[bytes]]:
    """Genesis bytes and each block's wire bytes (``packb([header, envelopes, cert])``)."""
    genesis, blocks = build_blocks(n_blocks, records_per_block, fault, empty_heights)
    return genesis, [b.wire for b in blocks]


# --- receipts (SPEC section 6) --------------------------------------------------------------


def make_receipt(block: Block, index: int) -> dict[str, Any]:
    """The JSON receipt of the record at ``index`` in ``block``."""
    env = block.envelopes[index]
    body, _sig = msgpack.unpackb(env, raw=False)
    height, round_, _block_hash, sigs = block.cert
    return {
        "chain": block.header[1],
        "record_id": record_id(body).hex(),
        "envelope": base64.b64encode(env).decode(),
        "height": height,
        "index": index,
        "header": base64.b64encode(packb(block.header)).decode(),
        "audit_path": [h.hex() for h in audit_path(index, block.envelopes)],
        "cert": {
            "round": round_,
            "signatures": [{"validator": i, "sig": base64.b64encode(s).decode()} for i, s in sigs],
        },
    }


def _main(argv: list[str] | None = None) -> None:
    import argparse
    from pathlib import Path

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--fault", choices=FAULTS)
    parser.add_argument("--blocks", type=int, default=6)
    args = parser.parse_args(argv)
    genesis, wires = build_chain(args.blocks, fault=args.fault)
    (args.out_dir / "blocks").mkdir(parents=True, exist_ok=True)
    (args.out_dir / "genesis.json").write_bytes(genesis)
    for h, wire in enumerate(wires, start=1):
        (args.out_dir / "blocks" / f"{h}.msgpack").write_bytes(wire)
    print(f"wrote genesis.json and {len(wires)} blocks to {args.out_dir}")


if __name__ == "__main__":
    _main()
