"""MessagePack encoding (SPEC section 1) and the strict decoders every wire type uses.

``packb`` is the one encoder: ``use_bin_type=True`` and the library's smallest encodings,
so the arrays that nodes hash or sign are canonical by construction. ``unpack_exact``
decodes one whole msgpack value and rejects trailing bytes, ext types, timestamps,
non-string map keys in protocol objects and repeated map keys. The ``expect_*`` helpers
check one field's type and name it in the error.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any, NoReturn

import msgpack

from ledger.errors import DecodeError


def packb(obj: Any) -> bytes:
    """Encode ``obj`` as the SPEC's canonical msgpack."""
    return msgpack.packb(obj, use_bin_type=True)  # type: ignore[no-any-return]


def reject_ext(code: int, data: bytes) -> NoReturn:
    """ext_hook for msgpack: no ext type is part of the protocol."""
    raise DecodeError(f"msgpack ext type {code} is not allowed")


def pairs_to_dict(pairs: list[tuple[Any, Any]]) -> dict[Any, Any]:
    """object_pairs_hook for msgpack: build a dict, rejecting a repeated key."""
    out: dict[Any, Any] = {}
    for key, value in pairs:
        try:
            if key in out:
                raise DecodeError(f"key {key!r} appears twice in one map")
        except TypeError as exc:
            raise DecodeError(f"map key of type {type(key).__name__} is not hashable") from exc
        out[key] = value
    return out


def unpack_exact(data: bytes, what: str, *, max_len: int | None = None) -> Any:
    """Decode exactly one msgpack value filling ``data``; name ``what`` in errors.

    Maps come back as dicts (a repeated key is an error); arrays as lists; ``bin`` as
    bytes and ``str`` as str (invalid UTF-8 is an error). Any ext type, including the
    msgpack timestamp, is an error.
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise DecodeError(f"{what}: expected bytes, got {type(data).__name__}")
    if max_len is not None and len(data) > max_len:
        raise DecodeError(f"{what}: {len(data)} bytes exceeds the limit of {max_len}")
    try:
        return msgpack.unpackb(
            data,
            raw=False,
            use_list=True,
            strict_map_key=False,
            object_pairs_hook=pairs_to_dict,
            ext_hook=reject_ext,
            timestamp=0,
        )
    except DecodeError as exc:
        raise DecodeError(f"{what}: {exc}") from exc
    except msgpack.ExtraData as exc:
        raise DecodeError(f"{what}: trailing bytes after the msgpack value") from exc
    except ValueError as exc:  # includes UnpackValueError, UnicodeDecodeError, FormatError
        raise DecodeError(f"{what}: not valid msgpack ({exc})") from exc
    except Exception as exc:  # msgpack raises a zoo of types for truncated/garbage input
        raise DecodeError(f"{what}: not valid msgpack ({type(exc).__name__}: {exc})") from exc


def loads_json(data: str | bytes) -> Any:
    """Parse JSON strictly: a repeated key in any object is a DecodeError, like in msgpack."""
    try:
        return json.loads(data, object_pairs_hook=pairs_to_dict)
    except DecodeError:
        raise
    except (ValueError, UnicodeDecodeError) as exc:
        raise DecodeError(f"not valid JSON ({exc})") from exc


def fail(what: str, message: str) -> NoReturn:
    """Raise a DecodeError naming the field."""
    raise DecodeError(f"{what}: {message}")


def expect_array(value: Any, what: str, length: int | None = None) -> list[Any]:
    """Return ``value`` if it is an array (of ``length`` items, if given)."""
    if type(value) is not list:
        fail(what, f"expected an array, got {_kind(value)}")
    if length is not None and len(value) != length:
        fail(what, f"expected an array of {length} items, got {len(value)}")
    return value


def expect_bytes(value: Any, what: str, length: int | None = None) -> bytes:
    """Return ``value`` if it is a bin (of exactly ``length`` bytes, if given)."""
    if type(value) is not bytes:
        fail(what, f"expected bin, got {_kind(value)}")
    if length is not None and len(value) != length:
        fail(what, f"expected {length} bytes, got {len(value)}")
    return value


def expect_int(value: Any, what: str, lo: int = 0, hi: int = 2**64 - 1) -> int:
    """Return ``value`` if it is an integer in ``[lo, hi]`` (booleans are not integers)."""
    if type(value) is not int:
        fail(what, f"expected an integer, got {_kind(value)}")
    if not lo <= value <= hi:
        fail(what, f"{value} is outside [{lo}, {hi}]")
    return value


def expect_str(value: Any, what: str) -> str:
    """Return ``value`` if it is a str."""
    if type(value) is not str:
        fail(what, f"expected str, got {_kind(value)}")
    return value


def _kind(value: Any) -> str:
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
    """Reject ``data`` unless it is the canonical encoding of ``obj``."""
    if packb(obj) != data:
        fail(what, "not in canonical msgpack encoding")


