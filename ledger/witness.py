"""Witness cosignatures (SPEC section 11): the one place that says what a witness signs and
whether a cosignature holds.

A witness of a height (one of the ``witnesses`` of the configuration governing it) that
verified the chain up to that height signs::

    Ed25519(witness_key, b"ledger.witness.v1\\x00"
                         + packb([genesis_hash, height, block_hash, log_size, log_root]))

Nodes check what is posted to them with ``check_cosignature`` (``POST /v1/log/
cosignatures``), keep what holds, and list it as ``witnesses_json``; verifiers (``ledger
verify --witnesses K``, receipts, checkpoints, ``ledger audit --file``) count what holds with
``count_witnesses``. Pure: no I/O, no clock.

The SPEC's POST body names ``pubkey``, ``height``, ``block_hash`` and ``sig`` only. A
cosignature over *another* block hash than the node's cannot be checked from those alone,
since the signed message holds that block's ``log_size`` and ``log_root`` too. So a body may
also carry ``log_size`` and ``log_root`` (hex); our witness always sends them. With them, a
cosignature that verifies over a different block at a height is proof of a split view; without
them it cannot be told from a bad signature and is refused as one.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from ledger.blocks import Header
from ledger.config import Config
from ledger.crypto import HASH_SIZE, PUBLIC_KEY_SIZE, SIGNATURE_SIZE, PrivateKey, is_valid_signature
from ledger.encoding import b64decode, b64encode, hex_decode, packb
from ledger.errors import LedgerError, WitnessError

WITNESS_DOMAIN = b"ledger.witness.v1\x00"


def cosigned_message(genesis_hash: bytes, height: int, block_hash: bytes, log_size: int,
                     log_root: bytes) -> bytes:
    """The bytes a witness signs for the block ``block_hash`` at ``height``."""
    return WITNESS_DOMAIN + packb([genesis_hash, height, block_hash, log_size, log_root])


def header_message(genesis_hash: bytes, header: Header) -> bytes:
    """``cosigned_message`` for a header."""
    return cosigned_message(genesis_hash, header.height, header.hash, header.log_size,
                            header.log_root)


def cosign(key: PrivateKey, genesis_hash: bytes, header: Header) -> bytes:
    """A witness's cosignature of ``header``."""
    return key.sign(header_message(genesis_hash, header))


def witness_keys(config: Config) -> frozenset[bytes]:
    """The public keys of ``config``'s witnesses: those that may cosign the heights it
    governs."""
    return frozenset(w.pubkey for w in config.witnesses)


@dataclass(frozen=True, slots=True)
class Cosignature:
    """One witness's signature over one block (a ``POST /v1/log/cosignatures`` body)."""

    pubkey: bytes
    height: int
    block_hash: bytes
    sig: bytes
    #: the cosigned block's log, when the poster sent it (see the module's docstring)
    log_size: int | None = None
    log_root: bytes | None = None

    def to_json(self) -> dict[str, Any]:
        """The POST body, with ``log_size`` and ``log_root`` when known."""
        doc: dict[str, Any] = {"pubkey": self.pubkey.hex(), "height": self.height,
                               "block_hash": self.block_hash.hex(),
                               "sig": b64encode(self.sig)}
        if self.log_size is not None and self.log_root is not None:
            doc["log_size"] = self.log_size
            doc["log_root"] = self.log_root.hex()
        return doc


def for_header(key: PrivateKey, genesis_hash: bytes, header: Header) -> Cosignature:
    """``key``'s cosignature of ``header``, ready to post."""
    return Cosignature(key.public, header.height, header.hash,
                       cosign(key, genesis_hash, header), header.log_size, header.log_root)


def _get(doc: Mapping[str, Any], key: str, kind: type) -> Any:
    value = doc.get(key)
    if type(value) is not kind:
        raise WitnessError(f"cosignature: {key!r} is missing or not a {kind.__name__}")
    return value


def parse_cosignature(doc: Any) -> Cosignature:
    """A ``POST /v1/log/cosignatures`` body, shape-checked (not verified)."""
    if not isinstance(doc, dict):
        raise WitnessError("cosignature: expected a JSON object")
    try:
        pubkey = hex_decode(_get(doc, "pubkey", str), "cosignature.pubkey", PUBLIC_KEY_SIZE)
        block_hash = hex_decode(_get(doc, "block_hash", str), "cosignature.block_hash",
                                HASH_SIZE)
        sig = b64decode(_get(doc, "sig", str), "cosignature.sig")
        height = _get(doc, "height", int)
        log_size = log_root = None
        if "log_size" in doc or "log_root" in doc:
            log_size = _get(doc, "log_size", int)
            log_root = hex_decode(_get(doc, "log_root", str), "cosignature.log_root",
                                  HASH_SIZE)
    except WitnessError:
        raise
    except LedgerError as exc:
        raise WitnessError(str(exc)) from exc
    if len(sig) != SIGNATURE_SIZE:
        raise WitnessError(f"cosignature.sig: expected {SIGNATURE_SIZE} bytes, got {len(sig)}")
    if not 1 <= height < 2**64 or (log_size is not None and not 0 <= log_size < 2**64):
        # msgpack (the signed message) holds unsigned 64-bit integers at most
        raise WitnessError("cosignature: height must be in 1..2^64-1 and log_size in "
                           "0..2^64-1")
    return Cosignature(pubkey, height, block_hash, sig, log_size, log_root)


def check_cosignature(cosig: Cosignature, config: Config, genesis_hash: bytes,
                      header: Header) -> bool:
    """Whether ``cosig`` is a witness's cosignature of ``header`` (True) or proof that the
    witness cosigned another block at that height (False: a split view, to be kept as
    evidence). ``config`` is the configuration governing ``header.height``. Raises
    ``WitnessError`` for a key that is not one of its witnesses or a signature that holds
    over neither."""
    if cosig.height != header.height:
        raise WitnessError(f"cosignature is for height {cosig.height}, not {header.height}")
    if cosig.pubkey not in witness_keys(config):
        raise WitnessError(f"{cosig.pubkey.hex()} is not a witness of height {header.height}",
                           code="unknown_witness")
    if cosig.block_hash == header.hash:
        if not is_valid_signature(cosig.pubkey, header_message(genesis_hash, header),
                                  cosig.sig):
            raise WitnessError(f"cosignature of height {header.height}: signature does not "
                               f"verify over this node's block")
        return True
    if cosig.log_size is None or cosig.log_root is None:
        raise WitnessError(f"cosignature of height {header.height} names block "
                           f"{cosig.block_hash.hex()}, not this node's {header.hash.hex()}, "
                           f"and carries no log_size/log_root to check it by")
    other = cosigned_message(genesis_hash, cosig.height, cosig.block_hash, cosig.log_size,
                             cosig.log_root)
    if not is_valid_signature(cosig.pubkey, other, cosig.sig):
        raise WitnessError(f"cosignature of height {header.height}: signature does not verify")
    return False


def witnesses_json(pairs: Iterable[tuple[bytes, bytes]]) -> list[dict[str, str]]:
    """The ``witnesses`` list of checkpoints and receipts: ``[{"pubkey": hex, "sig": b64}]``
    from stored ``(pubkey, sig)`` pairs, ordered by public key."""
    return [{"pubkey": pk.hex(), "sig": b64encode(sig)} for pk, sig in sorted(pairs)]


def parse_witnesses(entries: Any, where: str) -> list[tuple[bytes, bytes]]:
    """A ``witnesses`` list (``witnesses_json``'s shape) as ``(pubkey, sig)`` pairs."""
    if not isinstance(entries, list):
        raise WitnessError(f"{where}: 'witnesses' is not a list")
    pairs = []
    for i, entry in enumerate(entries):
        at = f"{where}.witnesses[{i}]"
        if not isinstance(entry, dict):
            raise WitnessError(f"{at}: expected an object")
        try:
            pairs.append((hex_decode(_get(entry, "pubkey", str), f"{at}.pubkey",
                                     PUBLIC_KEY_SIZE),
                          b64decode(_get(entry, "sig", str), f"{at}.sig")))
        except WitnessError as exc:
            raise WitnessError(f"{at}: {exc}") from exc
        except LedgerError as exc:
            raise WitnessError(str(exc)) from exc
    return pairs


def count_witnesses(pairs: Iterable[tuple[bytes, bytes]], config: Config,
                    genesis_hash: bytes, header: Header, where: str) -> int:
    """How many distinct witnesses of ``config`` (the configuration governing ``header``'s
    height) cosigned ``header``. Any entry that is not one — an unknown key, a repeated key,
    a bad signature — is an error: an honest node keeps only cosignatures that hold."""
    keys = witness_keys(config)
    message = header_message(genesis_hash, header)
    seen: set[bytes] = set()
    for i, (pubkey, sig) in enumerate(pairs):
        at = f"{where}.witnesses[{i}]"
        if pubkey not in keys:
            raise WitnessError(f"{at}: {pubkey.hex()} is not a witness of height "
                               f"{header.height}", code="unknown_witness")
        if pubkey in seen:
            raise WitnessError(f"{at}: witness {pubkey.hex()} is listed twice")
        if not is_valid_signature(pubkey, message, sig):
            raise WitnessError(f"{at}: cosignature by {pubkey.hex()} does not verify over "
                               f"block {header.hash.hex()} at height {header.height}")
        seen.add(pubkey)
    return len(seen)


def require_witnesses(pairs: Iterable[tuple[bytes, bytes]], k: int, config: Config,
                      genesis_hash: bytes, header: Header, where: str) -> int:
    """``count_witnesses``, failing unless at least ``k`` witnesses cosigned."""
    got = count_witnesses(pairs, config, genesis_hash, header, where)
    if got < k:
        have = len(config.witnesses)
        raise WitnessError(f"{where}: {got} witness cosignature{'s' if got != 1 else ''} of "
                           f"height {header.height}, {k} required (the configuration lists "
                           f"{have} witness{'es' if have != 1 else ''})",
                           code="witnesses_insufficient")
    return got
