"""ledger.crypto against published Ed25519 vectors (RFC 8032, Wycheproof, ed25519-speccheck),
plus PEM key files and the length guards of is_valid_signature.

The vectors live in tests/vectors/ed25519_*.json; each file names its source. Bit positions in
this module are little-endian over the byte string: bit k is bit (k % 8) of byte k // 8, so bit
255 of a 32-byte point encoding is the sign of x (the convention of Wycheproof's comments).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, rsa, x25519
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from ledger.crypto import (
    PrivateKey,
    is_valid_signature,
    read_key_file,
    verify_signature,
    write_key_file,
)
from ledger.errors import KeyFileError, LedgerError, SignatureError

VECTORS_DIR = Path(__file__).parent.parent / "vectors"
VECTOR_FILES = ["ed25519_rfc8032.json", "ed25519_wycheproof.json", "ed25519_speccheck.json"]


def _load(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((VECTORS_DIR / name).read_text())
    return data


RFC8032 = _load("ed25519_rfc8032.json")
WYCHEPROOF = _load("ed25519_wycheproof.json")
SPECCHECK = _load("ed25519_speccheck.json")

# Order of the prime-order subgroup, and the field prime.
L = 2**252 + 27742317777372353535851937790883648493
P = 2**255 - 19

PASSPHRASE = b"correct horse battery staple"


def _flip(data: bytes, bit: int) -> bytes:
    out = bytearray(data)
    out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


def _le(data: bytes) -> int:
    return int.from_bytes(data, "little")


def _h(value: str) -> bytes:
    return bytes.fromhex(value)


def test_vector_files_are_small_and_name_their_source() -> None:
    for name in VECTOR_FILES:
        path = VECTORS_DIR / name
        assert path.stat().st_size < 60_000, name
        assert json.loads(path.read_text())["source"], name


# --- RFC 8032 section 7.1 -------------------------------------------------------------------

RFC_TESTS = RFC8032["tests"]
RFC_IDS = [t["name"] for t in RFC_TESTS]


def test_rfc8032_file_holds_the_five_section_7_1_tests() -> None:
    assert RFC_IDS == ["TEST 1", "TEST 2", "TEST 3", "TEST 1024", "TEST SHA(abc)"]
    lengths = [len(_h(t["message"])) for t in RFC_TESTS]
    assert lengths == [0, 1, 2, 1023, 64]
    assert _h(RFC_TESTS[4]["message"]) == hashlib.sha512(b"abc").digest()


@pytest.mark.parametrize("vector", RFC_TESTS, ids=RFC_IDS)
def test_rfc8032_public_key_from_seed(vector: dict[str, str]) -> None:
    key = PrivateKey.from_seed(_h(vector["secret_key"]))
    assert key.public == _h(vector["public_key"])
    assert key.seed() == _h(vector["secret_key"])


@pytest.mark.parametrize("vector", RFC_TESTS, ids=RFC_IDS)
def test_rfc8032_signature_is_deterministic(vector: dict[str, str]) -> None:
    key = PrivateKey.from_seed(_h(vector["secret_key"]))
    message = _h(vector["message"])
    assert key.sign(message) == _h(vector["signature"])
    assert key.sign(message) == key.sign(message)


@pytest.mark.parametrize("vector", RFC_TESTS, ids=RFC_IDS)
def test_rfc8032_signature_verifies(vector: dict[str, str]) -> None:
    assert is_valid_signature(
        _h(vector["public_key"]), _h(vector["message"]), _h(vector["signature"])
    )


# R occupies bits 0..255 of the signature (255 = sign of x), S bits 256..511.
SIG_BITS = [0, 1, 7, 100, 200, 254, 255, 256, 257, 300, 400, 500, 508, 509, 510, 511]
PK_BITS = [0, 1, 8, 100, 200, 254, 255]


@pytest.mark.parametrize("bit", SIG_BITS)
@pytest.mark.parametrize("vector", RFC_TESTS, ids=RFC_IDS)
def test_rfc8032_flipped_signature_bit_is_rejected(vector: dict[str, str], bit: int) -> None:
    signature = _flip(_h(vector["signature"]), bit)
    assert not is_valid_signature(_h(vector["public_key"]), _h(vector["message"]), signature)


@pytest.mark.parametrize("bit", PK_BITS)
@pytest.mark.parametrize("vector", RFC_TESTS, ids=RFC_IDS)
def test_rfc8032_flipped_public_key_bit_is_rejected(vector: dict[str, str], bit: int) -> None:
    public_key = _flip(_h(vector["public_key"]), bit)
    assert not is_valid_signature(public_key, _h(vector["message"]), _h(vector["signature"]))


def _message_flips() -> Iterator[Any]:
    for vector in RFC_TESTS:
        size = len(_h(vector["message"])) * 8
        if size:
            for bit in sorted({0, 7, size // 2, size - 1}):
                yield pytest.param(vector, bit, id=f"{vector['name']}-bit{bit}")


@pytest.mark.parametrize(("vector", "bit"), list(_message_flips()))
def test_rfc8032_flipped_message_bit_is_rejected(vector: dict[str, str], bit: int) -> None:
    message = _flip(_h(vector["message"]), bit)
    assert not is_valid_signature(_h(vector["public_key"]), message, _h(vector["signature"]))


# --- Wycheproof -----------------------------------------------------------------------------

WYCHE_TESTS = WYCHEPROOF["tests"]
WYCHE_BY_ID = {t["tcId"]: t for t in WYCHE_TESTS}


def _wycheproof_expected(case: dict[str, Any]) -> bool:
    if case["result"] == "acceptable":
        # Policy-dependent upstream; the file records libsodium's answer (none in this subset).
        return bool(case["libsodium"])
    return bool(case["result"] == "valid")


@pytest.mark.parametrize("case", WYCHE_TESTS, ids=[f"tc{t['tcId']}" for t in WYCHE_TESTS])
def test_wycheproof_case(case: dict[str, Any]) -> None:
    verdict = is_valid_signature(_h(case["pk"]), _h(case["msg"]), _h(case["sig"]))
    assert verdict is _wycheproof_expected(case), (case["tcId"], case["comment"], case["flags"])


def test_wycheproof_subset_covers_every_flag_and_both_results() -> None:
    assert 60 <= len(WYCHE_TESTS) <= 100
    assert len(WYCHE_BY_ID) == len(WYCHE_TESTS)
    flags = {flag for case in WYCHE_TESTS for flag in case["flags"]}
    assert flags == set(WYCHEPROOF["flag_notes"])
    results = {case["result"] for case in WYCHE_TESTS}
    assert results == {"valid", "invalid"}  # upstream has no "acceptable" Ed25519 case
    assert all("libsodium" in c for c in WYCHE_TESTS if c["result"] == "acceptable")
    for case in WYCHE_TESTS:
        assert set(case) >= {"tcId", "comment", "flags", "pk", "msg", "sig", "result"}


# Checks that the copied invalid cases are what their comments say: each is derived from a valid
# case (tc3: msg "Test", tc5: msg "123400") or built from special values, so a transcription
# error in the file would show up here even though any garbage signature is also "invalid".


def _rs(tc: int) -> tuple[bytes, bytes]:
    sig = _h(WYCHE_BY_ID[tc]["sig"])
    return sig[:32], sig[32:]


def test_wycheproof_length_cases_are_derived_from_tc3() -> None:
    base = _h(WYCHE_BY_ID[3]["sig"])
    pk = _h(WYCHE_BY_ID[3]["pk"])
    derived = {
        30: b"",
        31: base[:32],
        32: base[:-2],
        33: base + b"  ",
        34: base + pk,
        35: b"\x00" + base,
        36: base[:32] + b"\x00" + base[32:],
        37: base + b"\x00",
    }
    for tc, sig in derived.items():
        case = WYCHE_BY_ID[tc]
        assert _h(case["sig"]) == sig, tc
        assert case["msg"] == WYCHE_BY_ID[3]["msg"]
        assert not is_valid_signature(pk, _h(case["msg"]), sig)


def test_wycheproof_modified_r_bits_are_single_bit_flips_of_tc5() -> None:
    r5, _ = _rs(5)
    seen = []
    for tc in range(42, 60):
        case = WYCHE_BY_ID[tc]
        match = re.match(r"modified bit (\d+) in R", case["comment"])
        assert match, tc
        bit = int(match.group(1))
        r, _ = _rs(tc)
        assert r == _flip(r5, bit), tc
        assert case["msg"] == WYCHE_BY_ID[5]["msg"]
        seen.append(bit)
    assert seen == [0, 1, 2, 7, 8, 16, 31, 32, 63, 64, 97, 127, 240, 247, 248, 253, 254, 255]
    assert _rs(60)[0] == bytes(32)
    assert _rs(61)[0] == b"\xff" * 32
    assert _rs(62)[0] == bytes(b ^ 0xFF for b in r5)


def test_wycheproof_malleability_cases_add_to_tc3_s() -> None:
    r3, s3 = _rs(3)
    added = {63: L, 64: 2 * L, 65: 4 * L, 66: 8 * L, 67: 2**253, 68: 2**254, 69: 2**255, 70: P}
    for tc, delta in added.items():
        r, s = _rs(tc)
        assert r == r3, tc
        assert _le(s) == _le(s3) + delta, tc
        assert _le(s) >= L  # non-canonical S, whatever it reduces to
        assert WYCHE_BY_ID[tc]["flags"] == ["SignatureMalleability"]
    # s + kL is the same scalar: only the range check S < L rejects these.
    for tc in (63, 64, 65, 66):
        assert (_le(_rs(tc)[1]) - _le(s3)) % L == 0


def test_wycheproof_special_values_cover_every_r_s_pair() -> None:
    r_values = {0, 1, L, P}
    s_values = {0, 1, L - 1, L, P}
    pairs = set()
    for tc in range(10, 30):
        r, s = _rs(tc)
        assert _le(r) in r_values and _le(s) in s_values, tc
        pairs.add((_le(r), _le(s)))
    assert pairs == {(r, s) for r in r_values for s in s_values}


def test_wycheproof_s_bound_cases() -> None:
    assert _le(_rs(84)[1]) < L  # "S just under the bound": valid
    assert _le(_rs(85)[1]) >= L  # "S just above the bound": invalid
    r151, _ = _rs(151)
    assert r151 == b"\x01" + bytes(30) + b"\x80"  # y = 1 with the sign of x set


# --- ed25519-speccheck ----------------------------------------------------------------------

SPEC_CASES = SPECCHECK["cases"]
SPEC_IDS = [f"case{c['index']}" for c in SPEC_CASES]


def test_speccheck_file_holds_twelve_cases() -> None:
    assert [c["index"] for c in SPEC_CASES] == list(range(12))
    for case in SPEC_CASES:
        assert len(_h(case["message"])) == 32
        assert len(_h(case["pub_key"])) == 32
        assert len(_h(case["signature"])) == 64


@pytest.mark.parametrize("case", SPEC_CASES, ids=SPEC_IDS)
def test_speccheck_libsodium_outcome(case: dict[str, Any]) -> None:
    verdict = is_valid_signature(_h(case["pub_key"]), _h(case["message"]), _h(case["signature"]))
    assert verdict is case["libsodium_expected"], case["description"]
    # The upstream results table (LibSodium row) says the same for every case.
    assert case["libsodium_expected"] is case["upstream_libsodium"]


def test_speccheck_only_case_3_is_accepted() -> None:
    accepted = [c["index"] for c in SPEC_CASES if c["libsodium_expected"]]
    assert accepted == [3]


def test_speccheck_scalar_range_explains_the_rejections() -> None:
    for case in SPEC_CASES:
        s = _le(_h(case["signature"])[32:])
        if "S >= L" in case.get("libsodium_rejects_because", ""):
            assert s >= L, case["index"]
        else:
            assert s < L, case["index"]
    # Cases 4 and 5 have canonical S and no small-order point: the cofactorless equation
    # alone rejects them (a cofactored verifier accepts case 4).
    by_equation = [
        c["index"] for c in SPEC_CASES if "cofactorless" in c.get("libsodium_rejects_because", "")
    ]
    assert by_equation == [4, 5]


def test_speccheck_names_at_least_one_openssl_libsodium_split() -> None:
    assert SPECCHECK["openssl_accepts_libsodium_rejects"]


@pytest.mark.parametrize("index", SPECCHECK["openssl_accepts_libsodium_rejects"])
def test_openssl_accepts_what_libsodium_rejects(index: int) -> None:
    """Why SPEC section 1 pins one rule: the same signature splits two verifiers."""
    case = SPEC_CASES[index]
    public_key, message, signature = (
        _h(case["pub_key"]),
        _h(case["message"]),
        _h(case["signature"]),
    )
    assert case["upstream_pyca_openssl"] and not case["upstream_libsodium"]
    # cryptography (OpenSSL) accepts: verify() returns without raising InvalidSignature.
    Ed25519PublicKey.from_public_bytes(public_key).verify(signature, message)
    # libsodium, our one rule, rejects.
    assert is_valid_signature(public_key, message, signature) is False


# --- is_valid_signature: lengths and input types --------------------------------------------

_KEY = PrivateKey.from_seed(bytes(range(32)))
_MSG = b"ledger.record.v1\x00body"
_SIG = _KEY.sign(_MSG)


def test_valid_signature_baseline() -> None:
    assert is_valid_signature(_KEY.public, _MSG, _SIG) is True
    assert is_valid_signature(bytearray(_KEY.public), memoryview(_MSG), bytearray(_SIG)) is True


@pytest.mark.parametrize(
    ("public_key", "signature"),
    [
        pytest.param(_KEY.public[:31], _SIG, id="key31"),
        pytest.param(_KEY.public + b"\x00", _SIG, id="key33"),
        pytest.param(_KEY.public, _SIG[:63], id="sig63"),
        pytest.param(_KEY.public, _SIG + b"\x00", id="sig65"),
        pytest.param(b"", _SIG, id="key0"),
        pytest.param(_KEY.public, b"", id="sig0"),
        pytest.param(_KEY.public[:31], _SIG + b"\x00", id="key31-sig65"),
    ],
)
def test_wrong_lengths_are_false_not_errors(public_key: bytes, signature: bytes) -> None:
    # The length guard in is_valid_signature is load-bearing: PyNaCl's crypto_sign_open does not
    # check the key's length, and libsodium reads 32 bytes, so without the guard "key33" (a valid
    # key plus one byte) verifies, and "key31" makes libsodium read past the key.
    assert is_valid_signature(public_key, _MSG, signature) is False


def test_verify_signature_raises_signature_error_naming_the_object() -> None:
    assert verify_signature(_KEY.public, _MSG, _SIG, "record 1") is None
    with pytest.raises(SignatureError, match="record 1") as err:
        verify_signature(_KEY.public, _MSG + b"!", _SIG, "record 1")
    assert err.value.code == "bad_signature"


# --- PEM key files --------------------------------------------------------------------------

PLAIN_HEADER = b"-----BEGIN PRIVATE KEY-----\n"
ENCRYPTED_HEADER = b"-----BEGIN ENCRYPTED PRIVATE KEY-----\n"


@pytest.fixture
def umask_022() -> Iterator[None]:
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def test_pem_round_trip() -> None:
    key = PrivateKey.generate()
    pem = key.to_pem()
    assert pem.startswith(PLAIN_HEADER)
    loaded = PrivateKey.from_pem(pem)
    assert loaded.public == key.public
    assert loaded.seed() == key.seed()
    assert is_valid_signature(key.public, b"m", loaded.sign(b"m"))


def test_encrypted_pem_round_trip() -> None:
    key = PrivateKey.generate()
    pem = key.to_pem(PASSPHRASE)
    assert pem.startswith(ENCRYPTED_HEADER)
    assert key.seed().hex().encode() not in pem
    loaded = PrivateKey.from_pem(pem, PASSPHRASE)
    assert loaded.public == key.public
    assert loaded.seed() == key.seed()


def test_two_generated_keys_differ() -> None:
    assert PrivateKey.generate().public != PrivateKey.generate().public


def test_wrong_passphrase_is_a_key_file_error() -> None:
    pem = PrivateKey.generate().to_pem(PASSPHRASE)
    with pytest.raises(KeyFileError, match=r"^alice\.pem: .*wrong passphrase") as err:
        PrivateKey.from_pem(pem, b"not the passphrase", what="alice.pem")
    assert err.value.code == "bad_key_file"
    assert isinstance(err.value, LedgerError)


def test_missing_passphrase_is_a_key_file_error() -> None:
    pem = PrivateKey.generate().to_pem(PASSPHRASE)
    with pytest.raises(KeyFileError, match=r"^alice\.pem: .*encrypted"):
        PrivateKey.from_pem(pem, what="alice.pem")


def test_passphrase_for_an_unencrypted_key_is_a_key_file_error() -> None:
    pem = PrivateKey.generate().to_pem()
    with pytest.raises(KeyFileError, match="not encrypted"):
        PrivateKey.from_pem(pem, PASSPHRASE)


def _public_key_pem() -> bytes:
    public = Ed25519PrivateKey.generate().public_key()
    return public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"garbage\x00\xff", id="garbage"),
        pytest.param(PLAIN_HEADER + b"AAAA\n-----END PRIVATE KEY-----\n", id="bad-der"),
        pytest.param(_public_key_pem(), id="public-key"),
    ],
)
def test_garbage_is_a_key_file_error(data: bytes) -> None:
    with pytest.raises(KeyFileError, match=r"^k\.pem: not a readable PEM private key"):
        PrivateKey.from_pem(data, what="k.pem")


def _pkcs8(key: Any) -> bytes:
    pem: bytes = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return pem


OTHER_KEYS: dict[str, Callable[[], Any]] = {
    "rsa": lambda: rsa.generate_private_key(public_exponent=65537, key_size=1024),
    "ec-p256": lambda: ec.generate_private_key(ec.SECP256R1()),
    "ed448": ed448.Ed448PrivateKey.generate,
    "x25519": x25519.X25519PrivateKey.generate,
}


@pytest.mark.parametrize("kind", list(OTHER_KEYS))
def test_other_key_types_are_a_key_file_error(kind: str) -> None:
    pem = _pkcs8(OTHER_KEYS[kind]())
    assert pem.startswith(PLAIN_HEADER)
    with pytest.raises(KeyFileError, match=r"^k\.pem: expected an Ed25519 key, got \w+"):
        PrivateKey.from_pem(pem, what="k.pem")


def test_rsa_traditional_pem_is_a_key_file_error() -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    assert pem.startswith(b"-----BEGIN RSA PRIVATE KEY-----")
    with pytest.raises(KeyFileError, match="expected an Ed25519 key"):
        PrivateKey.from_pem(pem)


@pytest.mark.usefixtures("umask_022")
def test_write_key_file_creates_owner_only_file(tmp_path: Path) -> None:
    key = PrivateKey.generate()
    path = tmp_path / "node.pem"
    write_key_file(path, key)
    assert path.stat().st_mode & 0o777 == 0o600
    assert path.read_bytes().startswith(PLAIN_HEADER)
    assert read_key_file(path).public == key.public


@pytest.mark.usefixtures("umask_022")
def test_write_key_file_with_passphrase(tmp_path: Path) -> None:
    key = PrivateKey.generate()
    path = tmp_path / "client.pem"
    write_key_file(str(path), key, PASSPHRASE)
    assert path.stat().st_mode & 0o777 == 0o600
    assert path.read_bytes().startswith(ENCRYPTED_HEADER)
    assert read_key_file(str(path), PASSPHRASE).public == key.public
    with pytest.raises(KeyFileError, match=rf"^{re.escape(str(path))}: .*encrypted"):
        read_key_file(path)
    with pytest.raises(KeyFileError, match="wrong passphrase"):
        read_key_file(path, b"nope")


def test_write_key_file_refuses_to_overwrite(tmp_path: Path) -> None:
    first = PrivateKey.generate()
    path = tmp_path / "node.pem"
    write_key_file(path, first)
    before = path.read_bytes()
    with pytest.raises(KeyFileError, match="already exists"):
        write_key_file(path, PrivateKey.generate())
    assert path.read_bytes() == before
    assert read_key_file(path).public == first.public

    other = tmp_path / "notes.txt"
    other.write_bytes(b"precious")
    with pytest.raises(KeyFileError, match="already exists"):
        write_key_file(other, first)
    assert other.read_bytes() == b"precious"


def test_write_key_file_does_not_follow_a_symlink(tmp_path: Path) -> None:
    target = tmp_path / "target"
    target.write_bytes(b"precious")
    link = tmp_path / "node.pem"
    link.symlink_to(target)
    with pytest.raises(KeyFileError, match="already exists"):
        write_key_file(link, PrivateKey.generate())
    assert target.read_bytes() == b"precious"
    dangling = tmp_path / "dangling.pem"
    dangling.symlink_to(tmp_path / "nowhere")
    with pytest.raises(KeyFileError):
        write_key_file(dangling, PrivateKey.generate())
    assert not (tmp_path / "nowhere").exists()


def test_write_key_file_into_a_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="cannot create"):
        write_key_file(tmp_path / "no" / "such" / "k.pem", PrivateKey.generate())


def test_read_key_file_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.pem"
    with pytest.raises(KeyFileError, match=rf"^{re.escape(str(path))}: cannot read"):
        read_key_file(path)


def test_read_key_file_garbage_names_the_path(tmp_path: Path) -> None:
    path = tmp_path / "k.pem"
    path.write_bytes(b"not a key")
    with pytest.raises(KeyFileError, match=rf"^{re.escape(str(path))}: not a readable PEM"):
        read_key_file(path)


def test_empty_passphrase_is_refused_and_leaves_no_file(tmp_path: Path) -> None:
    key = PrivateKey.generate()
    target = tmp_path / "k.pem"
    with pytest.raises(KeyFileError, match="empty passphrase"):
        write_key_file(target, key, b"")
    assert not target.exists()
    write_key_file(target, key, b"pw")  # a retry is not blocked by a leftover file
    assert read_key_file(target, b"pw").public == key.public
