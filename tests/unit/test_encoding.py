"""The strict decoder (ledger.encoding.decode): ext types in every form, repeated keys by
msgpack identity, the depth limit, and the conformance vectors' payload chains."""

from __future__ import annotations

import math
from pathlib import Path

import msgpack
import pytest

from ledger.blocks import Block
from ledger.crypto import RECORD_TAG
from ledger.encoding import (
    MAX_DEPTH,
    MapPairs,
    decode,
    packb,
    require_canonical,
    split_batch,
    unpack_exact,
)
from ledger.errors import DecodeError
from ledger.records import MAX_PAYLOAD_DEPTH, Record
from tests.factory import seeded_key

KEY = seeded_key("encoding")
VECTORS = Path(__file__).parents[1] / "vectors" / "v1.1"

# ext type -1 (what msgpack-python turns into a Timestamp without calling ext_hook) in every
# form, with the lengths 4, 8 and 12 it converts, and another type for good measure.
EXT_FORMS = {
    "fixext4": b"\xd6\xff" + b"\x00\x00\x00\x01",
    "fixext8": b"\xd7\xff" + b"\x00" * 7 + b"\x01",
    "ext8 len 4": b"\xc7\x04\xff\x00\x00\x00\x01",
    "ext8 len 8": b"\xc7\x08\xff" + b"\x00" * 7 + b"\x01",
    "ext8 len 12": b"\xc7\x0c\xff" + b"\x00" * 11 + b"\x01",
    "ext16 len 4": b"\xc8\x00\x04\xff\x00\x00\x00\x01",
    "ext16 len 8": b"\xc8\x00\x08\xff" + b"\x00" * 7 + b"\x01",
    "ext16 len 12": b"\xc8\x00\x0c\xff" + b"\x00" * 11 + b"\x01",
    "ext32 len 4": b"\xc9\x00\x00\x00\x04\xff\x00\x00\x00\x01",
    "ext32 len 8": b"\xc9\x00\x00\x00\x08\xff" + b"\x00" * 7 + b"\x01",
    "ext32 len 12": b"\xc9\x00\x00\x00\x0c\xff" + b"\x00" * 11 + b"\x01",
    "fixext1 type 5": b"\xd4\x05\x00",
    "fixext2": b"\xd5\x05\x00\x00",
    "fixext16": b"\xd8\x05" + b"\x00" * 16,
    "ext8 len 0": b"\xc7\x00\x05",
}


def signed_envelope_with_payload(payload: bytes) -> bytes:
    """A correctly signed envelope whose body's payload is exactly these msgpack bytes."""
    body = packb({"chain": "demo", "type": "sensor.reading", "subject": "s", "payload": None,
                  "ts": 1, "nonce": 1, "signer": KEY.public})
    body = body.replace(b"\xa7payload\xc0", b"\xa7payload" + payload)
    return packb([body, KEY.sign(RECORD_TAG + body)])


@pytest.mark.parametrize("form", list(EXT_FORMS))
def test_ext_in_any_form_inside_a_signed_payload_is_rejected(form: str) -> None:
    # Before the fix, "ext8 len 4" etc. decoded to msgpack.Timestamp and the record passed.
    ext = EXT_FORMS[form]
    for payload in (ext, b"\x91" + ext, b"\x81\xa1t" + ext, b"\x81" + ext + b"\x01"):
        with pytest.raises(DecodeError, match="ext type"):
            Record.from_wire(signed_envelope_with_payload(payload))


def vector_blocks(name: str) -> list[bytes]:
    """A vector chain: a msgpack stream of bin items, one block per height."""
    unpacker = msgpack.Unpacker(raw=False)
    unpacker.feed((VECTORS / f"{name}.blocks").read_bytes())
    return list(unpacker)


def test_the_ext_type_vector_chain_is_rejected_at_block_1() -> None:
    with pytest.raises(DecodeError, match="ext type"):
        Block.from_wire(vector_blocks("ext-type-payload")[0])
    with pytest.raises(DecodeError, match="appears twice"):
        Block.from_wire(vector_blocks("repeated-key-payload")[0])
    assert Block.from_wire(vector_blocks("valid")[0]).height == 1


def test_keys_of_different_types_are_different_keys() -> None:
    # 1, true and 1.0 (float64 and float32), "1" and b"1": six different keys.
    raw = (b"\x86" b"\x01\xa1a" b"\xc3\xa1b" b"\xcb" + (1.0).hex().encode()[:0]
           + b"\x3f\xf0\x00\x00\x00\x00\x00\x00\xa1c" b"\xa11\xa1d" b"\xc4\x011\xa1e"
           b"\xc0\xa1f")
    value = unpack_exact(raw, "x")
    assert type(value) is MapPairs  # a dict would merge 1, True and 1.0
    assert [(type(k), k) for k, _ in value.pairs] == [
        (int, 1), (bool, True), (float, 1.0), (str, "1"), (bytes, b"1"), (type(None), None)]
    assert [v for _, v in value.pairs] == ["a", "b", "c", "d", "e", "f"]


@pytest.mark.parametrize(("first", "second"), [
    (b"\x01", b"\xcc\x01"),                       # one int, two widths
    (b"\x01", b"\xd3" + b"\x00" * 7 + b"\x01"),   # int64
    (b"\xcb" + bytes.fromhex("7ff8000000000000"), b"\xcb" + bytes.fromhex("7ff0000000000001")),
    (b"\xcb" + bytes.fromhex("7ff8000000000000"), b"\xca" + bytes.fromhex("7fc00000")),  # NaNs
    (b"\xcb" + bytes(8), b"\xcb" + bytes.fromhex("8000000000000000")),  # 0.0 and -0.0
    (b"\xca" + bytes.fromhex("3fc00000"), b"\xcb" + bytes.fromhex("3ff8000000000000")),  # 1.5
    (b"\xa1a", b"\xd9\x01a"),                     # fixstr and str8 of one string
    (b"\xc4\x01a", b"\xc5\x00\x01a"),             # bin8 and bin16
    (b"\x92\x01\x02", b"\xdc\x00\x02\x01\xcc\x02"),  # arrays compare structurally
    (b"\x82\xa1a\x01\xa1b\x02", b"\x82\xa1b\x02\xa1a\x01"),  # maps: as sets of pairs
    (b"\xc0", b"\xc0"),
])
def test_the_same_key_twice_is_rejected_whatever_its_encoding(first: bytes, second: bytes,
                                                              ) -> None:
    with pytest.raises(DecodeError, match="appears twice"):
        unpack_exact(b"\x82" + first + b"\x01" + second + b"\x02", "x")


def test_container_keys_decode_losslessly() -> None:
    value = unpack_exact(b"\x82\x92\x01\x02\xa1a\x81\xa1k\x90\xa1b", "x")
    assert value == MapPairs([([1, 2], "a"), ({"k": []}, "b")])
    assert value.pairs[0][0] == (1, 2)


def test_a_single_nan_key_is_fine() -> None:
    value = unpack_exact(b"\x81\xcb" + bytes.fromhex("7ff8000000000000") + b"\x01", "x")
    ((key, one),) = value.items()
    assert math.isnan(key) and one == 1


def test_depth_limit_counts_containers() -> None:
    assert MAX_PAYLOAD_DEPTH == MAX_DEPTH == 64
    unpack_exact(b"\x91" * 63 + b"\x90", "x")  # 64 containers
    unpack_exact(b"\x81\xa1k" * 63 + b"\x80", "x")
    unpack_exact(b"\x91" * 64 + b"\x01", "x")  # a scalar does not count
    for deep in (b"\x91" * 64 + b"\x90", b"\x81\xa1k" * 64 + b"\x80",
                 b"\x91" * 63 + b"\x81\x90\x01"):  # a key one level too deep
        with pytest.raises(DecodeError, match="nest deeper than 64"):
            unpack_exact(deep, "x")


def test_payload_depth_is_64_levels_inside_the_body() -> None:
    ok = Record.from_wire(signed_envelope_with_payload(b"\x91" * 63 + b"\x90"))
    assert ok.elements > 64
    for deep in (b"\x91" * 64 + b"\x90", b"\x91" * 599 + b"\x90"):  # 600 levels was "legal"
        with pytest.raises(DecodeError, match="nest deeper than 65"):
            Record.from_wire(signed_envelope_with_payload(deep))


@pytest.mark.parametrize("data", [
    b"", b"\xc1", b"\x91", b"\x92\x01", b"\xa2a", b"\xdd\xff\xff\xff\xff", b"\xdf\xff\xff\xff\xff",
    b"\xc6\xff\xff\xff\xff", b"\xdb\x00\x00\x00\x09abc", b"\x01\x02", b"\xcb\x00", b"\xa1\xff",
    b"\x81\x01",
])
def test_garbage_is_rejected_before_allocating(data: bytes) -> None:
    with pytest.raises(DecodeError):
        decode(data, "x")


def test_element_count() -> None:
    assert decode(packb([{}, {"a": [1, 2]}]), "x")[1] == 1 + 1 + 1 + 1 + 1 + 2
    assert decode(packb([{}] * 1000), "x")[1] == 1001


def test_protocol_arrays_holding_a_map_python_cannot_hold_are_rejected_not_crashing() -> None:
    # [{1: 0, true: 1}] decodes to [MapPairs]; the canonical check must say no, not raise.
    for data in (b"\x91\x82\x01\x00\xc3\x01", b"\x91\x81\x91\x01\x00"):
        with pytest.raises(DecodeError, match="canonical"):
            require_canonical(data, unpack_exact(data, "x"), "x")
        with pytest.raises(DecodeError):
            Block.from_wire(data)


BIN_FORMS = (lambda b: b"\xc4" + len(b).to_bytes(1, "big") + b,
             lambda b: b"\xc5" + len(b).to_bytes(2, "big") + b,
             lambda b: b"\xc6" + len(b).to_bytes(4, "big") + b)


@pytest.mark.parametrize("form", range(3))
def test_split_batch_takes_sealed_items_in_every_bin_width(form: int) -> None:
    """[envelope, salt, payload] items beside plain envelopes, each bin in bin 8, 16 or
    32, and packb's own choice of widths across the bin 8 / bin 16 boundary."""
    pack = BIN_FORMS[form]
    sealed = (b"e" * 255, b"s" * 32, b"p" * 200)
    body = (b"\x94" + pack(b"") + b"\x93" + b"".join(pack(x) for x in sealed)
            + pack(b"x" * 250) + b"\x93" + pack(b"") + pack(b"") + pack(b""))
    assert split_batch(body, "batch", 10) == [b"", sealed, b"x" * 250, (b"", b"", b"")]
    wide = (b"a" * 300, b"b" * 32, b"c" * 70_000)
    assert split_batch(packb([list(wide), b"d" * 256, list(sealed)]), "batch", 3) == [
        wide, b"d" * 256, sealed]


@pytest.mark.parametrize(("body", "message"), [
    (b"\x91\x93", r"batch\[0\]\[0\]: the array is truncated"),
    (b"\x91\x93\xc4\x01e", r"batch\[0\]\[1\]: the array is truncated"),
    (b"\x91\x93\xc4\x01e\xc4\x01s", r"batch\[0\]\[2\]: the array is truncated"),
    (b"\x91\x93\xc4\x01e\xc4\x01s\xc4\x02p", r"batch\[0\]\[2\]: truncated"),
    (b"\x91\x93\xc4\x01e\xc5\x00", r"batch\[0\]\[1\]: truncated"),
    # the usual 32-byte salt (read without ``_bin_at``) one byte short, then without payload
    (b"\x91\x93\xc4\x01e\xc4\x20" + b"s" * 31, r"batch\[0\]\[1\]: truncated"),
    (b"\x91\x93\xc4\x01e\xc4\x20" + b"s" * 32, r"batch\[0\]\[2\]: the array is truncated"),
    (b"\x91\x93\xc4", r"batch\[0\]\[0\]: truncated"),
    (b"\x91\x93\xc4\x01e\x01", r"batch\[0\]\[1\]: expected bin"),
    (b"\x92\xc4\x00\x93\xc4\x01e\xc4\x01s\xa1p", r"batch\[1\]\[2\]: expected bin"),
    (b"\x91\x92\xc4\x00\xc4\x00", r"batch\[0\]: expected bin or \[bin, bin, bin\]"),
    (b"\x91\x93\xc4\x00\xc4\x00\xc4\x00\xc4", "trailing bytes"),
])
def test_split_batch_names_the_bad_part_of_a_sealed_item(body: bytes, message: str) -> None:
    with pytest.raises(DecodeError, match=message):
        split_batch(body, "batch", 10)
