"""The configuration as a pure value, and changes by approved records (SPEC sections 5 and 9).

A ``Config`` is what governs a height: the validator set, organisations and their members'
roles, policies, governance, witnesses and read policies, with its ``version`` and the hash
``id`` that names it (the genesis hash for version 0, ``sha256`` of the change bytes after).
``parse_genesis_config`` (genesis.json, lenient about keys it does not know) and
``apply_change`` (a ``ledger.config`` record, strict at every depth) share one set of
section 5 rules (``_build``), so a genesis and a change can never disagree about what a valid
configuration is.

``ConfigHistory`` is every version with the height it governs from: consensus, admission,
the store, the audit and receipts all ask it which configuration governs a height
(``at``, ``validators_at``).
"""

from __future__ import annotations

import bisect
import json
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import TYPE_CHECKING, Any

from nacl.bindings import crypto_core_ed25519_is_valid_point

from ledger.crypto import PUBLIC_KEY_SIZE, SIGNATURE_SIZE, is_valid_signature, sha256
from ledger.encoding import decode, kind_of, packb
from ledger.errors import (
    ApprovalInvalidError,
    ApprovalsInsufficientError,
    ConfigInvalidError,
    ConfigVersionError,
    DecodeError,
    JoinInvalidError,
    ReservedTypeError,
    UnauthorisedError,
)

if TYPE_CHECKING:
    from ledger.records import Record

TYPE_PATTERN = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
MAX_TOTAL_POWER = 2**62
#: Record types beginning with this are reserved (SPEC section 9).
RESERVED_PREFIX = "ledger."
CONFIG_TYPE = "ledger.config"
REDACT_TYPE = "ledger.redact"
CONFIG_TAG = b"ledger.config.v1\x00"
JOIN_TAG = b"ledger.join.v1\x00"
REDACT_TAG = b"ledger.redact.v1\x00"
DEFAULT_GOVERNANCE_ROLE = "admin"

Verifier = Callable[[bytes, bytes, bytes], bool]


def is_reserved(record_type: str) -> bool:
    """True iff ``record_type`` is reserved for the protocol (``ledger.``...)."""
    return record_type.startswith(RESERVED_PREFIX)


def is_valid_public_key(key: bytes) -> bool:
    """A key libsodium accepts for verification and that we require in a configuration:
    canonical, on the curve, not of small order (libsodium's ``is_valid_point``, which also
    requires the prime-order subgroup; docs/protocol.md)."""
    return len(key) == PUBLIC_KEY_SIZE and bool(crypto_core_ed25519_is_valid_point(key))


# ---- the value ------------------------------------------------------------------------------

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
    selection (``ledger.consensus.proposer``) restarts its priorities there. It is not part
    of the set's identity (equality, hash): ``ConfigHistory.append`` sets it, and keeps the
    earlier set object when a change leaves the validators as they were."""

    validators: tuple[Validator, ...]
    since: int = field(default=1, compare=False)
    total_power: int = field(init=False)
    hash: bytes = field(init=False)
    _by_key: dict[bytes, Validator] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "total_power", sum(v.power for v in self.validators))
        object.__setattr__(self, "hash", validators_hash(self.validators))
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


def validators_hash(validators: tuple[Validator, ...] | list[Validator]) -> bytes:
    """``sha256(packb([[pubkey, power], ...]))`` in index order (SPEC section 4)."""
    return sha256(packb([[v.pubkey, v.power] for v in validators]))


@dataclass(frozen=True, slots=True)
class Member:
    """A client key of an organisation, with its roles."""

    organization: str
    name: str
    pubkey: bytes
    roles: frozenset[str]


@dataclass(frozen=True, slots=True)
class Witness:
    """A witness key (SPEC section 11)."""

    name: str
    pubkey: bytes


@dataclass(frozen=True)
class Config:
    """One version of the configuration (SPEC section 9), immutable.

    ``chain_id`` and ``genesis_hash`` never change; ``id`` is what a change's ``prev``
    must name to apply to this version. ``threshold`` is 0 iff no organisation governs
    (then no change is ever valid).
    """

    chain_id: str
    genesis_hash: bytes
    version: int
    id: bytes
    validators: ValidatorSet
    organizations: tuple[str, ...]
    members: Mapping[bytes, Member]
    policies: Mapping[str, frozenset[str]]
    governance_role: str
    threshold: int
    governing: frozenset[str]
    witnesses: tuple[Witness, ...] = ()
    read_policies: Mapping[str, frozenset[str]] = field(default_factory=dict)

    def roles_for(self, signer: bytes) -> frozenset[str]:
        """The roles ``signer`` holds (empty if it is not a member)."""
        member = self.members.get(signer)
        return member.roles if member else frozenset()

    def may_submit(self, signer: bytes, record_type: str) -> bool:
        """True iff ``signer`` holds a role that ``policies`` allows for ``record_type``."""
        return self.refusal(signer, record_type) is None

    def read_policy(self, record_type: str) -> frozenset[str] | None:
        """The roles that may read sealed payloads of ``record_type`` (SPEC section 10):
        its own entry of ``read_policies``, else ``"*"``'s; None: no policy, anyone reads."""
        allowed = self.read_policies.get(record_type)
        return self.read_policies.get("*") if allowed is None else allowed

    def may_read(self, reader: bytes | None, record_type: str) -> bool:
        """Whether a request signed by ``reader`` (None: unsigned, or its signature did not
        verify) is served the payload and salt of a sealed record of ``record_type``: the
        one read rule (SPEC section 10) every endpoint, export and view applies."""
        allowed = self.read_policy(record_type)
        if allowed is None:
            return True
        return reader is not None and not self.roles_for(reader).isdisjoint(allowed)

    def governs(self, key: bytes) -> Member | None:
        """The member holding ``key`` if it holds the governance role, else None."""
        member = self.members.get(key)
        return member if member is not None and self.governance_role in member.roles else None

    def refusal(self, signer: bytes, record_type: str) -> str | None:
        """Why ``signer`` may not submit a record of ``record_type`` by ``policies``, or None.

        The authorisation rule (SPEC section 5) and its one-line explanation, in one place.
        Reserved ``ledger.`` types are never allowed here ("*" does not cover them): they are
        valid only by section 9/10 (``ledger.validation.check_record``).
        """
        if is_reserved(record_type):
            return (f"record type {json.dumps(record_type)} is reserved: it is valid only "
                    "as a configuration change or redaction")
        allowed = self.policies.get(record_type)
        if allowed is None:
            allowed = self.policies.get("*")
            if allowed is None:
                return (f"record type {json.dumps(record_type)} is not allowed by this chain's "
                        f"{self._source}; allowed types: {self._type_list}")
        member = self.members.get(signer)
        if member is None:
            return (f"signer {signer.hex()} is not authorised for type {json.dumps(record_type)}"
                    f": it is not a member of any organisation in this chain's {self._source}")
        if member.roles.isdisjoint(allowed):
            return (f"signer {signer.hex()} is not authorised for type {json.dumps(record_type)}"
                    f": its roles ({_names(member.roles)}) are not among those allowed "
                    f"({_names(allowed)})")
        return None

    @property
    def _source(self) -> str:
        return "genesis" if self.version == 0 else f"configuration (version {self.version})"

    @cached_property
    def _type_list(self) -> str:
        types = sorted(t for t in self.policies if t != "*")
        if not types:
            return "none"
        shown = ", ".join(types[:MAX_LISTED])
        more = len(types) - MAX_LISTED
        return f"{shown}, ... ({more} more)" if more > 0 else shown


MAX_LISTED = 20  # record types a refusal lists


def _names(roles: frozenset[str]) -> str:
    return ", ".join(sorted(roles)) or "none"


# ---- parsing (one set of rules for genesis and changes) -----------------------------------

class _Shape:
    """Field access for one source: ``strict`` (a change: exactly the listed keys at every
    depth, msgpack types) or lenient (genesis.json: unknown keys ignored)."""

    def __init__(self, strict: bool) -> None:
        self.strict = strict

    def obj(self, value: Any, where: str, required: tuple[str, ...],
            optional: tuple[str, ...] = ()) -> dict[str, Any]:
        if type(value) is not dict:
            raise ConfigInvalidError(f"{where}: expected an object, got {kind_of(value)}")
        for key in required:
            if key not in value:
                raise ConfigInvalidError(f"{where}: missing {key!r}")
        if self.strict:
            allowed = set(required) | set(optional)
            for key in value:
                if key not in allowed:
                    raise ConfigInvalidError(f"{where}: unexpected key {key!r}")
        return value

    @staticmethod
    def get(obj: dict[str, Any], key: str, kind: type, where: str) -> Any:
        value = obj[key]
        if type(value) is not kind:
            raise ConfigInvalidError(f"{where}.{key}: expected {kind.__name__}, "
                                     f"got {kind_of(value)}")
        return value

    def pubkey(self, obj: dict[str, Any], where: str) -> bytes:
        text = self.get(obj, "pubkey", str, where)
        if not re.fullmatch(r"[0-9a-f]{64}", text):
            raise ConfigInvalidError(f"{where}.pubkey: expected 64 lowercase hex characters")
        key = bytes.fromhex(text)
        if not is_valid_public_key(key):
            raise ConfigInvalidError(f"{where}.pubkey: not a valid Ed25519 public key "
                                     "(small order, non-canonical or not on the curve)")
        return key

    def roles(self, value: Any, where: str, distinct: bool) -> frozenset[str]:
        if type(value) is not list or not all(type(r) is str for r in value):
            raise ConfigInvalidError(f"{where}: expected a list of role names")
        if distinct and len(set(value)) != len(value):
            raise ConfigInvalidError(f"{where}: a role is listed twice")
        return frozenset(value)

    def policy_map(self, value: Any, where: str) -> dict[str, frozenset[str]]:
        if type(value) is not dict:
            raise ConfigInvalidError(f"{where}: expected an object, got {kind_of(value)}")
        out: dict[str, frozenset[str]] = {}
        for rtype, roles in value.items():
            if type(rtype) is not str or (rtype != "*" and not TYPE_PATTERN.fullmatch(rtype)):
                raise ConfigInvalidError(f"{where}: {rtype!r} is not a valid record type or '*'")
            if is_reserved(rtype):
                raise ReservedTypeError(f"{where}: {rtype!r} is a reserved type (ledger.*); "
                                        "no policy can name it")
            out[rtype] = self.roles(roles, f"{where}[{rtype!r}]", distinct=False)
        return out


_TOP_REQUIRED = ("validators", "organizations", "policies")
_TOP_OPTIONAL = ("governance", "witnesses", "read_policies")


def _build(doc: dict[str, Any], shape: _Shape, *, chain_id: str, genesis_hash: bytes,
           version: int, config_id: bytes) -> Config:
    """The section 5 and 9 rules over a configuration in genesis.json's shapes."""
    entries = shape.get(doc, "validators", list, "config")
    if not entries:
        raise ConfigInvalidError("validators: at least one validator is required")
    validators = []
    for i, v in enumerate(entries):
        where = f"validators[{i}]"
        shape.obj(v, where, ("name", "pubkey", "power"), ("p2p", "api"))
        name = shape.get(v, "name", str, where)
        pubkey = shape.pubkey(v, where)
        power = shape.get(v, "power", int, where)
        if power < 1:
            raise ConfigInvalidError(f"{where}.power: must be a positive integer")
        p2p = shape.get(v, "p2p", str, where) if "p2p" in v else ""
        api = shape.get(v, "api", str, where) if "api" in v else ""
        validators.append(Validator(i, name, pubkey, power, p2p, api))
    if len({v.pubkey for v in validators}) != len(validators):
        raise ConfigInvalidError("validators: two validators share a public key")
    if len({v.name for v in validators}) != len(validators):
        raise ConfigInvalidError("validators: two validators share a name")
    vset = ValidatorSet(tuple(validators))
    if vset.total_power >= MAX_TOTAL_POWER:
        raise ConfigInvalidError(f"validators: total power must be below {MAX_TOTAL_POWER}")

    members: dict[bytes, Member] = {}
    org_names: list[str] = []
    for i, org in enumerate(shape.get(doc, "organizations", list, "config")):
        where = f"organizations[{i}]"
        shape.obj(org, where, ("name", "members"))
        org_name = shape.get(org, "name", str, where)
        if org_name in org_names:
            raise ConfigInvalidError(f"{where}.name: organisation {org_name!r} appears twice")
        org_names.append(org_name)
        for j, m in enumerate(shape.get(org, "members", list, where)):
            mwhere = f"{where}.members[{j}]"
            shape.obj(m, mwhere, ("name", "pubkey", "roles"))
            mname = shape.get(m, "name", str, mwhere)
            pubkey = shape.pubkey(m, mwhere)
            roles = shape.roles(m["roles"], f"{mwhere}.roles", distinct=True)
            if pubkey in members:
                raise ConfigInvalidError(
                    f"{mwhere}.pubkey: key already belongs to "
                    f"{members[pubkey].organization}/{members[pubkey].name}")
            members[pubkey] = Member(org_name, mname, pubkey, roles)

    policies = shape.policy_map(doc["policies"], "policies")

    role, threshold = DEFAULT_GOVERNANCE_ROLE, None
    if "governance" in doc:
        g = shape.obj(doc["governance"], "governance", (), ("role", "threshold"))
        if "role" in g:
            role = shape.get(g, "role", str, "governance")
        if "threshold" in g:
            threshold = shape.get(g, "threshold", int, "governance")
    governing = frozenset(m.organization for m in members.values() if role in m.roles)
    n = len(governing)
    if threshold is None:
        threshold = n // 2 + 1 if n else 0
    elif not 1 <= threshold <= n:
        raise ConfigInvalidError(f"governance.threshold: {threshold} is not within 1..{n} "
                                 f"(the organisations with a member holding {role!r})")

    witnesses: list[Witness] = []
    if "witnesses" in doc:
        for i, w in enumerate(shape.get(doc, "witnesses", list, "config")):
            where = f"witnesses[{i}]"
            shape.obj(w, where, ("name", "pubkey"))
            witnesses.append(Witness(shape.get(w, "name", str, where), shape.pubkey(w, where)))
        if len({w.pubkey for w in witnesses}) != len(witnesses):
            raise ConfigInvalidError("witnesses: two witnesses share a public key")
        if len({w.name for w in witnesses}) != len(witnesses):
            raise ConfigInvalidError("witnesses: two witnesses share a name")
    read_policies = (shape.policy_map(doc["read_policies"], "read_policies")
                     if "read_policies" in doc else {})

    return Config(chain_id, genesis_hash, version, config_id, vset, tuple(org_names), members,
                  policies, role, threshold, governing, tuple(witnesses), read_policies)


def parse_genesis_config(doc: dict[str, Any], *, chain_id: str, genesis_hash: bytes) -> Config:
    """Version 0 from a decoded genesis.json object (keys outside the configuration, and
    unknown keys inside it, are ignored). Raises ConfigInvalidError or ReservedTypeError."""
    shape = _Shape(strict=False)
    for key in _TOP_REQUIRED:
        if key not in doc:
            raise ConfigInvalidError(f"genesis: missing {key!r}")
    return _build(doc, shape, chain_id=chain_id, genesis_hash=genesis_hash, version=0,
                  config_id=genesis_hash)


def decode_change(change: bytes) -> dict[str, Any]:
    """The change map, decoded strictly (no ext, no repeated key, ...); DecodeError else."""
    value, _ = decode(change, "change")
    if type(value) is not dict:
        raise ConfigInvalidError(f"change: expected a map, got {kind_of(value)}")
    return value


def parse_change(config: Config, change: bytes) -> Config:
    """The configuration ``change`` describes, checked against ``config`` (the one in
    force): strict decoding, ``version == v + 1``, ``prev`` names ``config``, and every
    rule of sections 5 and 9. Signatures are not looked at here (``apply_change``)."""
    try:
        doc = decode_change(change)
    except DecodeError as exc:
        raise ConfigInvalidError(str(exc)) from exc
    shape = _Shape(strict=True)
    shape.obj(doc, "change", ("version", "prev", *_TOP_REQUIRED), _TOP_OPTIONAL)
    version = shape.get(doc, "version", int, "change")
    prev = shape.get(doc, "prev", bytes, "change")
    if version != config.version + 1:
        raise ConfigVersionError(f"change has version {version}, but version {config.version} "
                                 f"is in force: expected {config.version + 1}")
    if prev != config.id:
        raise ConfigVersionError(f"change.prev {prev.hex()} does not name the configuration "
                                 f"in force (version {config.version}, {config.id.hex()})")
    return _build(doc, shape, chain_id=config.chain_id, genesis_hash=config.genesis_hash,
                  version=version, config_id=sha256(change))


# ---- applying a change record -----------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class ChangePayload:
    """A ``ledger.config`` payload: the change bytes and the signature pairs."""

    change: bytes
    approvals: tuple[tuple[bytes, bytes], ...]
    joins: tuple[tuple[bytes, bytes], ...]


def _pairs(value: Any, where: str) -> tuple[tuple[bytes, bytes], ...]:
    if type(value) is not list:
        raise ConfigInvalidError(f"{where}: expected an array, got {kind_of(value)}")
    out = []
    for i, item in enumerate(value):
        if (type(item) is not list or len(item) != 2 or type(item[0]) is not bytes
                or type(item[1]) is not bytes or len(item[0]) != PUBLIC_KEY_SIZE
                or len(item[1]) != SIGNATURE_SIZE):
            raise ConfigInvalidError(f"{where}[{i}]: expected [pubkey: bin(32), sig: bin(64)]")
        out.append((item[0], item[1]))
    return tuple(out)


def parse_payload(payload: Any, keys: tuple[str, ...] = ("change", "approvals", "joins"),
                  what: str = "ledger.config payload") -> ChangePayload:
    """The payload map of exactly ``keys`` (a redaction has no ``joins``)."""
    if type(payload) is not dict or set(payload) != set(keys):
        raise ConfigInvalidError(f"{what}: expected a map of exactly {', '.join(keys)}")
    if type(payload["change"]) is not bytes:
        raise ConfigInvalidError(f"{what}.change: expected bin")
    joins = _pairs(payload["joins"], f"{what}.joins") if "joins" in payload else ()
    return ChangePayload(payload["change"], _pairs(payload["approvals"], f"{what}.approvals"),
                         joins)


def approval_message(genesis_hash: bytes, change: bytes, tag: bytes = CONFIG_TAG) -> bytes:
    """What an approval (``CONFIG_TAG``), join (``JOIN_TAG``) or redaction approval
    (``REDACT_TAG``) signs: ``tag + packb([genesis_hash, sha256(change)])``."""
    return tag + packb([genesis_hash, sha256(change)])


def check_approvals(config: Config, approvals: tuple[tuple[bytes, bytes], ...],
                    message: bytes, verify: Verifier = is_valid_signature) -> frozenset[str]:
    """Section 9's approval rule: distinct governance members of ``config``, each signature
    valid over ``message``. Returns the governing organisations that approved."""
    seen: set[bytes] = set()
    orgs: set[str] = set()
    for i, (key, sig) in enumerate(approvals):
        if key in seen:
            raise ApprovalInvalidError(f"approval {i}: {key.hex()} approves twice")
        seen.add(key)
        member = config.governs(key)
        if member is None:
            raise ApprovalInvalidError(
                f"approval {i}: {key.hex()} is not a member holding the governance role "
                f"{config.governance_role!r} in configuration version {config.version}")
        if not verify(key, message, sig):
            raise ApprovalInvalidError(f"approval {i}: signature by {key.hex()} does not "
                                       "verify (wrong chain, change or key?)")
        orgs.add(member.organization)
    return frozenset(orgs)


def require_threshold(config: Config, orgs: frozenset[str]) -> None:
    """Approvals from ``orgs`` meet ``config``'s threshold of governing organisations."""
    if config.threshold == 0:
        raise ApprovalsInsufficientError(
            f"configuration version {config.version} has no governing organisation (no member "
            f"holds {config.governance_role!r}): it cannot be changed")
    if len(orgs) < config.threshold:
        raise ApprovalsInsufficientError(
            f"approved by {len(orgs)} governing organisation(s) ({_names(orgs)}); "
            f"{config.threshold} of {len(config.governing)} are required")


def apply_change(config: Config, record: Record,
                 verify: Verifier = is_valid_signature) -> Config:
    """The configuration a ``ledger.config`` ``record`` makes, valid where ``config`` is in
    force; raises a ValidationError with a specific code otherwise (SPEC section 9).

    The record's own signature and chain are ``check_record``'s; this checks the rest: the
    signer is a member of ``config``, the payload decodes strictly, approvals (before the
    change is decoded), the change decodes strictly, version and prev, the new
    configuration's rules, and joins."""
    body = record.body
    if body.type != CONFIG_TYPE or body.sealed:
        raise ReservedTypeError(f"a configuration change is an inline {CONFIG_TYPE} record")
    if body.signer not in config.members:
        raise UnauthorisedError(f"signer {body.signer.hex()} of a configuration change is not "
                                f"a member of configuration version {config.version}")
    payload = parse_payload(body.payload)
    # Approvals first: they depend only on ``config`` and sha256(change), and up to 1 MiB
    # of change bytes (one bin element of the body, unseen by its element bound) is
    # decoded only for a change enough admins signed.
    orgs = check_approvals(config, payload.approvals,
                           approval_message(config.genesis_hash, payload.change), verify)
    require_threshold(config, orgs)
    new = parse_change(config, payload.change)
    needed = {v.pubkey for v in new.validators} - {v.pubkey for v in config.validators}
    join_msg = approval_message(config.genesis_hash, payload.change, JOIN_TAG)
    joined: set[bytes] = set()
    for i, (key, sig) in enumerate(payload.joins):
        if key not in needed:
            raise JoinInvalidError(f"join {i}: {key.hex()} is not a validator key this change "
                                   "adds")
        if key in joined:
            raise JoinInvalidError(f"join {i}: {key.hex()} joins twice")
        if not verify(key, join_msg, sig):
            raise JoinInvalidError(f"join {i}: signature by {key.hex()} does not verify")
        joined.add(key)
    missing = needed - joined
    if missing:
        raise JoinInvalidError("no join signature for new validator key(s) "
                               + ", ".join(sorted(k.hex() for k in missing)))
    return new


# ---- the history --------------------------------------------------------------------------------

def succeeding(previous: Config, committed_at: int, config: Config) -> Config:
    """``config`` as it governs after ``previous`` from ``committed_at + 1``: the same
    validator set keeps ``previous``'s (its proposer schedule runs on), a new one starts
    its schedule (``since``) there. Every holder of a history applies this one rule."""
    if config.validators == previous.validators:
        return replace(config, validators=previous.validators)
    return replace(config, validators=replace(config.validators, since=committed_at + 1))


class ConfigHistory:
    """Every configuration version with the first height it governs (version 0 from 1).

    ``at(height)`` is the configuration in force at ``height``; ``validators_at`` is the
    ``Callable[[int], ValidatorSet]`` consensus takes. ``append`` records a change committed
    at height H (it governs from H+1); ``truncate`` forgets versions above a height (a store
    rolled back)."""

    def __init__(self, genesis_config: Config) -> None:
        if genesis_config.version != 0:
            raise ValueError("a history starts from version 0")
        self._starts: list[int] = [1]
        self._configs: list[Config] = [genesis_config]

    def __len__(self) -> int:
        return len(self._configs)

    def __iter__(self) -> Iterator[tuple[int, Config]]:
        return iter(zip(self._starts, self._configs, strict=True))

    @property
    def latest(self) -> Config:
        """The newest version (the one governing the next height)."""
        return self._configs[-1]

    @property
    def genesis(self) -> Config:
        """Version 0."""
        return self._configs[0]

    def version(self, version: int) -> Config:
        """The configuration of ``version`` (IndexError if unknown)."""
        if not 0 <= version < len(self._configs):
            raise IndexError(f"no configuration version {version}")
        return self._configs[version]

    def start(self, version: int) -> int:
        """The first height ``version`` governs."""
        return self._starts[version]

    def at(self, height: int) -> Config:
        """The configuration in force at ``height`` (heights below 1 get version 0)."""
        return self._configs[max(bisect.bisect_right(self._starts, height) - 1, 0)]

    def validators_at(self, height: int) -> ValidatorSet:
        """The validator set in force at ``height``."""
        return self.at(height).validators

    def append(self, committed_at: int, config: Config) -> None:
        """Record ``config``, made by a change committed at height ``committed_at``."""
        if config.version != self.latest.version + 1:
            raise ValueError(f"expected version {self.latest.version + 1}, "
                             f"got {config.version}")
        if committed_at + 1 <= self._starts[-1]:
            raise ValueError(f"a change at height {committed_at} is not after the "
                             f"last one (governing from {self._starts[-1]})")
        config = succeeding(self._configs[-1], committed_at, config)
        self._starts.append(committed_at + 1)
        self._configs.append(config)

    def truncate(self, height: int) -> None:
        """Forget versions made by changes above ``height``."""
        while len(self._starts) > 1 and self._starts[-1] > height + 1:
            self._starts.pop()
            self._configs.pop()


__all__ = [
    "CONFIG_TAG", "CONFIG_TYPE", "JOIN_TAG", "REDACT_TAG", "REDACT_TYPE", "ChangePayload",
    "Config", "ConfigHistory", "Member", "Validator", "ValidatorSet",
    "Witness", "apply_change", "approval_message", "check_approvals", "is_reserved",
    "parse_change", "parse_genesis_config", "require_threshold", "succeeding",
    "validators_hash",
]
