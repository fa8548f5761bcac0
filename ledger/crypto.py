"""Keys, signatures and hashes (SPEC section 1).

Signing keys and key files use ``cryptography`` (PEM, PKCS#8, optionally encrypted with a
passphrase). Verification uses libsodium through PyNaCl and nothing else: libsodium rejects
non-canonical ``S``, small-order or non-canonical public keys and ``R`` — the one rule all
validators must share, or a crafted signature could split the chain. PyNaCl exposes that
check as ``crypto_sign_open``, which is libsodium's ``crypto_sign_verify_detached`` over
``sig || message``.

Every signature is over ``DOMAIN_TAG + bytes``; the tags live here so that no two kinds of
object can share one.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from nacl.bindings import crypto_sign_open
from nacl.exceptions import BadSignatureError

from ledger.errors import KeyFileError, SignatureError

RECORD_TAG = b"ledger.record.v1\x00"
VOTE_TAG = b"ledger.vote.v1\x00"

PUBLIC_KEY_SIZE = 32
SIGNATURE_SIZE = 64
HASH_SIZE = 32


def sha256(data: bytes) -> bytes:
    """SHA-256 digest of ``data``."""
    return hashlib.sha256(data).digest()


def is_valid_signature(public_key: bytes, message: bytes, signature: bytes) -> bool:
    """True iff libsodium accepts ``signature`` over ``message`` by ``public_key``."""
    # Essential: PyNaCl's crypto_sign_open does not check the key length, so a short key
    # would make libsodium read past the buffer and a long one would verify on its prefix.
    if len(public_key) != PUBLIC_KEY_SIZE or len(signature) != SIGNATURE_SIZE:
        return False
    try:
        crypto_sign_open(bytes(signature) + bytes(message), bytes(public_key))
    except BadSignatureError:
        return False
    return True


def verify_signature(public_key: bytes, message: bytes, signature: bytes, what: str) -> None:
    """Raise SignatureError naming ``what`` unless the signature verifies."""
    if not is_valid_signature(public_key, message, signature):
        raise SignatureError(f"{what}: signature does not verify")


class PrivateKey:
    """An Ed25519 signing key with its raw 32-byte public key."""

    __slots__ = ("_key", "public")

    def __init__(self, key: Ed25519PrivateKey) -> None:
        self._key = key
        self.public: bytes = key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )

    @classmethod
    def generate(cls) -> PrivateKey:
        """A new random key."""
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def from_seed(cls, seed: bytes) -> PrivateKey:
        """The key with this 32-byte RFC 8032 seed (tests, deterministic fixtures)."""
        return cls(Ed25519PrivateKey.from_private_bytes(seed))

    def sign(self, message: bytes) -> bytes:
        """The RFC 8032 signature over ``message`` (the caller adds the domain tag)."""
        return self._key.sign(message)

    def seed(self) -> bytes:
        """The raw 32-byte seed."""
        return self._key.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )

    def to_pem(self, passphrase: bytes | None = None) -> bytes:
        """PEM PKCS#8, encrypted with ``passphrase`` when given (an empty one is refused)."""
        if passphrase is not None and not passphrase:
            raise KeyFileError("an empty passphrase would leave the key unencrypted")
        encryption: serialization.KeySerializationEncryption = (
            serialization.BestAvailableEncryption(passphrase)
            if passphrase
            else serialization.NoEncryption()
        )
        return self._key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
        )

    @classmethod
    def from_pem(
        cls, data: bytes, passphrase: bytes | None = None, what: str = "key"
    ) -> PrivateKey:
        """Parse a PEM PKCS#8 Ed25519 key; KeyFileError says what is wrong."""
        try:
            key = serialization.load_pem_private_key(data, password=passphrase or None)
        except TypeError as exc:
            # cryptography: "Password was not given but private key is encrypted" and vice versa
            raise KeyFileError(f"{what}: {exc}") from exc
        except (ValueError, UnsupportedAlgorithm) as exc:
            hint = " (wrong passphrase?)" if passphrase else ""
            raise KeyFileError(f"{what}: not a readable PEM private key{hint}") from exc
        if not isinstance(key, Ed25519PrivateKey):
            raise KeyFileError(f"{what}: expected an Ed25519 key, got {type(key).__name__}")
        return cls(key)


def write_key_file(path: str | os.PathLike[str], key: PrivateKey,
                   passphrase: bytes | None = None) -> None:
    """Write ``key`` to a new file readable only by its owner; never overwrite."""
    p = Path(path)
    pem = key.to_pem(passphrase)  # before creating the file: a failure leaves nothing behind
    try:
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError as exc:
        raise KeyFileError(f"{p}: already exists; refusing to overwrite a key") from exc
    except OSError as exc:
        raise KeyFileError(f"{p}: cannot create ({exc.strerror})") from exc
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(pem)
            f.flush()
            os.fsync(f.fileno())
    except OSError as exc:
        p.unlink(missing_ok=True)
        raise KeyFileError(f"{p}: cannot write ({exc.strerror})") from exc


def read_key_file(path: str | os.PathLike[str], passphrase: bytes | None = None) -> PrivateKey:
    """Load a PEM PKCS#8 Ed25519 key file."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise KeyFileError(f"{p}: cannot read ({exc.strerror})") from exc
    return PrivateKey.from_pem(data, passphrase, what=str(p))
