"""The validator handshake: pure functions over bytes, no I/O.

Four frames, the dialer first; the listener sends nothing until the dialer has spoken::

    dialer   -> listener   hello_D = packb(["ledger-p2p/1", chain_id: str, genesis_hash: bin(32),
                                            pubkey: bin(32), nonce: bin(32)])
    listener -> dialer     hello_L   (same shape, the listener's key and a fresh nonce)
    dialer   -> listener   auth_D  = packb([sig: bin(64)])
    listener -> dialer     auth_L
    sig = Ed25519(local key, b"ledger.p2p.v1\x00" + packb([genesis_hash, remote_nonce,
                                                           local_nonce, local_pubkey,
                                                           remote_pubkey]))

What each side checks, and in which order (``node.transport.network`` runs it):

* The listener reads ``hello_D`` (at most ``MAX_HELLO`` bytes) and refuses, before any
  crypto work and before it sends a byte, a hello that does not decode or does not name a
  validator it accepts (``check_hello``: version, chain, genesis hash, a validator key of
  the configuration in force or the next one that is not its own; then its own policy: only
  lower-ranked peers dial it, no backed-off validator; ``node.transport.peers``).
  A connection that stays silent costs the listener no nonce, no write and no signature.
* Only then does the listener draw its nonce and send ``hello_L``. The dialer checks it
  (``check_hello``, and that it is the key it dialed) and sends ``auth_D``, its signature
  over both nonces and both keys.
* The listener verifies ``auth_D`` against the nonce it drew for this connection (its first
  signature check), and only then signs and sends ``auth_L``; the dialer verifies it
  against its own nonce.

Why the mutual authentication still holds with the dialer speaking first:

* Each side's signature covers the other side's nonce, and each side checks the signature
  it receives against the nonce it drew itself for this connection (the dialer before it
  connected, the listener after the dialer's hello). A signature captured from any earlier
  handshake covers an earlier nonce and does not verify: a replayed ``hello_D``/``auth_D``
  fails at the listener, a replayed ``hello_L``/``auth_L`` at the dialer. Speaking first
  reveals only the dialer's nonce and key; the dialer signs nothing until the listener has
  committed to its nonce in ``hello_L``, so the order change gives neither side anything to
  precompute or replay.
* A signature is checked under the key the peer claimed in its hello, which must be a
  validator key the checker accepts and not the checker's own; the signer's key is inside the signed
  bytes in the signer's position, so a side's own signature reflected back to it never
  verifies (it would have to verify under its own key, which is refused as a peer key).
* The listener signs only after the dialer proved its key over the listener's nonce, so an
  unauthenticated peer never obtains a signature from a listener; the dialer signs only
  after a hello carrying the key it dialed, and its signature names that key and the nonce
  of this connection, so it is good for one handshake with that validator only.
* As before, the handshake authenticates the two ends but does not bind the TCP stream: an
  attacker on the path can relay a live handshake between two validators and then inject
  frames. On an untrusted network wrap the links in TLS (``ssl`` contexts).

The order is compatible with earlier nodes of ``ledger-p2p/1``: their dialer sent its hello
at once, its auth after reading the listener's hello, then read the listener's auth (what a
dialer does here), and their listener, which spoke first, is read the same way by this
dialer; the signed bytes are unchanged.
"""

from __future__ import annotations

from collections.abc import Container
from dataclasses import dataclass

from ledger.crypto import PUBLIC_KEY_SIZE, SIGNATURE_SIZE, PrivateKey, is_valid_signature
from ledger.encoding import expect_array, expect_bytes, expect_str, packb, unpack_exact
from ledger.errors import DecodeError
from ledger.genesis import Genesis

PROTOCOL = "ledger-p2p/1"
P2P_TAG = b"ledger.p2p.v1\x00"
NONCE_SIZE = 32
HASH_SIZE = 32
MAX_HELLO = 1024  # a hello is < 200 bytes; an unauthenticated peer gets no more
MAX_AUTH = 128  # an auth frame is 67 bytes


class HandshakeError(Exception):
    """A peer's handshake is refused; the message says why (it is logged)."""


@dataclass(frozen=True, slots=True)
class Hello:
    """The first frame each side sends."""

    chain_id: str
    genesis_hash: bytes
    pubkey: bytes
    nonce: bytes

    def to_wire(self) -> bytes:
        """The hello frame's payload."""
        return packb([PROTOCOL, self.chain_id, self.genesis_hash, self.pubkey, self.nonce])

    @classmethod
    def from_wire(cls, data: bytes) -> Hello:
        """Decode a hello (shape only); HandshakeError says what is wrong."""
        try:
            items = expect_array(unpack_exact(data, "hello"), "hello", 5)
            version = expect_str(items[0], "hello.version")
            if version != PROTOCOL:
                raise HandshakeError(f"unsupported protocol version {version!r}")
            return cls(
                chain_id=expect_str(items[1], "hello.chain_id"),
                genesis_hash=expect_bytes(items[2], "hello.genesis_hash", HASH_SIZE),
                pubkey=expect_bytes(items[3], "hello.pubkey", PUBLIC_KEY_SIZE),
                nonce=expect_bytes(items[4], "hello.nonce", NONCE_SIZE),
            )
        except DecodeError as exc:
            raise HandshakeError(f"hello does not decode: {exc}") from exc


def check_hello(hello: Hello, genesis: Genesis, own_pubkey: bytes,
                accepted: Container[bytes] | None = None) -> bytes:
    """The key a well-formed hello claims; HandshakeError if it may not link: another
    chain, our own key, or a key not in ``accepted`` (the validator keys of the
    configuration in force and the next one, ``node.transport.peers.accepted_peers``;
    by default genesis's validators)."""
    if hello.chain_id != genesis.chain_id:
        raise HandshakeError(f"wrong chain {hello.chain_id!r} (ours is {genesis.chain_id!r})")
    if hello.genesis_hash != genesis.hash:
        raise HandshakeError(
            f"wrong genesis hash {hello.genesis_hash.hex()[:16]}… "
            f"(ours is {genesis.hash.hex()[:16]}…)"
        )
    if hello.pubkey == own_pubkey:
        raise HandshakeError("the peer presents our own key")
    if accepted is None:
        accepted = {v.pubkey for v in genesis.validators}
    if hello.pubkey not in accepted:
        raise HandshakeError(f"key {hello.pubkey.hex()[:16]}… is not a validator of the "
                             "configuration in force or the next one")
    return hello.pubkey


def auth_message(genesis_hash: bytes, remote_nonce: bytes, local_nonce: bytes,
                 local_pubkey: bytes, remote_pubkey: bytes) -> bytes:
    """The bytes the local side signs (domain tag included)."""
    return P2P_TAG + packb([genesis_hash, remote_nonce, local_nonce, local_pubkey, remote_pubkey])


def make_auth(key: PrivateKey, genesis_hash: bytes, *, local_nonce: bytes,
              remote_nonce: bytes, remote_pubkey: bytes) -> bytes:
    """The auth frame's payload: our signature over both nonces and both keys."""
    message = auth_message(genesis_hash, remote_nonce, local_nonce, key.public, remote_pubkey)
    return packb([key.sign(message)])


def parse_auth(data: bytes) -> bytes:
    """The signature in an auth frame; HandshakeError if it does not decode."""
    try:
        items = expect_array(unpack_exact(data, "auth"), "auth", 1)
        return expect_bytes(items[0], "auth.sig", SIGNATURE_SIZE)
    except DecodeError as exc:
        raise HandshakeError(f"auth does not decode: {exc}") from exc


def verify_auth(genesis_hash: bytes, sig: bytes, *, local_nonce: bytes, remote_nonce: bytes,
                local_pubkey: bytes, remote_pubkey: bytes) -> None:
    """Raise HandshakeError unless the remote side signed this handshake's nonces."""
    # The remote signed from its point of view: our nonce is its remote nonce.
    message = auth_message(genesis_hash, local_nonce, remote_nonce, remote_pubkey, local_pubkey)
    if not is_valid_signature(remote_pubkey, message, sig):
        raise HandshakeError("handshake signature does not verify")
