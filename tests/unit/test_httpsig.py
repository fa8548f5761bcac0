"""Read signatures (SPEC section 10, RFC 9421): the v1.1 ``read_signature`` vector byte for
byte, the time window at its edges, every refusal, replay on another request, injection
through components, and a sign→verify round trip over random paths and queries."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger.crypto import PrivateKey
from ledger.errors import LedgerError, ReadSignatureError, ValidationError
from ledger.httpsig import sign_request, signature_base, split_url, verify_request
from node.client import AsyncLedgerClient, LedgerClient

VECTOR: dict[str, Any] = json.loads(
    (Path(__file__).parents[1] / "vectors" / "v1.1" / "manifest.json").read_text()
)["read_signature"]
KEY = PrivateKey.from_seed(bytes.fromhex(VECTOR["key_seed"]))
METHOD, URL = VECTOR["request"].split(" ")
CREATED = 1767225600
AUTHORITY, PATH, QUERY = split_url(URL)
HEADERS = {"Signature-Input": VECTOR["Signature-Input"], "Signature": VECTOR["Signature"]}


def verify(headers: dict[str, str], *, method: str = METHOD, authority: str = AUTHORITY,
           path: str = PATH, query: str = QUERY, now: int = CREATED) -> bytes:
    return verify_request(method, authority, path, query, headers, now)


def refused(headers: dict[str, str], match: str, **kw: Any) -> None:
    with pytest.raises(ReadSignatureError, match=match) as info:
        verify(headers, **kw)
    assert info.value.code == "bad_read_signature"
    assert isinstance(info.value, ValidationError)


def resign(signature_input: str, key: PrivateKey = KEY) -> dict[str, str]:
    """Headers with ``signature_input`` and a valid signature over the base it implies."""
    params = signature_input.split("=", 1)[1]
    base = signature_base(METHOD, AUTHORITY, PATH, QUERY, params)
    sig = base64.b64encode(key.sign(base)).decode()
    return {"Signature-Input": signature_input, "Signature": f"sig1=:{sig}:"}


# -- the vector ---------------------------------------------------------------------------

def test_vector_base_is_byte_for_byte() -> None:
    assert (AUTHORITY, PATH, QUERY) == ("127.0.0.1:8001", PATH, "")
    params = VECTOR["Signature-Input"].removeprefix("sig1=")
    base = signature_base(METHOD, AUTHORITY, PATH, QUERY, params)
    assert base == VECTOR["signature_base"].encode()
    assert base.split(b"\n")[3] == b'"@query": ?'


def test_vector_signing_reproduces_both_headers() -> None:
    assert sign_request(KEY, METHOD, URL, CREATED) == HEADERS


@pytest.mark.parametrize("delta", [0, 300, -300, 1, -1])
def test_vector_verifies_within_window(delta: int) -> None:
    assert verify(HEADERS, now=CREATED + delta) == KEY.public
    assert KEY.public.hex() in VECTOR["Signature-Input"]


@pytest.mark.parametrize("delta", [301, -301, 10**6])
def test_vector_refused_outside_window(delta: int) -> None:
    refused(HEADERS, "more than 300 s", now=CREATED + delta)


def test_header_names_case_insensitive() -> None:
    lower = {k.lower(): v for k, v in HEADERS.items()}
    assert verify(lower) == KEY.public


# -- replay on another request ------------------------------------------------------------

@pytest.mark.parametrize("field,value", [
    ("method", "HEAD"), ("method", "POST"),
    ("authority", "127.0.0.1:8002"), ("authority", "node2.example"),
    ("path", PATH[:-1] + "c"), ("path", "/v1/records"),
    ("query", "payload=1"), ("query", "a"),
])
def test_replay_on_another_request_refused(field: str, value: str) -> None:
    refused(HEADERS, "does not verify", **{field: value})


def test_authority_case_is_normalised() -> None:
    headers = sign_request(KEY, "GET", "http://NODE.example:8001/v1/status", CREATED)
    assert verify_request("GET", "node.example:8001", "/v1/status", "", headers, CREATED)
    assert split_url("https://a.example:443/x?") == ("a.example", "/x", "")
    assert split_url("http://a.example:80") == ("a.example", "/", "")


def test_another_key_refused() -> None:
    other = PrivateKey.from_seed(b"\x01" * 32)
    forged = resign(VECTOR["Signature-Input"], key=other)  # keyid still KEY's
    refused(forged, "does not verify")


# -- missing or malformed headers ---------------------------------------------------------

@pytest.mark.parametrize("drop", ["Signature-Input", "Signature"])
def test_missing_header_refused(drop: str) -> None:
    refused({k: v for k, v in HEADERS.items() if k != drop}, "missing")


def test_header_given_twice_refused() -> None:
    refused({**HEADERS, "signature": HEADERS["Signature"]}, "more than once")


SI = VECTOR["Signature-Input"]
KEYID = KEY.public.hex()


@pytest.mark.parametrize("signature_input,match", [
    ("", "not one label"),
    ("sig1", "not one label"),
    (SI + ", sig2=" + SI[5:], "parameter other than|malformed"),
    (SI.replace("sig1=", "Sig1="), "not one label"),
    (SI.replace("sig1=", "sig1 = "), "not one label"),
    (SI.replace('("@method" "@authority" "@path" "@query")',
                '("@method" "@authority" "@path")'), "components"),
    (SI.replace('("@method" "@authority" "@path" "@query")',
                '("@authority" "@method" "@path" "@query")'), "components"),
    (SI.replace('"@query")', '"@query" "@target-uri")'), "components"),
    (SI.replace('"@query")', '"@query";bs)'), "components"),
    (SI.replace('("@method"', '( "@method"'), "components"),
    (SI.replace('alg="ed25519"', 'alg="rsa-pss-sha512"'), "alg is not"),
    (SI.replace('alg="ed25519"', 'alg="ED25519"'), "alg is not"),
    (SI.replace(';alg="ed25519"', ""), "missing alg"),
    (SI.replace(f';keyid="{KEYID}"', ""), "missing keyid"),
    (SI.replace(";created=1767225600", ""), "missing created"),
    (SI + ";created=1767225600", "given twice"),
    (SI + ';alg="ed25519"', "given twice"),
    (SI + ";expires=1767225900", "parameter other than"),
    (SI + ';nonce="x"', "parameter other than"),
    (SI + ';tag="x"', "parameter other than"),
    (SI.replace(KEYID, KEYID.upper()), "64 lowercase hex"),
    (SI.replace(KEYID, KEYID[:-2]), "64 lowercase hex"),
    (SI.replace(f'"{KEYID}"', KEYID[:15]), "not a string|malformed"),
    (SI.replace("created=1767225600", 'created="1767225600"'), "not an integer"),
    (SI.replace("created=1767225600", "created=01767225600"), "not an integer"),
    (SI.replace("created=1767225600", "created=-1"), "malformed"),
    (SI.replace("created=1767225600", "created=1767225600.0"), "malformed"),
    (SI.replace("created=1767225600", "created=1234567890123456"), "malformed"),
    (SI + "\r\nX-Evil: 1", "malformed|not one label"),
])
def test_malformed_signature_input_refused(signature_input: str, match: str) -> None:
    refused({"Signature-Input": signature_input, "Signature": HEADERS["Signature"]}, match)


def test_reordered_parameters_are_signed_as_written() -> None:
    """The signed @signature-params line is the header's own text: a signer may order the
    parameters differently, and a verifier must not rebuild them in its own order."""
    reordered = (f'sig1=("@method" "@authority" "@path" "@query");alg="ed25519";'
                 f'keyid="{KEYID}";created={CREATED}')
    assert verify(resign(reordered)) == KEY.public
    moved = {"Signature-Input": reordered, "Signature": HEADERS["Signature"]}
    refused(moved, "does not verify")


SIG = HEADERS["Signature"].removeprefix("sig1=:").removesuffix(":")


@pytest.mark.parametrize("signature,match", [
    ("", "not one label"),
    (f"sig2=:{SIG}:", "label differs"),
    (f"sig1={SIG}", "not one label"),
    (f"sig1=:{SIG}:, sig1=:{SIG}:", "not one label"),
    (f"sig1=:{SIG[:-4]}:", "64 bytes"),
    (f"sig1=:{SIG.rstrip('=')}:", "not base64|64 bytes"),
    (f"sig1=:{SIG[:-3]}B==:", "64 bytes"),  # non-canonical trailing bits
    (f"sig1=:{SIG[:10]}!{SIG[11:]}:", "not one label"),
    (f"sig1=:{base64.b64encode(bytes(64)).decode()}:", "does not verify"),
])
def test_malformed_signature_refused(signature: str, match: str) -> None:
    refused({"Signature-Input": HEADERS["Signature-Input"], "Signature": signature}, match)


# -- components that could forge a line of the base --------------------------------------

@pytest.mark.parametrize("field,value", [
    ("path", PATH + '\n"@query": ?'),
    ("path", PATH + "\r"),
    ("path", PATH + " x"),
    ("path", "/v1/r\u00e9cords"),
    ("path", "no-slash"),
    ("query", 'a\n"@signature-params": ()'),
    ("query", "q=\u00fc"),
    ("query", "a\x00"),
    ("authority", "127.0.0.1:8001\nx"),
    ("authority", ""),
    ("authority", "h\u00f6st"),
    ("method", "get"),
    ("method", "GET\n"),
    ("method", ""),
])
def test_injected_or_non_ascii_component_refused(field: str, value: str) -> None:
    refused(HEADERS, r"^@(path|query|authority|method): ", **{field: value})


def test_non_ascii_header_refused() -> None:
    refused({"Signature-Input": SI.replace(KEYID, "\u00e9" * 64),
             "Signature": HEADERS["Signature"]}, "not ASCII")


def test_sign_refuses_what_it_could_not_send() -> None:
    with pytest.raises(ReadSignatureError):
        sign_request(KEY, "GET", "http://h/v1/r\u00e9cords", CREATED)
    with pytest.raises(ReadSignatureError):
        sign_request(KEY, "GET", "/v1/status", CREATED)
    with pytest.raises(ReadSignatureError):
        sign_request(KEY, "GET", "http://user@h/v1/status", CREATED)
    with pytest.raises(ReadSignatureError):
        sign_request(KEY, "GET", "http://h/", -1)


# -- round trip ---------------------------------------------------------------------------

@settings(max_examples=150, deadline=None)
@given(path=st.text(max_size=40), query=st.text(max_size=40),
       created=st.integers(0, 10**12), skew=st.integers(-300, 300),
       method=st.sampled_from(["GET", "HEAD"]))
def test_round_trip(path: str, query: str, created: int, skew: int, method: str) -> None:
    path_enc = "/" + quote(path, safe="/")
    query_enc = quote(query, safe="=&")
    url = f"http://127.0.0.1:8001{path_enc}" + (f"?{query_enc}" if query_enc else "")
    headers = sign_request(KEY, method, url, created)
    assert verify_request(method, "127.0.0.1:8001", path_enc, query_enc, headers,
                          created + skew) == KEY.public
    with pytest.raises(ReadSignatureError):
        verify_request(method, "127.0.0.1:8001", path_enc, query_enc + "x", headers, created)


# -- the SDK signs every GET it sends (node/client.py) -------------------------------------

def _verified(requests: list[httpx.Request]) -> list[bytes]:
    """Each captured request verified as a node would: Host, raw path and query as sent."""
    now = int(time.time())
    out = []
    for req in requests:
        raw_path, _, raw_query = req.url.raw_path.decode("ascii").partition("?")
        out.append(verify_request(req.method, req.headers["host"], raw_path, raw_query,
                                  req.headers, now))
    return out


def _capture() -> tuple[list[httpx.Request], httpx.MockTransport]:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.method == "POST":
            return httpx.Response(400, json={"type": "x", "code": "x", "detail": "x"})
        return httpx.Response(200, json={"height": 1})

    return seen, httpx.MockTransport(handler)


def _drive(client: Any) -> None:
    for op in (lambda: client.status(), lambda: client.config(version=3),
               lambda: client.history("line 7/ü?&x", order="desc"),
               lambda: client.log_inclusion(3, 9)):
        # the fake node's answers need not satisfy each operation: the request counts
        with contextlib.suppress(LedgerError):
            op()


def test_sdk_signs_gets_with_read_identity() -> None:
    seen, transport = _capture()
    with LedgerClient("http://127.0.0.1:8001", http=httpx.Client(transport=transport),
                      read_identity=KEY) as client:
        _drive(client)
    assert len(seen) >= 4 and all(r.method == "GET" for r in seen)
    assert any(r.url.query for r in seen)
    assert _verified(seen) == [KEY.public] * len(seen)


def test_async_sdk_signs_gets_with_read_identity() -> None:
    seen, transport = _capture()

    async def main() -> None:
        async with AsyncLedgerClient("http://127.0.0.1:8001", read_identity=KEY,
                                     http=httpx.AsyncClient(transport=transport)) as client:
            await client.status()
            with contextlib.suppress(LedgerError):
                await client.history("line 7/ü?&x", order="desc")

    asyncio.run(main())
    assert len(seen) >= 2
    assert _verified(seen) == [KEY.public] * len(seen)


def test_sdk_without_read_identity_does_not_sign() -> None:
    seen, transport = _capture()
    with LedgerClient("http://127.0.0.1:8001", http=httpx.Client(transport=transport)) as c:
        _drive(c)
    assert seen and not any("signature" in r.headers for r in seen)
