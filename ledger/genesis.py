"""genesis.json: the chain id, the validator set, organisations and policy (SPEC section 5).

The genesis hash — ``sha256`` of the file's bytes — anchors every audit, so ``Genesis``
keeps the exact bytes it was loaded from. Keys a verifier does not need are kept in
``extra`` (e.g. consensus timeouts) and otherwise ignored.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from ledger.crypto import sha256
from ledger.encoding import loads_json, packb
from ledger.errors import DecodeError, GenesisError
from ledger.records import TYPE_PATTERN

CHAIN_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
MAX_TOTAL_POWER = 2**62


@dataclass(frozen=True, slots=True)
class Validator:
    """One validator: its index in the set, key, voting power and addresses."""

    index: int
    name: str
    pubkey: bytes
    power: int
    p2p: str = ""
    api: str = ""


@dataclass(frozen=True)
class ValidatorSet:
    """The validators in index order, with their total power and hash.

    ``since`` is the first height this set governs (1 for the genesis set): proposer
    selection (``ledger.consensus.proposer``) restarts its priorities there. A configuration
    change that leaves the validators as they were should keep the earlier set (and its
    ``since``), so that the proposer schedule runs on undisturbed.
    """

    validators: tuple[Validator, ...]
    since: int = 1
    total_power: int = field(init=False)
    hash: bytes = field(init=False)
    _by_key: dict[bytes, Validator] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "total_power", sum(v.power for v in self.validators))
        object.__setattr__(
            self, "hash", sha256(packb([[v.pubkey, v.power] for v in self.validators]))
        )
        object.__setattr__(self, "_by_key", {v.pubkey: v for v in self.validators})

    def __len__(self) -> int:
        return len(self.validators)

    def __iter__(self) -> Iterator[Validator]:
        return iter(self.validators)

    def __getitem__(self, index: int) -> Validator:
        return self.validators[index]

    def by_key(self, pubkey: bytes) -> Validator | None:
        """The validator holding ``pubkey``, if any."""
        return self._by_key.get(pubkey)

    def is_quorum(self, power: int) -> bool:
        """True iff ``power`` is more than 2/3 of the total (integer arithmetic)."""
        return 3 * power > 2 * self.total_power


@dataclass(frozen=True, slots=True)
class Member:
    """A client key of an organisation, with its roles."""

    organization: str
    name: str
    pubkey: bytes
    roles: frozenset[str]


@dataclass(frozen=True)
class Genesis:
    """A parsed, validated genesis file."""

    raw: bytes
    hash: bytes
    chain_id: str
    validators: ValidatorSet
    members: Mapping[bytes, Member]
    policies: Mapping[str, frozenset[str]]
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

    def roles_for(self, signer: bytes) -> frozenset[str]:
        """The roles ``signer`` holds (empty if it is not a member)."""
        member = self.members.get(signer)
        return member.roles if member else frozenset()

    def may_submit(self, signer: bytes, record_type: str) -> bool:
        """True iff ``signer`` holds a role that ``policies`` allows for ``record_type``."""
        return self.refusal(signer, record_type) is None

    def refusal(self, signer: bytes, record_type: str) -> str | None:
        """Why ``signer`` may not submit a record of ``record_type``, or None if it may.

        The authorisation rule (SPEC section 5) and its one-line explanation, in one place:
        admission, consensus, the audit and receipts all ask here. A type no policy names
        (a typo, with no ``"*"`` entry) is explained by listing the types that are named.
        """
        allowed = self.policies.get(record_type)
        if allowed is None:
            allowed = self.policies.get("*")
            if allowed is None:
                return (f"record type {json.dumps(record_type)} is not allowed by this chain's "
                        f"genesis; allowed types: {self._type_list}")
        member = self.members.get(signer)
        if member is None:
            return (f"signer {signer.hex()} is not authorised for type {json.dumps(record_type)}"
                    ": it is not a member of any organisation in this chain's genesis")
        if member.roles.isdisjoint(allowed):
            return (f"signer {signer.hex()} is not authorised for type {json.dumps(record_type)}"
                    f": its roles ({_names(member.roles)}) are not among those allowed "
                    f"({_names(allowed)})")
        return None

    @cached_property
    def _type_list(self) -> str:
        """The record types ``policies`` names, sorted, for refusal messages (at most
        MAX_LISTED, so that a genesis of many types cannot make every refusal long)."""
        types = sorted(t for t in self.policies if t != "*")
        if not types:
            return "none"
        shown = ", ".join(types[:MAX_LISTED])
        more = len(types) - MAX_LISTED
        return f"{shown}, ... ({more} more)" if more > 0 else shown


MAX_LISTED = 20  # record types a refusal lists


def _names(roles: frozenset[str]) -> str:
    return ", ".join(sorted(roles)) or "none"


def _need(obj: Any, key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if not isinstance(obj, dict):
        raise GenesisError(f"{where}: expected an object")
    if key not in obj:
        raise GenesisError(f"{where}: missing {key!r}")
    value = obj[key]
    if not isinstance(value, kind) or isinstance(value, bool):
        names = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        raise GenesisError(f"{where}.{key}: expected {names}, got {type(value).__name__}")
    return value


def _pubkey(obj: dict[str, Any], where: str) -> bytes:
    text = _need(obj, "pubkey", str, where)
    if not re.fullmatch(r"[0-9a-f]{64}", text):
        raise GenesisError(f"{where}.pubkey: expected 64 lowercase hex characters")
    return bytes.fromhex(text)


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
    chain_id = _need(doc, "chain_id", str, "genesis")
    if not CHAIN_ID_PATTERN.fullmatch(chain_id):
        raise GenesisError(
            f"chain_id {chain_id!r} must match ^[A-Za-z0-9][A-Za-z0-9._-]{{0,63}}$"
        )

    entries = _need(doc, "validators", list, "genesis")
    if not entries:
        raise GenesisError("validators: at least one validator is required")
    validators = []
    for i, v in enumerate(entries):
        where = f"validators[{i}]"
        name = _need(v, "name", str, where)
        pubkey = _pubkey(v, where)
        power = _need(v, "power", int, where)
        if power < 1:
            raise GenesisError(f"{where}.power: must be a positive integer")
        p2p = _need(v, "p2p", str, where) if "p2p" in v else ""
        api = _need(v, "api", str, where) if "api" in v else ""
        validators.append(Validator(i, name, pubkey, power, p2p, api))
    if len({v.pubkey for v in validators}) != len(validators):
        raise GenesisError("validators: two validators share a public key")
    if len({v.name for v in validators}) != len(validators):
        raise GenesisError("validators: two validators share a name")
    vset = ValidatorSet(tuple(validators))
    if vset.total_power > MAX_TOTAL_POWER:
        raise GenesisError(f"validators: total power exceeds {MAX_TOTAL_POWER}")

    members: dict[bytes, Member] = {}
    orgs = _need(doc, "organizations", list, "genesis")
    org_names: set[str] = set()
    for i, org in enumerate(orgs):
        where = f"organizations[{i}]"
        org_name = _need(org, "name", str, where)
        if org_name in org_names:
            raise GenesisError(f"{where}.name: organisation {org_name!r} appears twice")
        org_names.add(org_name)
        for j, m in enumerate(_need(org, "members", list, where)):
            mwhere = f"{where}.members[{j}]"
            mname = _need(m, "name", str, mwhere)
            pubkey = _pubkey(m, mwhere)
            roles = _need(m, "roles", list, mwhere)
            if not all(isinstance(r, str) for r in roles):
                raise GenesisError(f"{mwhere}.roles: expected a list of strings")
            if pubkey in members:
                raise GenesisError(
                    f"{mwhere}.pubkey: key already belongs to "
                    f"{members[pubkey].organization}/{members[pubkey].name}"
                )
            members[pubkey] = Member(org_name, mname, pubkey, frozenset(roles))

    policies: dict[str, frozenset[str]] = {}
    for rtype, roles in _need(doc, "policies", dict, "genesis").items():
        if rtype != "*" and not TYPE_PATTERN.fullmatch(rtype):
            raise GenesisError(f"policies: {rtype!r} is not a valid record type or '*'")
        if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
            raise GenesisError(f"policies[{rtype!r}]: expected a list of role names")
        policies[rtype] = frozenset(roles)

    known = {"chain_id", "validators", "organizations", "policies"}
    extra = {k: v for k, v in doc.items() if k not in known}
    return Genesis(raw, sha256(raw), chain_id, vset, members, policies, extra)
