"""Signed read requests: HTTP Message Signatures (RFC 9421) as SPEC section 10 fixes them.

A member proves who reads by signing, with its Ed25519 key, exactly the four derived
components ``("@method" "@authority" "@path" "@query")`` with the parameters ``created``
(integer seconds), ``keyid`` (its public key, 64 lowercase hex) and ``alg="ed25519"``::

    Signature-Input: sig1=("@method" "@authority" "@path" "@query");created=1767225600;\
keyid="49e4…8f6e";alg="ed25519"
    Signature: sig1=:<base64 of the 64-byte signature>:

The signature base (RFC 9421 section 2.5) is one line per component, then the
``@signature-params`` line; ``@query`` is ``?`` followed by the query, so ``?`` alone when
there is none. The conformance vector is ``read_signature`` in the v1.1 manifest.

Only this profile is accepted, parsed strictly: each header holds exactly one dictionary
member, with the same label in both; the components are the four above in that order; the
parameters are ``created``, ``keyid`` and ``alg``, each once (in any order, as the
signer wrote them: the signed ``@signature-params`` line is the header's own text), and
nothing else. Components must be printable ASCII (no spaces, no control characters), so
a newline cannot forge a line of the base.

Pure: no I/O and no clock — the verifier passes ``now``. The one Ed25519 rule is
``ledger.crypto.is_valid_signature``.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping
from urllib.parse import urlsplit

from ledger.crypto import PrivateKey, is_valid_signature
from ledger.errors import ReadSignatureError

WINDOW = 300
"""Seconds a ``created`` may differ from the verifier's clock, either way (SPEC 10)."""

LABEL = "sig1"
COMPONENTS = ("@method", "@authority", "@path", "@query")
ALG = "ed25519"

_COMPONENT_LIST = "(" + " ".join(f'"{c}"' for c in COMPONENTS) + ")"
_KEY = r"[a-z*][a-z0-9_.*-]{0,63}"  # RFC 8941 sf-key, with a length bound
_PARAM = re.compile(r';(created|keyid|alg)=([0-9]{1,15}|"[\x20\x21\x23-\x5b\x5d-\x7e]*")')
_INPUT = re.compile(rf"({_KEY})=(\([^()]*\))((?:;[^;]*)*)")
_SIGNATURE = re.compile(rf"({_KEY})=:([A-Za-z0-9+/]*={{0,2}}):")
_METHOD = re.compile(r"[A-Z]{1,16}")
_VISIBLE = re.compile(r"[\x21-\x7e]*")  # printable ASCII, no space, no CR/LF/NUL
_HEX_KEY = re.compile(r"[0-9a-f]{64}")
_MAX_HEADER = 1024


def _component_error(name: str) -> ReadSignatureError:
    return ReadSignatureError(f"{name}: not printable ASCII without spaces or control characters")


def signature_base(method: str, authority: str, path: str, query: str,
                   signature_params: str) -> bytes:
    """The RFC 9421 signature base for the four covered components.

    ``query`` is the query string without its ``?`` (empty when there is none);
    ``signature_params`` is the inner list with its parameters, as in Signature-Input.
    Raises ReadSignatureError for a component that could forge a line (non-ASCII,
    control characters, spaces) or is not of its shape.
    """
    if not _METHOD.fullmatch(method):
        raise ReadSignatureError("@method: not an upper-case method token")
    if not authority or not _VISIBLE.fullmatch(authority):
        raise _component_error("@authority")
    if not path.startswith("/") or not _VISIBLE.fullmatch(path):
        raise _component_error("@path")
    if not _VISIBLE.fullmatch(query):
        raise _component_error("@query")
    if not _VISIBLE.fullmatch(signature_params.replace(" ", "!")):
        raise _component_error("@signature-params")
    lines = (
        f'"@method": {method}',
        f'"@authority": {authority.lower()}',
        f'"@path": {path}',
        f'"@query": ?{query}',
        f'"@signature-params": {signature_params}',
    )
    return "\n".join(lines).encode("ascii")


def signature_params(public_key: bytes, created: int) -> str:
    """The ``@signature-params`` value this library signs: components, created, keyid, alg."""
    if type(created) is not int or not 0 <= created < 10**15:
        raise ReadSignatureError("created: not a non-negative integer of at most 15 digits")
    return f'{_COMPONENT_LIST};created={created};keyid="{public_key.hex()}";alg="{ALG}"'


def split_url(url: str) -> tuple[str, str, str]:
    """(authority, path, query) of an absolute http(s) URL, as RFC 9421 derives them.

    The authority is lower-cased with the scheme's default port left out; the path is
    ``/`` when empty; the query is without its ``?``.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc or "@" in parts.netloc:
        raise ReadSignatureError("url: not an absolute http(s) URL without userinfo")
    authority = parts.netloc.lower()
    default = ":443" if parts.scheme == "https" else ":80"
    if authority.endswith(default):
        authority = authority[: -len(default)]
    return authority, parts.path or "/", parts.query


def sign_request(key: PrivateKey, method: str, url: str, created: int) -> dict[str, str]:
    """The ``Signature-Input`` and ``Signature`` headers signing a request to ``url``.

    The caller must send exactly ``url`` (already percent-encoded, as its HTTP library
    will put it on the wire) and pass ``created`` from its own clock.
    """
    authority, path, query = split_url(url)
    params = signature_params(key.public, created)
    base = signature_base(method, authority, path, query, params)
    signature = base64.b64encode(key.sign(base)).decode("ascii")
    return {"Signature-Input": f"{LABEL}={params}", "Signature": f"{LABEL}=:{signature}:"}


def _header(headers: Mapping[str, str], name: str) -> str:
    values = [v for k, v in headers.items() if k.lower() == name]
    if not values:
        raise ReadSignatureError(f"{name}: missing")
    if len(values) > 1:
        raise ReadSignatureError(f"{name}: given more than once")
    value = values[0].strip(" \t")
    if len(value) > _MAX_HEADER or not value.isascii():
        raise ReadSignatureError(f"{name}: too long or not ASCII")
    return value


def _parse_params(text: str) -> tuple[int, bytes]:
    """(created, keyid) from ``;created=…;keyid="…";alg="…"``, each exactly once."""
    seen: dict[str, str] = {}
    position = 0
    while position < len(text):
        match = _PARAM.match(text, position)
        if match is None:
            raise ReadSignatureError("Signature-Input: a parameter other than created, "
                                     "keyid, alg, or a malformed value")
        name, value = match.group(1), match.group(2)
        if name in seen:
            raise ReadSignatureError(f"Signature-Input: parameter {name} given twice")
        seen[name] = value
        position = match.end()
    missing = {"created", "keyid", "alg"} - seen.keys()
    if missing:
        raise ReadSignatureError(f"Signature-Input: missing {', '.join(sorted(missing))}")
    if seen["alg"] != f'"{ALG}"':
        raise ReadSignatureError(f"Signature-Input: alg is not \"{ALG}\"")
    created = seen["created"]
    if created.startswith('"') or (len(created) > 1 and created.startswith("0")):
        raise ReadSignatureError("Signature-Input: created is not an integer")
    keyid = seen["keyid"]
    if keyid.startswith('"'):
        keyid = keyid[1:-1]
    else:
        raise ReadSignatureError("Signature-Input: keyid is not a string")
    if not _HEX_KEY.fullmatch(keyid):
        raise ReadSignatureError("Signature-Input: keyid is not 64 lowercase hex digits")
    return int(created), bytes.fromhex(keyid)


def verify_request(method: str, authority: str, path: str, query: str,
                   headers: Mapping[str, str], now: int, window: int = WINDOW) -> bytes:
    """The signer's public key (the ``keyid``) if the request's signature holds.

    ``authority`` is the request's Host; ``query`` its query string without the ``?``;
    ``headers`` its header fields (names matched case-insensitively). Raises
    ReadSignatureError for a missing or malformed Signature-Input or Signature, other
    components, another alg, a bad keyid, a ``created`` more than ``window`` seconds from
    ``now`` either way, or a signature that does not verify.
    """
    signature_input = _header(headers, "signature-input")
    signature_field = _header(headers, "signature")
    match = _INPUT.fullmatch(signature_input)
    if match is None:
        raise ReadSignatureError("Signature-Input: not one label=(components);params")
    label, components, param_text = match.group(1), match.group(2), match.group(3)
    params = components + param_text
    if components != _COMPONENT_LIST:
        raise ReadSignatureError(
            f"Signature-Input: components are not exactly {_COMPONENT_LIST}")
    created, keyid = _parse_params(param_text)
    sig_match = _SIGNATURE.fullmatch(signature_field)
    if sig_match is None:
        raise ReadSignatureError("Signature: not one label=:base64:")
    if sig_match.group(1) != label:
        raise ReadSignatureError("Signature: label differs from Signature-Input's")
    try:
        signature = base64.b64decode(sig_match.group(2), validate=True)
    except binascii.Error as exc:
        raise ReadSignatureError("Signature: not base64") from exc
    if len(signature) != 64 or base64.b64encode(signature).decode() != sig_match.group(2):
        raise ReadSignatureError("Signature: not the base64 of 64 bytes")
    if abs(now - created) > window:
        raise ReadSignatureError(
            f"Signature-Input: created {created} is more than {window} s from now ({now})")
    base = signature_base(method, authority, path, query, params)
    if not is_valid_signature(keyid, base, signature):
        raise ReadSignatureError("Signature: does not verify")
    return keyid
