"""MessagePack encoding (SPEC section 1) and the strict decoders every wire type uses.

``packb`` is the one encoder: ``use_bin_type=True`` and the library's smallest encodings,
so the arrays that nodes hash or sign are canonical by construction. ``decode`` (and
``unpack_exact``, its value only) is the one strict decoder every part of the product uses:
one whole msgpack value, no ext type in any encoding, at most ``MAX_DEPTH`` nested
containers, no repeated map key by msgpack identity (``identity``) — the validity rules of
docs/protocol.md, "Decoding". The ``expect_*`` helpers check one field's type and name it in
the error.
"""

from __future__ import annotations

import base64
import binascii
import json
import struct
import threading
from typing import Any, NoReturn

import msgpack

from ledger.errors import DecodeError, TooLargeError


def packb(obj: Any) -> bytes:
    """Encode ``obj`` as the SPEC's canonical msgpack."""
    try:
        packer = _packers.packer
    except AttributeError:
        packer = _packers.packer = msgpack.Packer(use_bin_type=True)
    return packer.pack(obj)  # type: ignore[no-any-return]


#: One Packer per thread (``msgpack.packb`` makes one per call, half of a small value's
#: cost); ``pack`` resets it after every value, raised errors included.
_packers = threading.local()


#: How deep containers may nest in any decoded value (a validity rule, docs/protocol.md):
#: the outermost array or map counts 1, each array or map inside it (as an element, a key or
#: a value) one more. A record body allows one more level, for the body map itself.
MAX_DEPTH = 64


class MapPairs:
    """A decoded msgpack map that a dict cannot hold faithfully: one with an array or map
    as a key, or with keys that msgpack tells apart but Python merges (``1``, ``True``,
    ``1.0``). ``pairs`` keeps every (key, value) in wire order; arrays inside keys are
    tuples. Protocol objects never hold one; only payloads can."""

    __slots__ = ("pairs",)

    def __init__(self, pairs: list[tuple[Any, Any]]) -> None:
        self.pairs: tuple[tuple[Any, Any], ...] = tuple(
            (_freeze(k), v) for k, v in pairs)

    def __repr__(self) -> str:
        return f"MapPairs({list(self.pairs)!r})"

    def __eq__(self, other: object) -> bool:
        """Equal iff the same msgpack map (``identity``: the same pairs, in any order)."""
        return type(other) is MapPairs and identity(self) == identity(other)

    def __hash__(self) -> int:
        return hash(identity(self))


def _freeze(value: Any) -> Any:
    """A map key as a hashable value: arrays become tuples, maps MapPairs."""
    if type(value) is list:
        return tuple(_freeze(v) for v in value)
    if type(value) is dict:
        return MapPairs(list(value.items()))
    return value


def reject_ext(code: int, data: bytes) -> NoReturn:
    """ext_hook for msgpack: no ext type is part of the protocol."""
    raise DecodeError(f"msgpack ext type {code} is not allowed")


def pairs_to_dict(pairs: list[tuple[Any, Any]]) -> dict[Any, Any]:
    """object_pairs_hook for JSON: build a dict, rejecting a repeated key."""
    out: dict[Any, Any] = {}
    for key, value in pairs:
        if key in out:
            raise DecodeError(f"key {key!r} appears twice in one map")
        out[key] = value
    return out


# ---- the strict scan ----------------------------------------------------------------------
# One iterative pass over the bytes, before anything is built: every header is read, strings
# and bins are skipped by length. It rejects ext types in every form, the never-used byte
# 0xc1, truncation, trailing bytes and nesting beyond the depth limit, counts the elements
# (what decoding will allocate) and notes what kinds of map keys occur. Repeated keys are
# then rejected as msgpack builds each map (``_str_keys_map``, ``_any_keys_map``): only a
# map of two or more keys is checked, by C dict building where Python's equality is msgpack
# identity (str keys), by ``identity`` otherwise.

_LEN1 = struct.Struct(">B").unpack_from
_LEN2 = struct.Struct(">H").unpack_from
_LEN4 = struct.Struct(">I").unpack_from
# First byte -> bytes of a fixed-size scalar (header included), for 0xc0..0xdf.
_FIXED = {0xc0: 1, 0xc2: 1, 0xc3: 1, 0xca: 5, 0xcb: 9, 0xcc: 2, 0xcd: 3, 0xce: 5, 0xcf: 9,
          0xd0: 2, 0xd1: 3, 0xd2: 5, 0xd3: 9}
# str 8/16/32 and bin 8/16/32 -> width of the length field.
_VAR = {0xd9: 1, 0xda: 2, 0xdb: 4, 0xc4: 1, 0xc5: 2, 0xc6: 4}
_EXT = frozenset({0xc7, 0xc8, 0xc9, 0xd4, 0xd5, 0xd6, 0xd7, 0xd8})
# First byte -> the whole size of a value whose size the byte tells (fixint, fixstr, nil,
# bool, float, int), else 0.
_SKIP = tuple(1 if b <= 0x7f or b >= 0xe0 else 1 + (b & 0x1f) if 0xa0 <= b <= 0xbf
              else _FIXED.get(b, 0) for b in range(256))
_SKIP_EMPTY = tuple(1 if b in (0x80, 0x90) else n for b, n in enumerate(_SKIP))


class _Truncated(Exception):
    pass


class _TooDeep(Exception):
    pass


def _scan(data: bytes, max_depth: int) -> tuple[int, int]:
    """Validate the structure of one msgpack value filling ``data``.

    Returns the number of elements (every value, keys included) and what the maps need
    checked while they are built: 0 nothing (no map has two keys), _STR_KEYS (all keys are
    str), _ANY_KEYS (some key is not a str). Raises DecodeError (without the ``what``)."""
    end = len(data)
    pos = 0
    count = 0
    maps = 0
    # The open container: values still to read in it, and whether it is a map (a map of n
    # pairs reads 2n values, a key when the count left is even). The outermost "container"
    # reads the one value. ``stack`` holds the enclosing containers' state.
    remaining = 1
    is_map = False
    stack: list[tuple[int, bool]] = []
    try:
        while True:
            if not is_map and remaining > 1:
                # Inside an array: skip a run of leaves in a tight loop (an empty array or
                # map is a leaf too where one more level is allowed). The last item takes
                # the general path, which closes the array.
                table = _SKIP_EMPTY if len(stack) < max_depth else _SKIP
                step = table[data[pos]]
                while step:
                    pos += step
                    count += 1
                    remaining -= 1
                    if remaining == 1:
                        break
                    step = table[data[pos]]
            b = data[pos]
            if is_map and not remaining & 1 and not (0xa0 <= b <= 0xbf or 0xd9 <= b <= 0xdb):
                maps = _ANY_KEYS  # a key that is not a str
            count += 1
            step = _SKIP[b]
            if step:
                pos += step
            elif b <= 0x9f or 0xdc <= b <= 0xdf:
                if b <= 0x8f:
                    n, child_is_map, pos = 2 * (b & 0x0f), True, pos + 1
                elif b <= 0x9f:
                    n, child_is_map, pos = b & 0x0f, False, pos + 1
                elif b == 0xdc:
                    n, child_is_map, pos = _LEN2(data, pos + 1)[0], False, pos + 3
                elif b == 0xdd:
                    n, child_is_map, pos = _LEN4(data, pos + 1)[0], False, pos + 5
                elif b == 0xde:
                    n, child_is_map, pos = 2 * _LEN2(data, pos + 1)[0], True, pos + 3
                else:
                    n, child_is_map, pos = 2 * _LEN4(data, pos + 1)[0], True, pos + 5
                if len(stack) >= max_depth:
                    raise _TooDeep
                if n:
                    if n > end - pos:  # every element takes at least one byte
                        raise _Truncated
                    if child_is_map and n > 2 and not maps:
                        maps = _STR_KEYS
                    stack.append((remaining, is_map))
                    remaining = n
                    is_map = child_is_map
                    continue
            elif b in _VAR:
                width = _VAR[b]
                length = (_LEN1 if width == 1 else _LEN2 if width == 2 else _LEN4)(data, pos + 1)[0]
                pos += 1 + width + length
            elif b in _EXT:
                raise DecodeError(f"msgpack ext type (byte 0x{b:02x}) is not allowed")
            else:
                raise DecodeError("byte 0xc1 is never used in msgpack")
            # One value done: close every container it completes.
            remaining -= 1
            while not remaining and stack:
                remaining, is_map = stack.pop()
                remaining -= 1
            if not remaining:
                break
    except (IndexError, struct.error, _Truncated):
        raise DecodeError("truncated msgpack value") from None
    except _TooDeep:
        raise DecodeError(f"containers nest deeper than {max_depth} levels") from None
    if pos > end:
        raise DecodeError("truncated msgpack value")
    if pos != end:
        raise DecodeError("trailing bytes after the msgpack value")
    return count, maps


_STR_KEYS = 1
_ANY_KEYS = 2


def _str_keys_map(pairs: list[tuple[Any, Any]]) -> dict[Any, Any]:
    """object_pairs_hook when every key is a str: for str, Python's equality is msgpack
    identity, so a dict that holds fewer entries than the pairs means a repeated key."""
    out = dict(pairs)
    if len(out) != len(pairs):
        raise DecodeError(f"map key {_repeated(pairs)!r} appears twice in one map")
    return out


def _any_keys_map(pairs: list[tuple[Any, Any]]) -> dict[Any, Any] | MapPairs:
    """object_pairs_hook when some key is not a str: repeated keys by msgpack identity
    (``identity``); a dict where a dict holds every pair, else MapPairs."""
    try:
        out: dict[Any, Any] | None = dict(pairs)
    except TypeError:  # an array or map as a key
        out = None
    if out is not None and len(out) == len(pairs) and all(
            type(k) is str or type(k) is bytes for k in out):
        return out  # str and bytes keys: Python's equality is msgpack identity
    seen = set()
    for key, _ in pairs:
        ident = identity(key)
        if ident in seen:
            raise DecodeError(f"map key {key!r} appears twice in one map")
        seen.add(ident)
    return out if out is not None and len(out) == len(pairs) else MapPairs(pairs)


def _repeated(pairs: list[tuple[Any, Any]]) -> Any:
    seen = set()
    for key, _ in pairs:
        if key in seen:
            return key
        seen.add(key)
    return None


def identity(value: Any) -> Any:
    """The msgpack identity of a decoded value, as a hashable: two map keys are the same
    key iff their identities are equal. Type family (nil, bool, int, float, str, bin, array,
    map) and value: an int its value whatever its width; a float its numeric value whatever
    its width, so 0.0 and -0.0 are one key and every NaN is the same key; arrays by their
    items in order; maps as the set of their pairs (order does not matter)."""
    t = type(value)
    if t is str:
        return value
    if t is float:
        return ("f", "nan" if value != value else value)
    if t is int:
        return ("i", value)
    if t is bool:
        return ("b", value)
    if t is bytes:
        return ("y", value)
    if value is None:
        return ("n",)
    if t is list or t is tuple:
        return ("a", tuple(identity(v) for v in value))
    pairs = value.items() if t is dict else value.pairs
    return ("m", frozenset((identity(k), identity(v)) for k, v in pairs))


_HOOKS = (None, _str_keys_map, _any_keys_map)


def decode(data: bytes, what: str, *, max_len: int | None = None,
           max_depth: int = MAX_DEPTH) -> tuple[Any, int]:
    """The one strict msgpack decoder: (value, elements) of exactly one value filling ``data``.

    Rejects ext types in every encoding (the timestamp -1 included), the byte 0xc1,
    truncation, trailing bytes, invalid UTF-8 in a str, containers nested deeper than
    ``max_depth`` and a repeated map key by msgpack identity. Nothing is allocated before the
    scan has passed, and then msgpack's own limits are the input's length. Maps come back as
    dicts, or MapPairs where a dict cannot hold them; arrays as lists; bin as bytes.
    ``elements`` counts every value (keys included): what decoding allocated, for callers
    that account memory.
    """
    if not isinstance(data, bytes):
        if not isinstance(data, bytearray | memoryview):
            raise DecodeError(f"{what}: expected bytes, got {type(data).__name__}")
        data = bytes(data)
    if max_len is not None and len(data) > max_len:
        raise DecodeError(f"{what}: {len(data)} bytes exceeds the limit of {max_len}")
    if not data:
        raise DecodeError(f"{what}: truncated msgpack value")
    try:
        count, maps = _scan(data, max_depth)
    except DecodeError as exc:
        raise DecodeError(f"{what}: {exc}") from None
    return _build(data, maps, what), count


def decode_plain(data: bytes, max_depth: int = MAX_DEPTH) -> tuple[Any, int] | None:
    """``decode(data)`` for the common case, at the speed of msgpack's C decoder: a value
    in canonical encoding (``packb`` writes these exact bytes back) whose maps have only
    str keys. Returns (value, elements) exactly as ``decode`` would, or None — for any
    other bytes, valid or not, and then the caller asks ``decode``, which alone says what
    is wrong.

    Why the same verdict: msgpack's decoder refuses truncation, trailing bytes, the byte
    0xc1, invalid UTF-8 and (``reject_ext``) every ext type but the timestamp, which the
    walk (``_plain_elements``) refuses as it counts the elements and the depth; a repeated
    key, which a dict would merge, cannot re-encode to the same bytes; str keys are where
    Python's equality is msgpack identity (a float key such as NaN is left to ``decode``).
    """
    try:
        value = msgpack.unpackb(data, raw=False, strict_map_key=False, ext_hook=reject_ext)
    except Exception:
        return None
    elements = _plain_elements(value, max_depth)
    if elements < 0 or packb(value) != data:  # plain values always encode
        return None
    return value, elements


_PLAIN_SCALARS = frozenset({str, int, float, bytes, bool, type(None)})


def _plain_elements(value: Any, depth_left: int) -> int:
    """The elements ``value`` counts, if it holds only scalars, lists and str-keyed dicts
    nested at most ``depth_left`` containers deep; else -1."""
    t = type(value)
    if t in _PLAIN_SCALARS:
        return 1
    if depth_left <= 0:
        return -1
    scalars = _PLAIN_SCALARS
    if t is dict:
        count = 1 + 2 * len(value)  # the map, each key and each value as a scalar
        for key, item in value.items():
            if type(key) is not str:
                return -1
            if type(item) not in scalars:
                inner = _plain_elements(item, depth_left - 1)
                if inner < 0:
                    return -1
                count += inner - 1
        return count
    if t is list:
        count = 1 + len(value)
        for item in value:
            if type(item) not in scalars:
                inner = _plain_elements(item, depth_left - 1)
                if inner < 0:
                    return -1
                count += inner - 1
        return count
    return -1


def _build(data: bytes, maps: int, what: str) -> Any:
    """Build the value of ``data``, which passed the scan (``maps``: its maps' needs)."""
    limit = len(data)
    try:
        value = msgpack.unpackb(
            data, raw=False, use_list=True, strict_map_key=False,
            object_pairs_hook=_HOOKS[maps],
            ext_hook=reject_ext, max_str_len=limit,
            max_bin_len=limit, max_array_len=limit, max_map_len=limit, max_ext_len=0,
        )
    except DecodeError as exc:  # a repeated key
        raise DecodeError(f"{what}: {exc}") from None
    except UnicodeDecodeError as exc:
        raise DecodeError(f"{what}: invalid UTF-8 in a str ({exc.reason})") from None
    except Exception as exc:  # the scan admitted it: only a str's UTF-8 can still fail
        raise DecodeError(f"{what}: not valid msgpack ({type(exc).__name__}: {exc})") from None
    return value


def scan(data: bytes, what: str, *, max_depth: int = MAX_DEPTH) -> int:
    """Check ``data`` by ``decode``'s structural rules without decoding it; return its
    element count (``decode`` also checks each str's UTF-8)."""
    try:
        return _scan(bytes(data), max_depth)[0]
    except DecodeError as exc:
        raise DecodeError(f"{what}: {exc}") from None


def map_value_sizes(data: bytes) -> dict[Any, int]:
    """The encoded size of each value of the map ``data`` holds, by key (``data`` must have
    passed ``decode``; keys as decoded, for str keys)."""
    pos = 0
    b = data[0]
    if b <= 0x8f:
        n, pos = b & 0x0f, 1
    elif b == 0xde:
        n, pos = _LEN2(data, 1)[0], 3
    else:
        n, pos = _LEN4(data, 1)[0], 5
    out: dict[Any, int] = {}
    for _ in range(n):
        key_start = pos
        pos = _skip(data, pos)
        start = pos
        pos = _skip(data, pos)
        key = data[key_start:start]
        if 0xa0 <= key[0] <= 0xbf:  # a fixstr key (the body's seven are)
            out[key[1:].decode()] = pos - start
    return out


def map_str_value(data: bytes, key: str) -> str | None:
    """The str value of fixstr ``key`` in the map ``data`` holds, None if the value is not a
    str, the key is absent or ``data`` is not a map (``data`` must have passed ``scan``):
    reads one value without decoding the others."""
    b = data[0]
    if 0x80 <= b <= 0x8f:
        n, pos = b & 0x0f, 1
    elif b == 0xde:
        n, pos = _LEN2(data, 1)[0], 3
    elif b == 0xdf:
        n, pos = _LEN4(data, 1)[0], 5
    else:
        return None
    wanted = key.encode()
    for _ in range(n):
        key_start = pos
        pos = _skip(data, pos)
        start = pos
        pos = _skip(data, pos)
        if data[key_start] == 0xa0 + len(wanted) and data[key_start + 1:start] == wanted:
            first = data[start]
            if not (0xa0 <= first <= 0xbf or 0xd9 <= first <= 0xdb):
                return None
            text: bytes = msgpack.unpackb(data[start:pos], raw=True)
            return text.decode("utf-8", "replace")
    return None


def _skip(data: bytes, pos: int) -> int:
    """The end of the (already validated) value at ``pos``, allocating nothing per element:
    a container only adds to the count of values still to skip."""
    remaining = 1
    while remaining:
        remaining -= 1
        b = data[pos]
        if b <= 0x7f or b >= 0xe0:
            pos += 1
        elif b >= 0xa0 and b <= 0xbf:
            pos += 1 + (b & 0x1f)
        elif b <= 0x8f:
            remaining += 2 * (b & 0x0f)
            pos += 1
        elif b <= 0x9f:
            remaining += b & 0x0f
            pos += 1
        elif b == 0xdc or b == 0xde:
            remaining += _LEN2(data, pos + 1)[0] * (2 if b == 0xde else 1)
            pos += 3
        elif b == 0xdd or b == 0xdf:
            remaining += _LEN4(data, pos + 1)[0] * (2 if b == 0xdf else 1)
            pos += 5
        elif b in _FIXED:
            pos += _FIXED[b]
        elif b in _VAR:
            width = _VAR[b]
            length = (_LEN1 if width == 1 else _LEN2 if width == 2 else _LEN4)(data, pos + 1)[0]
            pos += 1 + width + length
        else:
            raise DecodeError(f"byte 0x{b:02x}: not a value decode admits")
    return pos


def unpack_exact(data: bytes, what: str, *, max_len: int | None = None,
                 max_depth: int = MAX_DEPTH) -> Any:
    """Decode exactly one msgpack value filling ``data`` strictly (``decode``'s rules); name
    ``what`` in errors."""
    return decode(data, what, max_len=max_len, max_depth=max_depth)[0]


def loads_json(data: str | bytes) -> Any:
    """Parse JSON strictly: a repeated key in any object is a DecodeError, like in msgpack."""
    try:
        return json.loads(data, object_pairs_hook=pairs_to_dict)
    except DecodeError:
        raise
    except RecursionError as exc:
        raise DecodeError("not valid JSON (nested too deep)") from exc
    except (ValueError, UnicodeDecodeError) as exc:
        raise DecodeError(f"not valid JSON ({exc})") from exc


def fail(what: str, message: str) -> NoReturn:
    """Raise a DecodeError naming the field."""
    raise DecodeError(f"{what}: {message}")


def expect_array(value: Any, what: str, length: int | None = None) -> list[Any]:
    """Return ``value`` if it is an array (of ``length`` items, if given)."""
    if type(value) is not list:
        fail(what, f"expected an array, got {kind_of(value)}")
    if length is not None and len(value) != length:
        fail(what, f"expected an array of {length} items, got {len(value)}")
    return value


def expect_bytes(value: Any, what: str, length: int | None = None) -> bytes:
    """Return ``value`` if it is a bin (of exactly ``length`` bytes, if given)."""
    if type(value) is not bytes:
        fail(what, f"expected bin, got {kind_of(value)}")
    if length is not None and len(value) != length:
        fail(what, f"expected {length} bytes, got {len(value)}")
    return value


def expect_int(value: Any, what: str, lo: int = 0, hi: int = 2**64 - 1) -> int:
    """Return ``value`` if it is an integer in ``[lo, hi]`` (booleans are not integers)."""
    if type(value) is not int:
        fail(what, f"expected an integer, got {kind_of(value)}")
    if not lo <= value <= hi:
        fail(what, f"{value} is outside [{lo}, {hi}]")
    return value


def expect_str(value: Any, what: str) -> str:
    """Return ``value`` if it is a str."""
    if type(value) is not str:
        fail(what, f"expected str, got {kind_of(value)}")
    return value


def kind_of(value: Any) -> str:
    """The msgpack type name of a decoded value, for error messages."""
    names = {bytes: "bin", str: "str", int: "int", list: "array", dict: "map",
             bool: "bool", float: "float", type(None): "nil"}
    return names.get(type(value), type(value).__name__)


def b64encode(data: bytes) -> str:
    """Standard base64 with padding (SPEC section 1)."""
    return base64.b64encode(data).decode("ascii")


def b64decode(text: Any, what: str) -> bytes:
    """Decode canonical standard base64: padding required, no stray bits or characters."""
    if not isinstance(text, str):
        fail(what, f"expected a base64 string, got {type(text).__name__}")
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        fail(what, f"not valid base64 ({exc})")
    if base64.b64encode(data).decode("ascii") != text:
        fail(what, "not canonical base64")
    return data


def hex_decode(text: Any, what: str, length: int | None = None) -> bytes:
    """Decode lowercase hex (of ``length`` bytes, if given)."""
    if not isinstance(text, str):
        fail(what, f"expected a hex string, got {type(text).__name__}")
    try:
        data = bytes.fromhex(text)
    except ValueError:
        fail(what, "not valid hex")
    if data.hex() != text:
        fail(what, "hex must be lowercase with no separators")
    if length is not None and len(data) != length:
        fail(what, f"expected {length} bytes of hex, got {len(data)}")
    return data


def require_canonical(data: bytes, obj: Any, what: str) -> None:
    """Reject ``data`` unless it is the canonical encoding of ``obj`` (a value with a
    MapPairs, which packb does not write, never is)."""
    try:
        again = packb(obj)
    except TypeError:
        fail(what, "not in canonical msgpack encoding")
    if again != data:
        fail(what, "not in canonical msgpack encoding")


#: One item of a batch (SPEC section 7): an envelope, or a sealed record's
#: ``(envelope, salt, payload_bytes)``.
BatchItem = bytes | tuple[bytes, bytes, bytes]


def split_batch(data: bytes, what: str, max_items: int) -> list[BatchItem]:
    """The items of a msgpack batch (``POST /v1/records``, record gossip), decoding nothing
    else: each item is a ``bin`` envelope or an array of exactly three ``bin`` —
    ``[envelope, salt, payload_bytes]``, a sealed record with its pair (SPEC section 10).

    Reads only array headers, type bytes and lengths: an item of any other shape is refused
    before anything is built, so memory stays O(len(data)) whatever ``data`` holds (a 16 MiB
    array of empty maps would otherwise become 16 million dicts). More than ``max_items``
    items is a TooLargeError, read from the header alone.
    """
    size = len(data)
    first = data[0] if data else -1
    if 0x90 <= first <= 0x9F:
        count, pos = first & 0x0F, 1
    elif first in (0xDC, 0xDD) and size >= (3 if first == 0xDC else 5):
        pos = 3 if first == 0xDC else 5
        count = int.from_bytes(data[1:pos], "big")
    else:
        fail(what, "expected a msgpack array")
    if count > max_items:
        raise TooLargeError(f"{what}: {count} items exceed the limit of {max_items}")
    items: list[BatchItem] = []
    append = items.append
    # Per item this runs on every node for every record (submission and gossip), three
    # bins per sealed record: an error's labels are formatted only when one is raised.
    for i in range(count):
        if pos < size and data[pos] == 0x93:  # [envelope, salt, payload_bytes]
            envelope, pos = _bin_at(data, pos + 1, what, i, "[0]")
            if pos + 34 <= size and data[pos] == 0xC4 and data[pos + 1] == 32:
                salt, pos = data[pos + 2:pos + 34], pos + 34  # the usual 32-byte salt
            else:
                salt, pos = _bin_at(data, pos, what, i, "[1]")
            payload, pos = _bin_at(data, pos, what, i, "[2]")
            append((envelope, salt, payload))
        else:
            envelope, pos = _bin_at(data, pos, what, i, "", "bin or [bin, bin, bin]")
            append(envelope)
    if pos != size:
        fail(what, "trailing bytes after the array")
    return items


def split_bin_array(data: bytes, what: str, max_items: int) -> list[bytes]:
    """The items of a msgpack array of ``bin`` only (``split_batch`` without pairs)."""
    items = split_batch(data, what, max_items)
    for i, item in enumerate(items):
        if type(item) is not bytes:
            fail(f"{what}[{i}]", "expected bin")
    return items  # type: ignore[return-value]


def bin_span(data: bytes, pos: int) -> tuple[int, int, bool] | None:
    """The msgpack ``bin`` whose header starts at ``pos``, read from the bytes without
    decoding: (start, end, smallest) — its bytes are ``data[start:end]`` (``end`` is not
    checked against ``len(data)``), ``smallest`` iff the header is the shortest for the
    length (what ``packb`` writes). None if no bin header starts there."""
    if pos + 1 >= len(data):
        return None
    marker = data[pos]
    if marker == 0xC4:
        return pos + 2, pos + 2 + data[pos + 1], True
    if marker == 0xC5:
        length = int.from_bytes(data[pos + 1:pos + 3], "big")
        return pos + 3, pos + 3 + length, length > 0xFF
    if marker == 0xC6:
        length = int.from_bytes(data[pos + 1:pos + 5], "big")
        return pos + 5, pos + 5 + length, length > 0xFFFF
    return None


def _bin_at(data: bytes, pos: int, what: str, index: int, part: str,
            expected: str = "bin") -> tuple[bytes, int]:
    """The ``bin`` at ``pos`` and the position after it (``what[index]part`` names it in
    an error)."""
    size = len(data)
    kind = data[pos] if pos < size else 0
    if kind == 0xC4:  # the usual bin 8 and bin 16 without a slice and int.from_bytes
        start = pos + 2
        end = start + data[pos + 1] if start <= size else size + 1
    elif kind == 0xC5:
        start = pos + 3
        end = start + (data[pos + 1] << 8 | data[pos + 2]) if start <= size else size + 1
    elif kind == 0xC6:
        start = pos + 5
        end = start + int.from_bytes(data[pos + 1:start], "big")
    else:
        fail(f"{what}[{index}]{part}",
             f"expected {expected}" if pos < size else "the array is truncated")
    if end > size:
        fail(f"{what}[{index}]{part}", "truncated")
    return data[start:end], end

