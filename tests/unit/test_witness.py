"""Witness cosignatures (SPEC section 11): ledger/witness.py, the one rule."""

from __future__ import annotations

import pickle

import pytest

from ledger.crypto import PrivateKey
from ledger.encoding import b64encode, packb
from ledger.errors import WitnessError
from ledger.store.memory import MemoryStore
from ledger.witness import (
    WITNESS_DOMAIN,
    check_cosignature,
    cosign,
    count_witnesses,
    for_header,
    parse_cosignature,
    parse_witnesses,
    require_witnesses,
    witnesses_json,
)
from tests.factory import ChainBuilder, make_fixture, seeded_key


@pytest.fixture
def chain():  # type: ignore[no-untyped-def]
    fx = make_fixture(witnesses=3)
    builder = ChainBuilder(fx, MemoryStore(fx.genesis.hash))
    for _ in range(3):
        builder.add(2)
    return fx, builder


def test_the_signed_bytes_are_the_specs(chain) -> None:  # type: ignore[no-untyped-def]
    fx, b = chain
    header = b.blocks[-1].header
    key = fx.witnesses[0]
    message = WITNESS_DOMAIN + packb([fx.genesis.hash, header.height, header.hash,
                                      header.log_size, header.log_root])
    assert message.startswith(b"ledger.witness.v1\x00")
    sig = cosign(key, fx.genesis.hash, header)
    assert sig == key.sign(message)


def test_a_posted_cosignature_round_trips_and_holds(chain) -> None:  # type: ignore[no-untyped-def]
    fx, b = chain
    header = b.blocks[1].header
    cosig = for_header(fx.witnesses[1], fx.genesis.hash, header)
    parsed = parse_cosignature(cosig.to_json())
    assert parsed == cosig
    assert check_cosignature(parsed, fx.genesis.config, fx.genesis.hash, header) is True
    # the SPEC's four fields alone are enough when the block is the node's
    bare = {k: v for k, v in cosig.to_json().items() if k not in ("log_size", "log_root")}
    assert check_cosignature(parse_cosignature(bare), fx.genesis.config, fx.genesis.hash,
                             header) is True


def test_a_cosignature_of_another_block_is_a_split_view(chain) -> None:  # type: ignore[no-untyped-def]
    fx, b = chain
    mine, theirs = b.blocks[2].header, b.blocks[1].header
    forged = for_header(fx.witnesses[0], fx.genesis.hash, theirs)
    moved = type(forged)(forged.pubkey, mine.height, forged.block_hash, forged.sig,
                         forged.log_size, forged.log_root)
    # signed over (height 2's hash) but claimed at height 3: does not verify -> refused
    with pytest.raises(WitnessError) as err:
        check_cosignature(moved, fx.genesis.config, fx.genesis.hash, mine)
    assert err.value.code == "bad_cosignature"
    from ledger.witness import Cosignature, cosigned_message
    other_hash = bytes(32)
    sig = fx.witnesses[0].sign(cosigned_message(fx.genesis.hash, mine.height, other_hash,
                                                7, bytes(32)))
    split = Cosignature(fx.witnesses[0].public, mine.height, other_hash, sig, 7, bytes(32))
    assert check_cosignature(split, fx.genesis.config, fx.genesis.hash, mine) is False
    bare = Cosignature(fx.witnesses[0].public, mine.height, other_hash, sig)
    with pytest.raises(WitnessError, match="no log_size/log_root"):
        check_cosignature(bare, fx.genesis.config, fx.genesis.hash, mine)


def test_unknown_keys_and_bad_signatures_are_refused(chain) -> None:  # type: ignore[no-untyped-def]
    fx, b = chain
    header = b.blocks[0].header
    stranger = for_header(seeded_key("stranger"), fx.genesis.hash, header)
    with pytest.raises(WitnessError) as err:
        check_cosignature(stranger, fx.genesis.config, fx.genesis.hash, header)
    assert err.value.code == "unknown_witness"
    good = for_header(fx.witnesses[0], fx.genesis.hash, header)
    bad = type(good)(good.pubkey, good.height, good.block_hash, bytes(64))
    with pytest.raises(WitnessError, match="does not verify"):
        check_cosignature(bad, fx.genesis.config, fx.genesis.hash, header)
    wrong_height = type(good)(good.pubkey, 2, good.block_hash, good.sig)
    with pytest.raises(WitnessError, match="for height 2"):
        check_cosignature(wrong_height, fx.genesis.config, fx.genesis.hash, header)


@pytest.mark.parametrize("doc, fragment", [
    ([], "JSON object"),
    ({"height": 1, "block_hash": "00" * 32, "sig": b64encode(bytes(64))}, "'pubkey'"),
    ({"pubkey": "zz", "height": 1, "block_hash": "00" * 32, "sig": b64encode(bytes(64))},
     "pubkey"),
    ({"pubkey": "00" * 32, "height": "1", "block_hash": "00" * 32,
      "sig": b64encode(bytes(64))}, "'height'"),
    ({"pubkey": "00" * 32, "height": 0, "block_hash": "00" * 32,
      "sig": b64encode(bytes(64))}, "height must be"),
    ({"pubkey": "00" * 32, "height": 1, "block_hash": "00" * 31,
      "sig": b64encode(bytes(64))}, "block_hash"),
    ({"pubkey": "00" * 32, "height": 1, "block_hash": "00" * 32,
      "sig": b64encode(bytes(63))}, "64 bytes"),
    ({"pubkey": "00" * 32, "height": 1, "block_hash": "00" * 32,
      "sig": b64encode(bytes(64)), "log_size": 3}, "'log_root'"),
])
def test_malformed_bodies_name_the_field(doc, fragment) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(WitnessError, match=fragment) as err:
        parse_cosignature(doc)
    assert err.value.code == "bad_cosignature"


def test_counting_cosignatures_for_a_verifier(chain) -> None:  # type: ignore[no-untyped-def]
    fx, b = chain
    g, header = fx.genesis, b.blocks[2].header
    pairs = [(k.public, cosign(k, g.hash, header)) for k in fx.witnesses[:2]]
    listed = witnesses_json(pairs)
    assert parse_witnesses(listed, "checkpoint") == sorted(pairs)
    assert count_witnesses(sorted(pairs), g.config, g.hash, header, "checkpoint") == 2
    assert require_witnesses(pairs, 2, g.config, g.hash, header, "checkpoint") == 2
    with pytest.raises(WitnessError, match="2 witness cosignatures of height 3, 3 required") \
            as err:
        require_witnesses(pairs, 3, g.config, g.hash, header, "checkpoint")
    assert err.value.code == "witnesses_insufficient"
    with pytest.raises(WitnessError, match="listed twice"):
        count_witnesses(pairs + pairs[:1], g.config, g.hash, header, "checkpoint")
    other = b.blocks[1].header
    with pytest.raises(WitnessError, match=r"witnesses\[0\].*does not verify"):
        count_witnesses(pairs, g.config, g.hash, other, "checkpoint")
    outsider = PrivateKey.generate()
    with pytest.raises(WitnessError, match="not a witness"):
        count_witnesses([(outsider.public, cosign(outsider, g.hash, header))], g.config,
                        g.hash, header, "checkpoint")


def test_witness_errors_pickle_with_their_code() -> None:
    err = WitnessError("x", code="unknown_witness")
    again = pickle.loads(pickle.dumps(err))
    assert (str(again), again.code) == ("x", "unknown_witness")
