"""Records: strict decoding of bodies and envelopes (SPEC section 2)."""

from __future__ import annotations

import msgpack
import pytest

from ledger.crypto import RECORD_TAG
from ledger.encoding import packb
from ledger.errors import DecodeError, PayloadMismatchError, SignatureError, TooLargeError
from ledger.records import (
    MAX_PAYLOAD_BYTES,
    PLAIN_BODY_BYTES,
    Record,
    RecordBody,
    SealedPayload,
    check_sealed_payload,
    new_pair,
    payload_digest,
    seal_record,
    sealed_payload_matches,
)
from tests.factory import seeded_key

KEY = seeded_key("records")


def body_map(**overrides: object) -> dict[str, object]:
    fields: dict[str, object] = {
        "chain": "demo", "type": "sensor.reading", "subject": "plant-7/line-3/temp",
        "payload": {"v": 21.5}, "ts": 1_700_000_000_000, "nonce": 7, "signer": KEY.public,
    }
    fields.update(overrides)
    return fields


def envelope_of(body: bytes) -> bytes:
    return packb([body, KEY.sign(RECORD_TAG + body)])


def test_create_round_trips_and_verifies() -> None:
    rec = Record.create(KEY, chain="demo", type="sensor.reading", subject="s", payload=[1, "a"],
                        ts=5, nonce=2**64 - 1)
    back = Record.from_wire(rec.envelope)
    assert back == rec
    assert back.body.nonce == 2**64 - 1
    back.verify_signature()
    assert rec.sign_bytes() == b"ledger.record.v1\x00" + rec.body_bytes


def test_decoded_records_are_the_objects_their_constructors_build() -> None:
    """``from_wire`` builds Record and RecordBody by setting their slots directly
    (``_new_record``, ``_new_body``): the same values, equal, immutable, and hashable exactly
    where the dataclass constructors' objects are."""
    rec = Record.create(KEY, chain="demo", type="sensor.reading", subject="s",
                        payload=["a", 1], ts=5, nonce=9)
    back = Record.from_wire(rec.envelope)
    made = Record(RecordBody(*(getattr(rec.body, k) for k in RecordBody.__slots__)),
                  rec.body_bytes, rec.sig, rec.envelope, rec.id, rec.elements)
    assert type(back) is Record and type(back.body) is RecordBody
    assert back == made and back.body == made.body and repr(back) == repr(made)
    assert back.body.payload_digest is None and back.elements == rec.elements > 0
    with pytest.raises(AttributeError):  # frozen: dataclasses.FrozenInstanceError
        back.body.nonce = 1  # type: ignore[misc]
    with pytest.raises(TypeError, match="unhashable"):  # a list payload, as from __init__
        hash(back.body)
    with pytest.raises(TypeError, match="unhashable"):
        hash(made.body)


def test_decoded_sealed_records_and_pairs_are_the_objects_their_constructors_build() -> None:
    """A sealed body (``payload`` None, ``payload_digest`` set) and a (salt, payload) pair
    are built through their slots too (``_new_body``, ``new_pair``): equal to, hashable
    like and as immutable as what the dataclass constructors build."""
    rec, pair = seal_record(KEY, chain="demo", type="sensor.reading", subject="s",
                            payload={"v": 1}, ts=5, nonce=9)
    back = Record.from_wire(rec.envelope)
    made = RecordBody(*(getattr(rec.body, k) for k in RecordBody.__slots__))
    assert type(back.body) is RecordBody and back.body == made and repr(back.body) == repr(made)
    assert back.body.payload is None and back.body.payload_digest == rec.body.payload_digest
    assert hash(back.body) == hash(made)  # no list inside: hashable, as from __init__
    fast, slow = new_pair(pair.salt, pair.payload), SealedPayload(pair.salt, pair.payload)
    assert type(fast) is SealedPayload and fast == slow and repr(fast) == repr(slow)
    assert hash(fast) == hash(slow) and fast.checked_for is None
    assert fast.check(back) is fast and fast.checked_for == rec.body.payload_digest
    with pytest.raises(AttributeError):
        back.body.payload_digest = b""  # type: ignore[misc]
    with pytest.raises(AttributeError):
        fast.salt = b""  # type: ignore[misc]


def test_body_key_order_is_spec_order() -> None:
    rec = Record.create(KEY, chain="demo", type="t", subject="s", payload=None, ts=0, nonce=0)
    keys = list(msgpack.unpackb(rec.body_bytes, raw=False).keys())
    assert keys == ["chain", "type", "subject", "payload", "ts", "nonce", "signer"]


def test_body_bytes_kept_as_sent() -> None:
    # A non-minimal int encoding (uint64 for 7) is still a valid body; its id covers it.
    body = packb(body_map())
    odd = body.replace(b"\xa5nonce\x07", b"\xa5nonce\xcf" + (7).to_bytes(8, "big"))
    assert odd != body
    rec = Record.from_wire(envelope_of(odd))
    assert rec.body_bytes == odd
    rec.verify_signature()


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda m: m.pop("nonce"), "expected a map of 7 keys"),
        (lambda m: m.update(extra=1), "expected a map of 7 keys"),
        (lambda m: m.update(chain=b"demo"), "record body.chain: expected str"),
        (lambda m: m.update(type="Sensor"), "does not match"),
        (lambda m: m.update(type=""), "does not match"),
        (lambda m: m.update(subject=""), "1..256 bytes"),
        (lambda m: m.update(subject="x" * 257), "1..256 bytes"),
        (lambda m: m.update(ts=1.5), "record body.ts: expected an integer"),
        (lambda m: m.update(ts=True), "record body.ts: expected an integer, got bool"),
        (lambda m: m.update(nonce=-1), "record body.nonce: -1 is outside"),
        (lambda m: m.update(signer=b"\x00" * 31), "record body.signer: expected 32 bytes"),
        (lambda m: m.update(signer="ab" * 32), "record body.signer: expected bin"),
    ],
)
def test_malformed_body_is_rejected_with_named_field(mutate, message) -> None:  # type: ignore[no-untyped-def]
    fields = body_map()
    mutate(fields)
    with pytest.raises(DecodeError, match=message):
        RecordBody.from_wire(packb(fields))


def test_unknown_key_instead_of_known_is_rejected() -> None:
    fields = body_map()
    fields["sender"] = fields.pop("signer")
    with pytest.raises(DecodeError, match="unexpected key 'sender'"):
        RecordBody.from_wire(packb(fields))


def test_repeated_key_is_rejected() -> None:
    # msgpack itself would keep the last value; a repeated key must be an error.
    fields = body_map()
    packer = msgpack.Packer(use_bin_type=True)
    raw = packer.pack_map_header(7)
    items = list(fields.items())
    items[6] = ("chain", "demo")  # 'chain' twice, 'signer' missing, still 7 entries
    for k, v in items:
        raw += packer.pack(k) + packer.pack(v)
    with pytest.raises(DecodeError, match="key 'chain' appears twice"):
        RecordBody.from_wire(raw)


def test_repeated_key_inside_payload_is_rejected() -> None:
    packer = msgpack.Packer(use_bin_type=True)
    payload = packer.pack_map_header(2) + packer.pack("a") + packer.pack(1) \
        + packer.pack("a") + packer.pack(2)
    body = packb(body_map(payload=None)).replace(b"\xa7payload\xc0", b"\xa7payload" + payload)
    with pytest.raises(DecodeError, match="key 'a' appears twice"):
        RecordBody.from_wire(body)


def test_not_a_map_and_garbage_are_rejected() -> None:
    for data in (packb([1, 2]), b"", b"\xc1", b"\x87", packb(body_map())[:-3]):
        with pytest.raises(DecodeError):
            RecordBody.from_wire(data)


def test_trailing_bytes_are_rejected() -> None:
    with pytest.raises(DecodeError, match="trailing bytes"):
        RecordBody.from_wire(packb(body_map()) + b"\x00")


def test_ext_types_and_timestamps_are_rejected() -> None:
    for ext in (msgpack.ExtType(5, b"xx"), msgpack.Timestamp(1, 0)):
        body = msgpack.packb(body_map(payload={"t": [ext]}), use_bin_type=True)
        with pytest.raises(DecodeError, match="ext type"):
            RecordBody.from_wire(body)


def test_payload_size_limit_is_exact() -> None:
    # A bin 16 header is 3 bytes: this payload is exactly MAX_PAYLOAD_BYTES encoded.
    ok = b"x" * (MAX_PAYLOAD_BYTES - 3)
    assert len(packb(ok)) == MAX_PAYLOAD_BYTES
    RecordBody.from_wire(packb(body_map(payload=ok)))
    with pytest.raises(TooLargeError, match="payload"):
        RecordBody.from_wire(packb(body_map(payload=ok + b"x")))
    with pytest.raises(TooLargeError):
        RecordBody.from_wire(packb(body_map(payload=ok * 2)))


def test_envelope_shape_is_strict() -> None:
    body = packb(body_map())
    sig = KEY.sign(RECORD_TAG + body)
    for bad in (packb([body]), packb([body, sig, b""]), packb({"b": body}), packb([body, sig[:63]]),
                packb([body.decode("latin-1"), sig]), packb([body, sig]) + b"\x90"):
        with pytest.raises(DecodeError):
            Record.from_wire(bad)


def test_non_canonical_envelope_is_rejected() -> None:
    body = packb(body_map())
    sig = KEY.sign(RECORD_TAG + body)
    # bin 32 length header instead of bin 8/16: same values, different bytes.
    packer = msgpack.Packer(use_bin_type=True)
    odd = b"\x92" + b"\xc6" + len(body).to_bytes(4, "big") + body + packer.pack(sig)
    with pytest.raises(DecodeError, match="canonical"):
        Record.from_wire(odd)


def test_tampered_body_or_signature_fails_verification() -> None:
    rec = Record.create(KEY, chain="demo", type="t", subject="s", payload=1, ts=0, nonce=1)
    other = seeded_key("other")
    forged = Record.from_wire(packb([rec.body_bytes, other.sign(RECORD_TAG + rec.body_bytes)]))
    with pytest.raises(SignatureError):
        forged.verify_signature()
    untagged = Record.from_wire(packb([rec.body_bytes, KEY.sign(rec.body_bytes)]))
    assert not untagged.has_valid_signature()


def test_the_pair_checks_fast_verdict_never_passes_what_the_rule_refuses() -> None:
    """``sealed_payload_matches`` (what admission runs per sealed record) says True only
    for pairs ``check_sealed_payload`` passes; every fault still refuses the pair, with its
    label, through ``SealedPayload.check``; a valid pair it cannot judge (a large payload,
    a non-canonical one) is passed by the rule (False means "not this fast way")."""
    salt = bytes(range(32))

    def pair_and_digest(payload_bytes: bytes, s: bytes = salt) -> tuple[bytes, bytes, bytes]:
        return payload_digest(s, payload_bytes), s, payload_bytes

    good = pair_and_digest(packb({"v": 21.5, "unit": "C"}))
    assert sealed_payload_matches(*good)
    check_sealed_payload(*good, "ok")
    deep = packb([[[[1]]]])
    for _ in range(70):
        deep = b"\x91" + deep  # an array in an array ... 74 deep: over MAX_PAYLOAD_DEPTH
    bad = [
        (good[0], salt[:31], good[2]),  # a 31-byte salt
        (bytes(32), salt, good[2]),  # another digest
        pair_and_digest(b"\xc1"),  # not msgpack
        pair_and_digest(packb({"v": 1}) + b"\x00"),  # trailing bytes
        pair_and_digest(deep),  # too deep
        pair_and_digest(b"\xd4\x05\x00"),  # an ext type
        pair_and_digest(b"\xa1\xff"),  # invalid UTF-8
    ]
    for digest, s, payload in bad:
        assert not sealed_payload_matches(digest, s, payload)
        with pytest.raises(PayloadMismatchError, match="record 1234"):
            check_sealed_payload(digest, s, payload, "record 1234")
    rec, pair = seal_record(KEY, chain="demo", type="sensor.reading", subject="s",
                            payload={"v": 1}, ts=5, nonce=9)
    wrong = new_pair(pair.salt, packb({"v": 2}))
    with pytest.raises(PayloadMismatchError, match=f"record {rec.id.hex()}"):
        wrong.check(rec)
    assert wrong.checked_for is None
    # valid, but beyond the fast verdict: the rule passes them
    for payload in (packb("x" * (PLAIN_BODY_BYTES + 10)),
                    b"\xcd\x00\x07"):  # 7 as a uint16: not canonical, still one payload
        ok = pair_and_digest(payload)
        assert not sealed_payload_matches(*ok)
        check_sealed_payload(*ok, "ok")
