"""genesis.json: the chain id, the validator set, organisations and policy (SPEC section 5).

The genesis hash — ``sha256`` of the file's bytes — anchors every audit, so ``Genesis``
keeps the exact bytes it was loaded from. Keys a verifier does not need are kept in
``extra`` (e.g. consensus timeouts) and otherwise ignored.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ledger.config import (
    MAX_TOTAL_POWER,
    Config,
    ConfigHistory,
    Member,
    Validator,
    ValidatorSet,
    parse_genesis_config,
)
from ledger.crypto import sha256
from ledger.encoding import loads_json
from ledger.errors import ConfigInvalidError, DecodeError, GenesisError, ReservedTypeError

CHAIN_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
__all__ = ["MAX_TOTAL_POWER", "Genesis", "Member", "Validator", "ValidatorSet"]


@dataclass(frozen=True)
class Genesis:
    """A parsed, validated genesis file: the chain id, its hash, and configuration version 0
    (``config``; ledger/config.py holds the rules and later versions)."""

    raw: bytes
    hash: bytes
    chain_id: str
    config: Config
    extra: Mapping[str, Any]

    @classmethod
    def from_bytes(cls, raw: bytes, source: str = "genesis.json") -> Genesis:
        """Parse and validate genesis bytes; GenesisError names the first problem."""
        return _parse(bytes(raw), source)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Genesis:
        """Read and validate a genesis file."""
        p = Path(path)
        try:
            raw = p.read_bytes()
        except OSError as exc:
            raise GenesisError(f"{p}: cannot read ({exc.strerror})") from exc
        return cls.from_bytes(raw, str(p))

    @property
    def validators(self) -> ValidatorSet:
        """The genesis validator set (version 0's)."""
        return self.config.validators

    @property
    def members(self) -> Mapping[bytes, Member]:
        """The genesis members by key."""
        return self.config.members

    @property
    def policies(self) -> Mapping[str, frozenset[str]]:
        """The genesis policies."""
        return self.config.policies

    def history(self) -> ConfigHistory:
        """A new configuration history holding version 0 only."""
        return ConfigHistory(self.config)

    def roles_for(self, signer: bytes) -> frozenset[str]:
        """The roles ``signer`` holds in genesis (empty if it is not a member)."""
        return self.config.roles_for(signer)

    def may_submit(self, signer: bytes, record_type: str) -> bool:
        """True iff genesis ``policies`` allow ``signer`` to submit ``record_type``."""
        return self.config.may_submit(signer, record_type)

    def refusal(self, signer: bytes, record_type: str) -> str | None:
        """Why ``signer`` may not submit ``record_type`` under genesis, or None if it may
        (``Config.refusal``: the one authorisation rule)."""
        return self.config.refusal(signer, record_type)


def _parse(raw: bytes, source: str) -> Genesis:
    try:
        doc = loads_json(raw)
    except DecodeError as exc:
        raise GenesisError(f"{source}: {exc}") from exc
    try:
        return _build(raw, doc)
    except GenesisError as exc:
        raise GenesisError(f"{source}: {exc}") from exc


def _build(raw: bytes, doc: Any) -> Genesis:
    if not isinstance(doc, dict):
        raise GenesisError("expected a JSON object at the top level")
    if "chain_id" not in doc:
        raise GenesisError("genesis: missing 'chain_id'")
    chain_id = doc["chain_id"]
    if not isinstance(chain_id, str):
        raise GenesisError(f"genesis.chain_id: expected str, got {type(chain_id).__name__}")
    if not CHAIN_ID_PATTERN.fullmatch(chain_id):
        raise GenesisError(
            f"chain_id {chain_id!r} must match ^[A-Za-z0-9][A-Za-z0-9._-]{{0,63}}$"
        )
    digest = sha256(raw)
    try:
        config = parse_genesis_config(doc, chain_id=chain_id, genesis_hash=digest)
    except (ConfigInvalidError, ReservedTypeError) as exc:
        raise GenesisError(str(exc)) from exc
    known = {"chain_id", "validators", "organizations", "policies", "governance", "witnesses",
             "read_policies"}
    extra = {k: v for k, v in doc.items() if k not in known}
    return Genesis(raw, digest, chain_id, config, extra)
