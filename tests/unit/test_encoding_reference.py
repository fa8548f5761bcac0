"""Property test: the product decoder (ledger.encoding.decode) against an independent
reference decoder written here from the msgpack specification (no msgpack-python), with the
same acceptance rules: no ext type, no 0xc1, no truncation or trailing bytes, valid UTF-8,
at most MAX_DEPTH nested containers, no repeated map key by msgpack identity."""

from __future__ import annotations

import math
import os
import struct
from typing import Any

import msgpack
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ledger.encoding import MAX_DEPTH, MapPairs, decode
from ledger.errors import DecodeError

# Inputs per strategy (four strategies). LEDGER_PROPERTY_EXAMPLES=20000 for a longer run.
EXAMPLES = int(os.environ.get("LEDGER_PROPERTY_EXAMPLES", "800"))


class Reject(Exception):
    pass


def reference_decode(data: bytes, max_depth: int = MAX_DEPTH) -> Any:
    """A tagged value: ("nil",), ("bool", b), ("int", n), ("float", x), ("str", s),
    ("bin", b), ("arr", [..]), ("map", [(k, v), ..]); raises Reject."""
    value, pos = _ref(data, 0, 0, max_depth)
    if pos != len(data):
        raise Reject("trailing")
    return value


def _take(data: bytes, pos: int, n: int) -> bytes:
    if pos + n > len(data):
        raise Reject("truncated")
    return data[pos:pos + n]


def _ref(data: bytes, pos: int, depth: int, max_depth: int) -> tuple[Any, int]:
    b = _take(data, pos, 1)[0]
    pos += 1
    if b <= 0x7f:
        return ("int", b), pos
    if b >= 0xe0:
        return ("int", b - 256), pos
    if 0xa0 <= b <= 0xbf:
        return _str(data, pos, b & 0x1f)
    if 0x90 <= b <= 0x9f:
        return _arr(data, pos, b & 0x0f, depth, max_depth)
    if 0x80 <= b <= 0x8f:
        return _map(data, pos, b & 0x0f, depth, max_depth)
    if b == 0xc0:
        return ("nil",), pos
    if b in (0xc2, 0xc3):
        return ("bool", b == 0xc3), pos
    ints = {0xcc: ">B", 0xcd: ">H", 0xce: ">I", 0xcf: ">Q", 0xd0: ">b", 0xd1: ">h",
            0xd2: ">i", 0xd3: ">q", 0xca: ">f", 0xcb: ">d"}
    if b in ints:
        fmt = ints[b]
        (n,) = struct.unpack(fmt, _take(data, pos, struct.calcsize(fmt)))
        return ("float" if b in (0xca, 0xcb) else "int", n), pos + struct.calcsize(fmt)
    lengths = {0xd9: 1, 0xda: 2, 0xdb: 4, 0xc4: 1, 0xc5: 2, 0xc6: 4, 0xdc: 2, 0xdd: 4,
               0xde: 2, 0xdf: 4}
    if b in lengths:
        width = lengths[b]
        n = int.from_bytes(_take(data, pos, width), "big")
        pos += width
        if b in (0xd9, 0xda, 0xdb):
            return _str(data, pos, n)
        if b in (0xc4, 0xc5, 0xc6):
            return ("bin", _take(data, pos, n)), pos + n
        if b in (0xdc, 0xdd):
            return _arr(data, pos, n, depth, max_depth)
        return _map(data, pos, n, depth, max_depth)
    raise Reject("ext or 0xc1")  # 0xc1, fixext 1..16, ext 8/16/32


def _str(data: bytes, pos: int, n: int) -> tuple[Any, int]:
    raw = _take(data, pos, n)
    try:
        return ("str", raw.decode("utf-8")), pos + n
    except UnicodeDecodeError:
        raise Reject("utf-8") from None


def _arr(data: bytes, pos: int, n: int, depth: int, max_depth: int) -> tuple[Any, int]:
    if depth + 1 > max_depth:
        raise Reject("deep")
    items = []
    for _ in range(n):
        v, pos = _ref(data, pos, depth + 1, max_depth)
        items.append(v)
    return ("arr", items), pos


def _map(data: bytes, pos: int, n: int, depth: int, max_depth: int) -> tuple[Any, int]:
    if depth + 1 > max_depth:
        raise Reject("deep")
    pairs, seen = [], set()
    for _ in range(n):
        k, pos = _ref(data, pos, depth + 1, max_depth)
        key = ident(k)
        if key in seen:
            raise Reject("repeated key")
        seen.add(key)
        v, pos = _ref(data, pos, depth + 1, max_depth)
        pairs.append((k, v))
    return ("map", pairs), pos


def ident(v: Any) -> Any:
    """msgpack identity: family and value; floats by numeric value, every NaN equal;
    arrays in order, maps as sets of pairs."""
    tag = v[0]
    if tag == "float":
        return ("float", "nan") if math.isnan(v[1]) else ("float", v[1] + 0.0)
    if tag == "arr":
        return ("arr", tuple(ident(x) for x in v[1]))
    if tag == "map":
        return ("map", frozenset((ident(k), ident(x)) for k, x in v[1]))
    return v if tag != "bin" else ("bin", bytes(v[1]))


def tagged(value: Any) -> Any:
    """The product decoder's value in the reference's tagged form (checks Python types)."""
    if value is None:
        return ("nil",)
    if type(value) is bool:
        return ("bool", value)
    if type(value) is int:
        return ("int", value)
    if type(value) is float:
        return ("float", value)
    if type(value) is str:
        return ("str", value)
    if type(value) is bytes:
        return ("bin", value)
    if type(value) in (list, tuple):
        return ("arr", [tagged(x) for x in value])
    if type(value) is dict:
        return ("map", [(tagged(k), tagged(x)) for k, x in value.items()])
    if type(value) is MapPairs:
        return ("map", [(tagged(k), tagged(x)) for k, x in value.pairs])
    raise AssertionError(f"unexpected decoded type {type(value)}")


def same(a: Any, b: Any) -> bool:
    """Tagged values equal exactly (floats bit for bit up to NaN payloads)."""
    if a[0] != b[0]:
        return False
    if a[0] == "float":
        x, y = a[1], b[1]
        return (math.isnan(x) and math.isnan(y)) or (x == y and math.copysign(1, x)
                                                     == math.copysign(1, y))
    if a[0] == "arr":
        return len(a[1]) == len(b[1]) and all(same(x, y) for x, y in zip(a[1], b[1], strict=True))
    if a[0] == "map":
        return len(a[1]) == len(b[1]) and all(
            same(k1, k2) and same(v1, v2) for (k1, v1), (k2, v2) in zip(a[1], b[1], strict=True))
    return bool(a == b)


def agree(data: bytes) -> None:
    try:
        expected = reference_decode(data)
    except Reject:
        expected = None
    try:
        got = tagged(decode(data, "x")[0])
    except DecodeError:
        got = None
    if expected is None or got is None:
        assert expected is None and got is None, (data.hex(), expected, got)
    else:
        assert same(expected, got), (data.hex(), expected, got)


# ---- generators: raw msgpack with every width and form, keys from a small pool ----------
KEY_POOL = [b"\x01", b"\xcc\x01", b"\xd0\x01", b"\xc3", b"\xc2", b"\x00", b"\xc0",
            b"\xcb" + struct.pack(">d", 1.0), b"\xca" + struct.pack(">f", 1.0),
            b"\xcb" + struct.pack(">d", math.nan), b"\xca" + struct.pack(">f", math.nan),
            b"\xcb" + struct.pack(">d", -0.0), b"\xcb" + struct.pack(">d", 0.0),
            b"\xa1a", b"\xd9\x01a", b"\xc4\x01a", b"\xa11", b"\x92\x01\x02",
            b"\x92\xcc\x01\x02", b"\x81\xa1a\x01", b"\x90", b"\x80"]
EXTS = [b"\xd6\xff\x00\x00\x00\x01", b"\xc7\x04\xff\x00\x00\x00\x01",
        b"\xc8\x00\x04\xff\x00\x00\x00\x01", b"\xc9\x00\x00\x00\x04\xff\x00\x00\x00\x01",
        b"\xc7\x0c\xff" + bytes(12), b"\xd4\x01\x00", b"\xc1"]


def _len_head(n: int, fix: int | None, fix_max: int, codes: tuple[int | None, int, int],
              draw: Any) -> bytes:
    options = []
    if fix is not None and n <= fix_max:
        options.append(bytes([fix | n]))
    if codes[0] is not None and n < 256:
        options.append(bytes([codes[0], n]))
    options.append(bytes([codes[1]]) + n.to_bytes(2, "big"))
    options.append(bytes([codes[2]]) + n.to_bytes(4, "big"))
    return draw(st.sampled_from(options))  # type: ignore[no-any-return]


@st.composite
def raw_value(draw: Any, depth: int = 0) -> bytes:
    kinds = ["scalar", "key", "str", "bin", "ext"]
    if depth < 70:
        kinds += ["arr", "map", "deep"]
    kind = draw(st.sampled_from(kinds))
    if kind == "scalar":
        return draw(st.sampled_from([b"\xc0", b"\xc2", b"\xc3", b"\x7f", b"\xff", b"\xd3"
                                     + bytes(8), b"\xcf" + b"\xff" * 8, b"\xca\x7f\x80\x00\x00",
                                     b"\xcb" + struct.pack(">d", 2.5)]))  # type: ignore[no-any-return]
    if kind == "key":
        return draw(st.sampled_from(KEY_POOL))  # type: ignore[no-any-return]
    if kind == "ext":
        return draw(st.sampled_from(EXTS))  # type: ignore[no-any-return]
    if kind in ("str", "bin"):
        raw = draw(st.sampled_from([b"", b"a", "é".encode(), b"\xff", b"ab\xc3"]))
        if kind == "str":
            return _len_head(len(raw), 0xa0, 31, (0xd9, 0xda, 0xdb), draw) + raw
        return _len_head(len(raw), None, 0, (0xc4, 0xc5, 0xc6), draw) + raw
    if kind == "deep":
        n = draw(st.integers(60, 70))
        inner = draw(raw_value(depth=70))
        wrap = draw(st.sampled_from([b"\x91", b"\x81\xa1k", b"\x81\x91\x01"]))
        return wrap * n + inner
    n = draw(st.integers(0, 4))
    if kind == "arr":
        items = b"".join(draw(raw_value(depth=depth + 1)) for _ in range(n))
        return _len_head(n, 0x90, 15, (None, 0xdc, 0xdd), draw) + items
    pairs = b"".join(draw(st.one_of(st.sampled_from(KEY_POOL), raw_value(depth=depth + 1)))
                     + draw(raw_value(depth=depth + 1)) for _ in range(n))
    return _len_head(n, 0x80, 15, (None, 0xde, 0xdf), draw) + pairs


@st.composite
def mutated(draw: Any) -> bytes:
    data = bytearray(draw(raw_value()))
    for _ in range(draw(st.integers(0, 3))):
        op = draw(st.sampled_from(["flip", "cut", "insert"]))
        if not data:
            break
        i = draw(st.integers(0, len(data) - 1))
        if op == "flip":
            data[i] = draw(st.integers(0, 255))
        elif op == "cut":
            del data[i:i + draw(st.integers(1, 4))]
        else:
            data[i:i] = draw(st.sampled_from([b"\x00", b"\xc1", EXTS[1], b"\x91", b"\x81"]))
    return bytes(data)


SETTINGS = settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@SETTINGS
@given(st.binary(max_size=48))
def test_random_bytes(data: bytes) -> None:
    agree(data)


@SETTINGS
@given(raw_value())
def test_generated_encodings(data: bytes) -> None:
    agree(data)


@SETTINGS
@given(mutated())
def test_mutated_encodings(data: bytes) -> None:
    agree(data)


@SETTINGS
@given(st.recursive(st.none() | st.booleans() | st.integers(-2**63, 2**64 - 1)
                    | st.floats(allow_nan=True, width=32) | st.text(max_size=5)
                    | st.binary(max_size=5),
                    lambda inner: st.lists(inner, max_size=4)
                    | st.dictionaries(st.text(max_size=3) | st.integers(-3, 3), inner,
                                      max_size=4), max_leaves=20),
       st.booleans())
def test_library_encodings(value: Any, single: bool) -> None:
    agree(msgpack.packb(value, use_bin_type=True, use_single_float=single))
