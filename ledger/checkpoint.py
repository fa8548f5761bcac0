"""Checkpoints and log proofs (SPEC section 11), verified with nothing but ``genesis.json``.

A checkpoint is a header with its certificate: the validators in force at its height sign
``(log_size, log_root)`` of the whole chain. ``verify_checkpoint`` checks one the way a
receipt's header is checked (``ledger.receipts``: the configuration reached by following
``GET /v1/config/proof``'s steps from genesis, then the header and certificate under it);
``verify_log_inclusion`` and ``verify_log_consistency`` check the answers of
``GET /v1/log/inclusion`` and ``GET /v1/log/consistency`` against verified checkpoints with
the RFC 9162 verifier of ``ledger.merkle``. Every failure is a ``LogProofError``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ledger import merkle
from ledger.blocks import Certificate, Header
from ledger.config import Config
from ledger.encoding import b64encode, hex_decode
from ledger.errors import CorruptStoreError, LedgerError, LogProofError, WitnessError
from ledger.genesis import Genesis
from ledger.receipts import cert_json, certified_header, follow_config_proof, receipt_witnesses
from ledger.witness import witnesses_json

CHECKPOINT_KEYS = ("height", "header", "cert", "witnesses")
LogNodes = Callable[[Iterable[merkle.NodeId]], Mapping[merkle.NodeId, bytes]]


# -- serving: what a node answers, from its stored Merkle nodes -------------------------------

def _assemble(log_nodes: LogNodes, plan: merkle.ProofPlan) -> list[str]:
    """The planned proof from the store's perfect-subtree hashes: one read per node id, and
    a plan names O(log n) of them (``ledger.merkle.plan``)."""
    fetched = log_nodes(merkle.all_node_ids(plan))
    try:
        return [h.hex() for h in merkle.assemble_proof(plan, fetched)]
    except KeyError as exc:
        raise CorruptStoreError(f"Merkle log node {exc.args[0]} is missing") from exc


def log_inclusion(log_nodes: LogNodes, index: int, size: int) -> dict[str, Any]:
    """``GET /v1/log/inclusion``'s answer; requires ``0 <= index < size <= log_size``."""
    return {"index": index, "size": size,
            "proof": _assemble(log_nodes, merkle.plan_inclusion(index, size))}


def log_inclusions(log_nodes: LogNodes, indexes: Iterable[int], size: int) -> list[list[str]]:
    """The audit paths of several log leaves in the log of ``size`` (a history page with
    ``proof=true``): one read of the union of their plans' node ids, which share the upper
    levels, so a page of k proofs costs well under k times one proof's O(log n) reads."""
    plans = [merkle.plan_inclusion(i, size) for i in indexes]
    fetched = log_nodes(dict.fromkeys(n for p in plans for n in merkle.all_node_ids(p)))
    try:
        return [[h.hex() for h in merkle.assemble_proof(p, fetched)] for p in plans]
    except KeyError as exc:
        raise CorruptStoreError(f"Merkle log node {exc.args[0]} is missing") from exc


def log_consistency(log_nodes: LogNodes, first: int, second: int) -> dict[str, Any]:
    """``GET /v1/log/consistency``'s answer; requires ``0 < first <= second <= log_size``."""
    return {"first": first, "second": second,
            "proof": _assemble(log_nodes, merkle.plan_consistency(first, second))}


def checkpoint_json(header: Header, cert: Certificate,
                    witnesses: Iterable[tuple[bytes, bytes]] = ()) -> dict[str, Any]:
    """``GET /v1/log/checkpoint``'s answer: a stored block's header and certificate (in a
    receipt's shape, SPEC section 6), and the ``(pubkey, sig)`` witness cosignatures the
    node holds for it (``ledger.witness.witnesses_json``'s shape)."""
    return {"height": header.height, "header": b64encode(header.to_wire()),
            "cert": cert_json(cert), "witnesses": witnesses_json(witnesses)}


def stored_checkpoint(header_cert: tuple[bytes, bytes] | None,
                      witnesses: Iterable[tuple[bytes, bytes]] = ()) -> dict[str, Any] | None:
    """``checkpoint_json`` of a store's ``header_cert(height)`` and ``cosignatures(height)``
    (None: no such block); the certificate must be the header's."""
    if header_cert is None:
        return None
    header, cert = Header.from_wire(header_cert[0]), Certificate.from_wire(header_cert[1])
    if (cert.height, cert.block_hash) != (header.height, header.hash):
        raise CorruptStoreError("the stored certificate is not the header's", header.height)
    return checkpoint_json(header, cert, witnesses)


# -- verifying: what a client checks, with nothing but genesis.json ---------------------------


@dataclass(frozen=True, slots=True)
class VerifiedCheckpoint:
    """A header its height's validators certified: the log it commits to."""

    header: Header
    signers: tuple[int, ...]
    config: Config
    #: how many distinct witnesses of ``config`` cosigned the header (SPEC section 11)
    witnesses: int = 0
    #: the checkpoint as served (``GET /v1/log/checkpoint``'s JSON), e.g. to keep
    doc: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def height(self) -> int:
        """The block height."""
        return self.header.height

    @property
    def log_size(self) -> int:
        """Records in the log up to and including this block."""
        return self.header.log_size

    @property
    def log_root(self) -> bytes:
        """The root of the log of ``log_size`` records."""
        return self.header.log_root

    @property
    def block_hash(self) -> bytes:
        """The hash of the certified header."""
        return self.header.hash


def _int(doc: dict[str, Any], key: str, where: str) -> int:
    value = doc.get(key)
    if type(value) is not int:
        raise LogProofError(f"{where}: {key!r} is not an integer")
    return value


def verify_checkpoint(doc: dict[str, Any], steps: list[Any], genesis: Genesis,
                      height: int | None = None, *, witnesses: int = 0) -> VerifiedCheckpoint:
    """Check a ``GET /v1/log/checkpoint`` answer: its header and certificate under the
    configuration in force at its height, reached from ``genesis`` by ``steps`` (``GET
    /v1/config/proof?to_height=H``'s). ``height``, when given, is the height asked for.
    Every entry of its ``witnesses`` list must be a valid cosignature by a distinct witness
    of that configuration (``ledger.witness.count_witnesses``); ``witnesses=k`` demands at
    least ``k`` of them."""
    if witnesses < 0:
        raise ValueError("witnesses must not be negative")
    if not isinstance(doc, dict):
        raise LogProofError("checkpoint: expected a JSON object")
    at = _int(doc, "height", "checkpoint")
    if height is not None and at != height:
        raise LogProofError(f"checkpoint: asked for height {height}, got {at}")
    if not isinstance(doc.get("witnesses"), list):
        raise LogProofError("checkpoint: 'witnesses' is not a list")
    if not isinstance(steps, list):
        raise LogProofError("config proof: 'steps' is not a list")
    try:
        config = follow_config_proof(steps, genesis.chain_id, genesis, at, "config_proof")
        header, signers = certified_header(doc, "checkpoint", genesis.chain_id, genesis,
                                           config, at)
        cosigned = receipt_witnesses(doc, witnesses, config, genesis, header, "checkpoint")
    except WitnessError as exc:
        raise LogProofError(f"checkpoint at height {at}: {exc}", code=exc.code) from exc
    except LedgerError as exc:
        raise LogProofError(f"checkpoint at height {at}: {exc}") from exc
    return VerifiedCheckpoint(header, signers, config, cosigned or 0, doc)


def _proof(doc: dict[str, Any], where: str) -> list[bytes]:
    path = doc.get("proof")
    if not isinstance(path, list) or not all(isinstance(h, str) for h in path):
        raise LogProofError(f"{where}: 'proof' is not a list of hex strings")
    try:
        return [hex_decode(h, f"{where}.proof[{i}]", 32) for i, h in enumerate(path)]
    except LedgerError as exc:
        raise LogProofError(str(exc)) from exc


def verify_log_inclusion(checkpoint: VerifiedCheckpoint, index: int, leaf: bytes,
                         doc: dict[str, Any]) -> None:
    """Check a ``GET /v1/log/inclusion?index=I&size=M`` answer: leaf hash ``leaf`` (``
    merkle.leaf_hash(envelope)``) is log leaf ``index`` under ``checkpoint``'s log root."""
    where = f"inclusion of log leaf {index} in {checkpoint.log_size}"
    if not isinstance(doc, dict):
        raise LogProofError(f"{where}: expected a JSON object")
    if (_int(doc, "index", where), _int(doc, "size", where)) != (index, checkpoint.log_size):
        raise LogProofError(f"{where}: the answer is for index {doc['index']}, "
                            f"size {doc['size']}")
    try:
        merkle.verify_inclusion(index, checkpoint.log_size, leaf, _proof(doc, where),
                                checkpoint.log_root)
    except LogProofError:
        raise
    except LedgerError as exc:
        raise LogProofError(f"{where}: {exc}") from exc


def verify_log_consistency(old: VerifiedCheckpoint, new: VerifiedCheckpoint,
                           doc: dict[str, Any] | None) -> None:
    """Check that ``new``'s log extends ``old``'s: a ``GET /v1/log/consistency?first=N&
    second=M`` answer for their log sizes (None when ``old``'s log is empty: nothing to
    ask, its root must be the empty tree's)."""
    n, m = old.log_size, new.log_size
    where = f"consistency of log sizes {n} (height {old.height}) and {m} (height {new.height})"
    if n > m:
        raise LogProofError(f"{where}: the later log is shorter")
    proof: list[bytes] = []
    if doc is not None:
        if not isinstance(doc, dict):
            raise LogProofError(f"{where}: expected a JSON object")
        if (_int(doc, "first", where), _int(doc, "second", where)) != (n, m):
            raise LogProofError(f"{where}: the answer is for sizes {doc['first']}, "
                                f"{doc['second']}")
        proof = _proof(doc, where)
    try:
        merkle.verify_consistency(n, m, old.log_root, new.log_root, proof)
    except LedgerError as exc:
        raise LogProofError(f"{where}: {exc}") from exc


def record_log_index(header: Header, index: int) -> int:
    """The log index of the record at ``index`` of the block with ``header``."""
    return header.log_size - header.record_count + index
