"""The fast paths of record decoding (issue 17) give exactly the strict decoder's verdict.

``decode_plain`` (msgpack's C decoder, a walk and a re-encode) and ``Record.from_wire``'s
read of a canonical envelope from its bytes may only *skip* work: wherever they answer, the
answer is the one the strict path (``decode``; ``unpack_exact`` + ``require_canonical``)
gives, and every other input goes to the strict path. Compared here on generated values,
their byte mutations and the encodings the strict decoder exists to refuse.
"""

from __future__ import annotations

import math
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ledger import records
from ledger.crypto import RECORD_TAG
from ledger.encoding import MAX_DEPTH, decode, decode_plain, packb
from ledger.errors import LedgerError
from ledger.records import MAX_BODY_DEPTH, Record
from tests.factory import seeded_key
from tests.unit.test_encoding import EXT_FORMS

KEY = seeded_key("fast-paths")

scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**63, 2**64 - 1),
                    st.floats(allow_nan=True), st.text(max_size=12), st.binary(max_size=12))
keys = st.one_of(st.text(max_size=6), st.integers(-3, 3), st.floats(), st.booleans())
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(keys, inner, max_size=4)), max_leaves=12)


def strict(data: bytes, depth: int = MAX_DEPTH) -> Any:
    try:
        return ("ok", decode(data, "x", max_depth=depth))
    except LedgerError as exc:
        return ("error", str(exc))


def same(a: Any, b: Any) -> bool:
    """Equal, NaN included (as the same object graph would be)."""
    if isinstance(a, float) and isinstance(b, float):
        return a == b or (math.isnan(a) and math.isnan(b))
    if type(a) is not type(b):
        return False
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    return bool(a == b)


def check_plain(data: bytes, depth: int = MAX_DEPTH) -> None:
    fast = decode_plain(data, depth)
    if fast is None:
        return
    verdict, got = strict(data, depth)
    assert verdict == "ok", f"decode_plain accepted what decode refuses: {got}"
    assert same(fast[0], got[0]) and fast[1] == got[1]


def mutations(data: bytes, i: int, byte: int) -> list[bytes]:
    i %= max(1, len(data))
    return [data[:i] + bytes([byte]) + data[i + 1:], data[:i] + bytes([byte]) + data[i:],
            data[:i] + data[i + 1:], data + bytes([byte])]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(values, st.integers(0, 10_000), st.integers(0, 255))
def test_decode_plain_agrees_with_decode(value: Any, i: int, byte: int) -> None:
    data = packb(value)
    check_plain(data)
    for mutated in mutations(data, i, byte):
        check_plain(mutated)


@pytest.mark.parametrize("form", list(EXT_FORMS))
def test_decode_plain_refuses_ext_types_the_timestamp_included(form: str) -> None:
    data = b"\x81\xa1t" + EXT_FORMS[form]
    assert decode_plain(data) is None
    assert strict(data)[0] == "error"


@pytest.mark.parametrize("data", [
    b"\x82\xa1a\x01\xa1a\x02",  # a repeated key
    b"\x82\x01\x01\xc3\x02",  # 1 and True: Python merges them, msgpack does not
    b"\x82\xcb" + packb(math.nan)[1:] + b"\x01\xcb" + packb(math.nan)[1:] + b"\x02",  # NaN twice
    b"\x81\xca\x3f\x80\x00\x00\x01",  # a float32 key
    b"\xca\x3f\x80\x00\x00",  # float32: valid, not canonical (decode decides)
    b"\xd0\x01",  # int8 for 1: valid, not canonical
    b"\x92\x01", b"\x91\x01\x02", b"\xc1", b"\xa2\xff\xfe",  # truncated, trailing, 0xc1, UTF-8
])
def test_decode_plain_leaves_the_hard_cases_to_decode(data: bytes) -> None:
    assert decode_plain(data) is None


def test_decode_plain_counts_depth_like_decode() -> None:
    for depth in (MAX_DEPTH - 1, MAX_DEPTH, MAX_DEPTH + 1):
        for empty in (b"\x90", b"\x80", b"\x01"):
            data = b"\x91" * depth + empty
            fast, verdict = decode_plain(data), strict(data)
            assert (fast is not None) == (verdict[0] == "ok"), (depth, empty)
            if fast is not None:
                assert fast[1] == verdict[1][1]


def body(**fields: Any) -> bytes:
    base: dict[str, Any] = {"chain": "demo", "type": "sensor.reading", "subject": "s/1",
                            "payload": {"v": 1.5, "unit": "C"}, "ts": 1, "nonce": 7,
                            "signer": KEY.public}
    base.update(fields)
    return packb({k: v for k, v in base.items() if v is not ...})


def envelope(body_bytes: bytes) -> bytes:
    return packb([body_bytes, KEY.sign(RECORD_TAG + body_bytes)])


def verdict(envelope: bytes) -> Any:
    try:
        r = Record.from_wire(envelope)
    except LedgerError as exc:
        return ("error", type(exc).__name__, str(exc))
    return ("ok", repr(r), r.elements)  # repr: a NaN payload is equal to itself


def strict_verdict(envelope: bytes) -> Any:
    with pytest.MonkeyPatch.context() as m:
        m.setattr(records, "decode_plain", lambda data, depth: None)
        m.setattr(records, "_envelope_parts", lambda e: None)
        return verdict(envelope)


BODIES = [
    body(), body(payload=None), body(payload=[{}, [], {"a": [1, {"b": b"x"}]}]),
    body(payload="x" * 300), body(payload=b"\x00" * 70_000), body(subject="x" * 300),
    body(payload=..., payload_digest=b"\x01" * 32),
    body(payload=..., payload_digest=b"\x01" * 31),
    body(payload={"a": 1}, payload_digest=b"\x01" * 32), body(ts=True), body(nonce=-1),
    body(signer=b"\x00" * 31), body(chain=""), body(type="Bad"), body(nonce=...),
    body(extra=1), body(payload={1: 2}), body(payload={"k": math.nan}),
    b"\x81\xa1a\x01", packb([1, 2]), b"\x87" + body()[1:] + b"\x00",
    body().replace(b"\xa5nonce", b"\xa5chain"),  # a repeated key
    body(payload=None).replace(b"\xa7payload\xc0", b"\xa7payload\xd6\xff\x00\x00\x00\x01"),
    body(payload=None).replace(b"\xa7payload\xc0", b"\xa7payload" + b"\x91" * 64 + b"\x90"),
    body(payload=None).replace(b"\xa7payload\xc0", b"\xa7payload" + b"\x91" * 63 + b"\x90"),
    body(ts=1).replace(b"\xa2ts\x01", b"\xa2ts\xd0\x01"),  # a non-canonical int: valid
]


@pytest.mark.parametrize("i", range(len(BODIES)))
def test_record_from_wire_agrees_with_the_strict_path(i: int) -> None:
    data = envelope(BODIES[i])
    assert verdict(data) == strict_verdict(data)


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(BODIES[:8]), st.integers(0, 100_000), st.integers(0, 255),
       st.booleans())
def test_mutated_envelopes_and_bodies_agree(base: bytes, i: int, byte: int,
                                            in_body: bool) -> None:
    data = envelope(base)
    for mutated in (mutations(base, i, byte) if in_body else []):
        check_plain(mutated, MAX_BODY_DEPTH)
        m = envelope(mutated)
        assert verdict(m) == strict_verdict(m)
    if not in_body:
        for m in mutations(data, i, byte):
            assert verdict(m) == strict_verdict(m)


def test_envelope_headers_that_are_not_the_smallest_are_refused() -> None:
    b = body()
    sig = KEY.sign(RECORD_TAG + b)
    bin16 = b"\x92\xc5" + len(b).to_bytes(2, "big") + b + b"\xc4\x40" + sig
    assert verdict(bin16)[0] == "error"
    assert msgpack.unpackb(bin16) == [b, sig]  # valid msgpack, just not canonical


def _block_bytes() -> bytes:
    from ledger.store import MemoryStore
    from tests.factory import ChainBuilder, make_fixture

    builder = ChainBuilder(make_fixture(), MemoryStore())
    builder.add(3)
    return builder.add(3).to_wire()


BLOCK = _block_bytes()


def shell_verdict(data: bytes, strict_only: bool = False) -> Any:
    from ledger import blocks

    with pytest.MonkeyPatch.context() as m:
        if strict_only:
            m.setattr(blocks, "decode_plain", lambda data: None)
        try:
            shell = blocks.BlockShell.from_wire(data)
        except LedgerError as exc:
            return ("error", type(exc).__name__, str(exc))
    return ("ok", shell)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 100_000), st.integers(0, 255))
def test_block_shell_agrees_with_the_strict_path(i: int, byte: int) -> None:
    """``BlockShell.from_wire`` takes ``decode_plain``'s answer (decoded and canonical in one
    pass) where it gives one: the same shell or the same error as unpack + re-encode."""
    assert shell_verdict(BLOCK)[0] == "ok"
    for mutated in [BLOCK, *mutations(BLOCK, i, byte)]:
        assert shell_verdict(mutated) == shell_verdict(mutated, strict_only=True)


def pair_verdict(payload: bytes, strict_only: bool = False) -> Any:
    """``check_sealed_payload`` on ``payload`` with its digest (so only the payload's own
    rules can refuse it): None or the error; ``strict_only``: without ``decode_plain``."""
    salt = b"\x07" * records.SALT_SIZE
    digest = records.payload_digest(salt, payload)
    with pytest.MonkeyPatch.context() as m:
        if strict_only:
            m.setattr(records, "decode_plain", lambda data, depth: None)
        try:
            records.check_sealed_payload(digest, salt, payload, "record x")
        except LedgerError as exc:
            return (type(exc).__name__, str(exc))
    return None


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(values, st.integers(0, 10_000), st.integers(0, 255))
def test_sealed_payload_check_agrees_with_the_strict_path(value: Any, i: int,
                                                          byte: int) -> None:
    """A sealed payload's check at admission takes ``decode_plain``'s answer where it gives
    one (every node checks every pair: the common case at C speed): the verdict is the
    strict decoder's for every payload and every mutation of it."""
    data = packb(value)
    for payload in [data, *mutations(data, i, byte)]:
        assert pair_verdict(payload) == pair_verdict(payload, strict_only=True)


@pytest.mark.parametrize("payload", [
    b"\x91" * (records.MAX_PAYLOAD_DEPTH - 1) + b"\x90",  # as deep as a payload may nest
    b"\x91" * records.MAX_PAYLOAD_DEPTH + b"\x90",  # one level too deep
    b"\x91" * records.MAX_PAYLOAD_DEPTH + b"\x01",
    b"\x82\xa1a\x01\xa1a\x02", b"\xd0\x01", b"\x92\x01", b"\xc1", b"\xa2\xff\xfe",
    b"\xd6\xff\x00\x00\x00\x00",  # the timestamp ext
    packb({"v": 1.5, "note": "x" * (records.PLAIN_BODY_BYTES + 10)}),  # the strict path only
])
def test_sealed_payload_check_edge_cases(payload: bytes) -> None:
    assert pair_verdict(payload) == pair_verdict(payload, strict_only=True)
