"""Headers, votes, certificates and blocks (SPEC section 4)."""

from __future__ import annotations

import dataclasses
import hashlib

import msgpack
import pytest

from ledger.blocks import PRECOMMIT, Block, Certificate, Header, Vote, sign_certificate
from ledger.encoding import packb
from ledger.errors import BlockError, CertificateError, DecodeError
from ledger.store import MemoryStore
from tests.factory import ChainBuilder, make_fixture

FX = make_fixture()


def chain(blocks: int = 2) -> ChainBuilder:
    b = ChainBuilder(FX, MemoryStore())
    for _ in range(blocks):
        b.add(3)
    return b


def test_block_hash_is_sha256_of_packed_header() -> None:
    block = chain(1).blocks[0]
    h = block.header
    assert h.to_obj()[0] == 1 and len(h.to_obj()) == 11
    assert block.hash == hashlib.sha256(msgpack.packb(h.to_obj(), use_bin_type=True)).digest()
    assert Header.from_wire(h.to_wire()) == h


def test_block_wire_round_trip_and_layout() -> None:
    block = chain(2).blocks[1]
    data = block.to_wire()
    raw = msgpack.unpackb(data, raw=False)
    assert raw[0] == block.header.to_obj()
    assert raw[1] == [r.envelope for r in block.records]  # envelopes as bin
    assert raw[2] == block.cert.to_obj()
    back = Block.from_wire(data)
    assert back.header == block.header and back.records == block.records
    back.validate_basic()
    back.cert.verify(FX.genesis.chain_id, FX.genesis.validators)


def test_vote_sign_bytes_have_the_vote_tag() -> None:
    vote = Vote("c", PRECOMMIT, 3, 1, b"\x01" * 32)
    assert vote.sign_bytes() == b"ledger.vote.v1\x00" + packb(["c", 2, 3, 1, b"\x01" * 32])
    assert Vote.from_wire(vote.to_wire()) == vote
    nil = Vote("c", 1, 3, 0, None)
    assert Vote.from_wire(nil.to_wire()) == nil
    with pytest.raises(DecodeError, match="kind"):
        Vote.from_wire(packb(["c", 3, 3, 0, None]))


def test_certificate_quorum_and_signature_rules() -> None:
    block = chain(1).blocks[0]
    g = FX.genesis
    keys = dict(enumerate(FX.validator_keys))
    for n in (3, 4):
        sign_certificate(g.chain_id, block.header, 0, {i: keys[i] for i in range(n)}).verify(
            g.chain_id, g.validators)
    two = sign_certificate(g.chain_id, block.header, 0, {0: keys[0], 1: keys[1]})
    with pytest.raises(CertificateError, match="more than 2/3"):
        two.verify(g.chain_id, g.validators)
    full = sign_certificate(g.chain_id, block.header, 0, keys)
    # One bad signature fails the certificate even though the other three are a quorum.
    bad = dataclasses.replace(full, signatures=(*full.signatures[:3],
                                                (3, full.signatures[0][1])))
    with pytest.raises(CertificateError, match="validator 3"):
        bad.verify(g.chain_id, g.validators)
    unordered = dataclasses.replace(full, signatures=full.signatures[::-1])
    with pytest.raises(CertificateError, match="ascending"):
        unordered.verify(g.chain_id, g.validators)
    repeated = dataclasses.replace(full, signatures=(full.signatures[0],) * 3)
    with pytest.raises(CertificateError, match="ascending"):
        repeated.verify(g.chain_id, g.validators)
    outside = dataclasses.replace(full, signatures=(*full.signatures[:3], (9, b"\x00" * 64)))
    with pytest.raises(CertificateError, match="validator 9"):
        outside.verify(g.chain_id, g.validators)
    other_round = dataclasses.replace(full, round=1)
    with pytest.raises(CertificateError):
        other_round.verify(g.chain_id, g.validators)
    with pytest.raises(CertificateError):
        full.verify("other-chain", g.validators)
    assert Certificate.from_wire(full.to_wire()) == full


def test_validate_basic_catches_count_root_and_binding() -> None:
    block = chain(1).blocks[0]
    with pytest.raises(BlockError, match="records"):
        dataclasses.replace(block, records=block.records[:2]).validate_basic()
    swapped = dataclasses.replace(block, records=block.records[::-1])
    with pytest.raises(BlockError, match="records_root"):
        swapped.validate_basic()
    other = chain(2).blocks[1]
    with pytest.raises(CertificateError):
        dataclasses.replace(block, cert=other.cert).validate_basic()


def test_block_decoding_is_strict() -> None:
    block = chain(1).blocks[0]
    obj = block.to_obj()
    for bad in (packb(obj[:2]), packb([obj[0], obj[1], obj[2], 1]),
                packb([obj[0] + [1], obj[1], obj[2]]), packb([obj[0], ["x"], obj[2]]),
                block.to_wire() + b"\x00", block.to_wire()[:-1]):
        with pytest.raises(DecodeError):
            Block.from_wire(bad)
    header = list(obj[0])
    header[0] = 2
    with pytest.raises(DecodeError, match="version"):
        Block.from_wire(packb([header, obj[1], obj[2]]))
    header = list(obj[0])
    header[4] = header[4][:31]
    with pytest.raises(DecodeError, match="prev_hash"):
        Block.from_wire(packb([header, obj[1], obj[2]]))
