"""Configuration-change and redaction proposals (SPEC sections 8, 9 and 10).

``ledger config propose`` / ``ledger redact`` write a proposal file, ``ledger config
approve`` adds approvals (and new validators' join signatures) to it, ``ledger config
submit`` turns it into a ``ledger.config`` or ``ledger.redact`` record. The file is SPEC
section 9's JSON::

    {"genesis_hash": hex, "kind": "config" | "redact", "change": b64,
     "approvals": [{"pubkey": hex, "sig": b64}], "joins": [{"pubkey": hex, "sig": b64}]}

Everything here but ``read_proposal``/``write_proposal`` and ``fetch_config`` is pure: the
rules are ledger/config.py's (``parse_change``, ``approval_message``, ``check_approvals``),
never restated, so what the CLI accepts is what a node admits.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from ledger.config import (
    CONFIG_TAG,
    CONFIG_TYPE,
    JOIN_TAG,
    REDACT_TAG,
    REDACT_TYPE,
    Config,
    approval_message,
    check_approvals,
    decode_change,
    parse_change,
    parse_genesis_config,
)
from ledger.crypto import PUBLIC_KEY_SIZE, SIGNATURE_SIZE, PrivateKey, sha256
from ledger.encoding import b64decode, b64encode, decode, hex_decode, packb
from ledger.errors import DecodeError, LedgerError
from ledger.genesis import Genesis
from node.files import write_durably

if TYPE_CHECKING:
    from node.client import LedgerClient

Kind = Literal["config", "redact"]
#: The configuration keys a change restates (SPEC section 9); chain_id may be present
#: (``config show`` output, a genesis copy) but must not differ.
CONFIG_KEYS = ("validators", "organizations", "policies", "governance", "witnesses",
               "read_policies")


class GovernanceError(LedgerError):
    """A proposal cannot be made, approved or submitted; the message says why."""

    code = "governance"


Pair = tuple[bytes, bytes]


@dataclass(frozen=True)
class Proposal:
    """A proposal file's content."""

    genesis_hash: bytes
    kind: Kind
    change: bytes
    approvals: tuple[Pair, ...] = ()
    joins: tuple[Pair, ...] = ()

    def to_json(self) -> dict[str, Any]:
        """SPEC section 9's proposal shape."""
        return {"genesis_hash": self.genesis_hash.hex(), "kind": self.kind,
                "change": b64encode(self.change),
                "approvals": [{"pubkey": k.hex(), "sig": b64encode(s)} for k, s in self.approvals],
                "joins": [{"pubkey": k.hex(), "sig": b64encode(s)} for k, s in self.joins]}

    @classmethod
    def from_json(cls, doc: Any, source: str = "proposal") -> Proposal:
        """Parse the proposal shape strictly; GovernanceError naming the field otherwise."""
        if not isinstance(doc, dict):
            raise GovernanceError(f"{source}: expected a JSON object")
        extra = set(doc) - {"genesis_hash", "kind", "change", "approvals", "joins"}
        if extra:
            raise GovernanceError(f"{source}: unknown key {sorted(extra)[0]!r}")
        try:
            genesis_hash = hex_decode(doc.get("genesis_hash"), f"{source}.genesis_hash", 32)
            kind = doc.get("kind")
            if kind not in ("config", "redact"):
                raise GovernanceError(f"{source}.kind: expected \"config\" or \"redact\"")
            change = b64decode(doc.get("change"), f"{source}.change")
            approvals = _pairs(doc.get("approvals", []), f"{source}.approvals")
            joins = _pairs(doc.get("joins", []), f"{source}.joins")
        except DecodeError as exc:
            raise GovernanceError(str(exc)) from exc
        if kind == "redact" and joins:
            raise GovernanceError(f"{source}.joins: a redaction has no join signatures")
        return cls(genesis_hash, kind, change, approvals, joins)


def _pairs(value: Any, where: str) -> tuple[Pair, ...]:
    if not isinstance(value, list):
        raise GovernanceError(f"{where}: expected an array")
    out = []
    for i, item in enumerate(value):
        if not isinstance(item, dict) or set(item) != {"pubkey", "sig"}:
            raise GovernanceError(f"{where}[{i}]: expected {{\"pubkey\": hex, \"sig\": b64}}")
        key = hex_decode(item["pubkey"], f"{where}[{i}].pubkey", PUBLIC_KEY_SIZE)
        sig = b64decode(item["sig"], f"{where}[{i}].sig")
        if len(sig) != SIGNATURE_SIZE:
            raise GovernanceError(f"{where}[{i}].sig: expected {SIGNATURE_SIZE} bytes")
        out.append((key, sig))
    return tuple(out)


# ---- the configuration in force, from a node ----------------------------------------------

def config_from_answer(genesis: Genesis, answer: dict[str, Any]) -> Config:
    """The ``Config`` a ``GET /v1/config`` answer describes: genesis for version 0, else
    the configuration its ``change`` bytes hold, named by ``sha256(change)``."""
    version = answer.get("version")
    if type(version) is not int or version < 0:
        raise GovernanceError("GET /v1/config: 'version' is not a non-negative integer")
    if version == 0:
        return genesis.config
    change = b64decode(answer.get("change"), "GET /v1/config change")
    doc = decode_change(change)
    if doc.get("version") != version:
        raise GovernanceError(f"GET /v1/config: change bytes are not version {version}")
    config = parse_genesis_config({k: doc[k] for k in CONFIG_KEYS if k in doc},
                                  chain_id=genesis.chain_id, genesis_hash=genesis.hash)
    return replace(config, version=version, id=sha256(change))


def fetch_config(client: LedgerClient, version: int | None = None,
                 genesis: Genesis | None = None) -> tuple[Genesis, Config]:
    """The node's genesis and the configuration in force (or ``version``)."""
    if genesis is None:
        genesis = Genesis.from_bytes(client.genesis(), f"{client.base_url}/v1/genesis")
    return genesis, config_from_answer(genesis, client.config(version))


# ---- building proposals --------------------------------------------------------------------

def change_from_doc(current: Config, new_doc: Any, source: str = "NEW.json") -> bytes:
    """The change bytes making ``new_doc`` (genesis.json's shapes) version ``current + 1``,
    checked by the ledger's own rules (``parse_change``): a ConfigInvalidError (or
    ReservedTypeError) names the field that breaks one."""
    if not isinstance(new_doc, dict):
        raise GovernanceError(f"{source}: expected a JSON object")
    if "chain_id" in new_doc and new_doc["chain_id"] != current.chain_id:
        raise GovernanceError(f"{source}: chain_id {new_doc['chain_id']!r} is not this "
                              f"chain's ({current.chain_id!r}); it never changes")
    extra = sorted(set(new_doc) - {*CONFIG_KEYS, "chain_id"})
    if extra:
        raise GovernanceError(f"{source}: {extra[0]!r} is not part of the configuration "
                              "(SPEC section 9: node settings are not changed by a record)")
    change = packb({"version": current.version + 1, "prev": current.id,
                    **{k: new_doc[k] for k in CONFIG_KEYS if k in new_doc}})
    parse_change(current, change)
    return change


def propose_config(current: Config, new_doc: Any, source: str = "NEW.json") -> Proposal:
    """A ``config`` proposal with no approvals yet."""
    return Proposal(current.genesis_hash, "config", change_from_doc(current, new_doc, source))


def redaction_change(genesis_hash: bytes, ids: list[bytes], reason: str) -> bytes:
    """``packb([genesis_hash, [id, ...], reason])`` (SPEC section 10)."""
    if not ids:
        raise GovernanceError("a redaction names at least one record (--record ID)")
    if len(set(ids)) != len(ids):
        raise GovernanceError("a record is named twice")
    return packb([genesis_hash, ids, reason])


def parse_redaction(change: bytes) -> tuple[bytes, list[bytes], str]:
    """The ``[genesis_hash, ids, reason]`` of a redaction change; GovernanceError else."""
    try:
        value, _ = decode(change, "redaction change")
    except DecodeError as exc:
        raise GovernanceError(str(exc)) from exc
    if (type(value) is not list or len(value) != 3 or type(value[0]) is not bytes
            or type(value[1]) is not list or type(value[2]) is not str
            or not all(type(i) is bytes and len(i) == 32 for i in value[1])):
        raise GovernanceError("redaction change: expected [genesis_hash, [id, ...], reason]")
    return value[0], list(value[1]), value[2]


def propose_redaction(current: Config, ids: list[bytes], reason: str) -> Proposal:
    """A ``redact`` proposal with no approvals yet."""
    return Proposal(current.genesis_hash, "redact",
                    redaction_change(current.genesis_hash, ids, reason))


def change_version(proposal: Proposal) -> int:
    """The version a ``config`` proposal's change would make."""
    try:
        doc = decode_change(proposal.change)
    except LedgerError as exc:
        raise GovernanceError(f"proposal change: {exc}") from exc
    version = doc.get("version")
    if type(version) is not int:
        raise GovernanceError("proposal change: no integer 'version'")
    return version


# ---- the diff -------------------------------------------------------------------------------

def short(key: bytes) -> str:
    """A key as people compare it: the first 8 hex characters."""
    return key.hex()[:8]


def _roles(roles: frozenset[str]) -> str:
    return ", ".join(sorted(roles)) or "no roles"


def _policy_diff(name: str, old: Any, new: Any) -> list[str]:
    lines = []
    for t in sorted(set(old) | set(new)):
        if t not in new:
            lines.append(f"  - {name} {t}: {_roles(old[t])} (removed)")
        elif t not in old:
            lines.append(f"  + {name} {t}: {_roles(new[t])}")
        elif old[t] != new[t]:
            lines.append(f"  ~ {name} {t}: {_roles(old[t])} -> {_roles(new[t])}")
    return lines


def diff(old: Config, new: Config) -> list[str]:
    """What changes from ``old`` to ``new``, one human-readable line each ('+' added, '-'
    removed, '~' changed); members and validators by name and short key."""
    lines = [f"configuration version {old.version} -> {new.version}"]
    for org in new.organizations:
        if org not in old.organizations:
            lines.append(f"  + organisation {org}")
    for org in old.organizations:
        if org not in new.organizations:
            lines.append(f"  - organisation {org}")
    for key, m in new.members.items():
        was = old.members.get(key)
        who = f"{m.organization}/{m.name} ({short(key)})"
        if was is None:
            lines.append(f"  + member {who}: {_roles(m.roles)}")
            continue
        if (was.organization, was.name) != (m.organization, m.name):
            lines.append(f"  ~ member {short(key)}: {was.organization}/{was.name} -> "
                         f"{m.organization}/{m.name}")
        if was.roles != m.roles:
            lines.append(f"  ~ member {who}: roles {_roles(was.roles)} -> {_roles(m.roles)}")
    for key, m in old.members.items():
        if key not in new.members:
            lines.append(f"  - member {m.organization}/{m.name} ({short(key)}): revoked")
    old_v = {v.pubkey: v for v in old.validators}
    new_v = {v.pubkey: v for v in new.validators}
    for key, v in new_v.items():
        held = old_v.get(key)
        if held is None:
            lines.append(f"  + validator {v.name} ({short(key)}) power {v.power}"
                         + (f" p2p {v.p2p}" if v.p2p else ""))
            continue
        if held.power != v.power:
            lines.append(f"  ~ validator {v.name} ({short(key)}): power {held.power} -> "
                         f"{v.power}")
        for attr in ("name", "p2p", "api"):
            if getattr(held, attr) != getattr(v, attr):
                lines.append(f"  ~ validator {v.name} ({short(key)}): {attr} "
                             f"{getattr(held, attr) or '-'} -> {getattr(v, attr) or '-'}")
    for key, v in old_v.items():
        if key not in new_v:
            lines.append(f"  - validator {v.name} ({short(key)}) power {v.power}")
    kept = [k for k in new_v if k in old_v]
    if kept != [k for k in old_v if k in new_v]:
        lines.append("  ~ validators reordered (the proposer order follows the list): "
                     + ", ".join(new_v[k].name for k in kept))
    old_total, new_total = old.validators.total_power, new.validators.total_power
    if old_total != new_total or old_v.keys() != new_v.keys():
        lines.append(f"  = validators: {len(old_v)} -> {len(new_v)}, total power "
                     f"{old_total} -> {new_total}")
    lines += _policy_diff("policy", old.policies, new.policies)
    lines += _policy_diff("read policy", old.read_policies, new.read_policies)
    if (old.governance_role, old.threshold) != (new.governance_role, new.threshold) or \
            old.governing != new.governing:
        lines.append(f"  ~ governance: role {old.governance_role!r} threshold "
                     f"{old.threshold} of {len(old.governing)} -> role "
                     f"{new.governance_role!r} threshold {new.threshold} of "
                     f"{len(new.governing)}")
    old_w = {w.pubkey: w.name for w in old.witnesses}
    new_w = {w.pubkey: w.name for w in new.witnesses}
    lines += [f"  + witness {n} ({short(k)})" for k, n in new_w.items() if k not in old_w]
    lines += [f"  - witness {n} ({short(k)})" for k, n in old_w.items() if k not in new_w]
    if len(lines) == 1:
        lines.append("  (no change)")
    return lines


# ---- approving ------------------------------------------------------------------------------

@dataclass
class Approval:
    """What ``approve`` did: the new proposal and what to tell the operator."""

    proposal: Proposal
    lines: list[str] = field(default_factory=list)


def _add(pairs: tuple[Pair, ...], key: PrivateKey, message: bytes) -> tuple[tuple[Pair, ...],
                                                                               bool]:
    if any(k == key.public for k, _ in pairs):
        return pairs, False
    return (*pairs, (key.public, key.sign(message))), True


def approve_config(proposal: Proposal, key: PrivateKey, current: Config,
                   prev: Config | None = None) -> Approval:
    """Add ``key``'s approval (an admin of ``current``, the configuration in force) or join
    signature (a validator key the change adds). Refuses another chain, a stale or future
    version, a change the ledger's rules reject, and any other key. ``prev`` is the
    configuration the change's version follows, when the node has it (for the diff of a
    stale proposal)."""
    if proposal.kind != "config":
        raise GovernanceError(f"not a configuration proposal (kind {proposal.kind!r})")
    _same_chain(proposal, current)
    version = change_version(proposal)
    if version <= current.version:
        shown = diff(prev, parse_change(prev, proposal.change)) if prev is not None and \
            prev.version == version - 1 and _applies(prev, proposal.change) else []
        raise GovernanceError(
            f"stale proposal: it makes version {version}, but version {current.version} is "
            "already in force (the change was applied or superseded; propose again)"
            + ("" if not shown else "; it was: " + "; ".join(s.strip() for s in shown[1:])))
    if version > current.version + 1:
        raise GovernanceError(f"proposal makes version {version}, but version "
                              f"{current.version} is in force: expected {current.version + 1}")
    new = parse_change(current, proposal.change)  # prev names current, rules hold
    out = Approval(proposal, diff(current, new))
    adds = {v.pubkey for v in new.validators} - {v.pubkey for v in current.validators}
    member = current.governs(key.public)
    if member is None and key.public not in adds:
        raise GovernanceError(
            f"key {key.public.hex()} is not a member holding the governance role "
            f"{current.governance_role!r} in configuration version {current.version}, nor a "
            "validator key this change adds: it cannot approve")
    if member is not None:
        approvals, added = _add(proposal.approvals, key,
                                approval_message(current.genesis_hash, proposal.change,
                                                 CONFIG_TAG))
        out.proposal = replace(out.proposal, approvals=approvals)
        out.lines.append(f"{'approved' if added else 'already approved'} by "
                         f"{member.organization}/{member.name} ({short(key.public)})")
    if key.public in adds:
        joins, added = _add(proposal.joins, key,
                            approval_message(current.genesis_hash, proposal.change, JOIN_TAG))
        out.proposal = replace(out.proposal, joins=joins)
        out.lines.append(f"{'join signed' if added else 'join already signed'} by new "
                         f"validator {short(key.public)}")
    out.lines += status(out.proposal, current, new)
    return out


def _applies(config: Config, change: bytes) -> bool:
    try:
        parse_change(config, change)
    except LedgerError:
        return False
    return True


def _same_chain(proposal: Proposal, current: Config) -> None:
    if proposal.genesis_hash != current.genesis_hash:
        raise GovernanceError(
            f"proposal is for another chain: genesis {proposal.genesis_hash.hex()}, but the "
            f"node runs genesis {current.genesis_hash.hex()}")


def status(proposal: Proposal, current: Config, new: Config | None = None) -> list[str]:
    """Where the approvals stand against ``current``'s threshold (and joins, for a change)."""
    tag = CONFIG_TAG if proposal.kind == "config" else REDACT_TAG
    try:
        orgs = check_approvals(current, proposal.approvals,
                               approval_message(current.genesis_hash, proposal.change, tag))
    except LedgerError as exc:
        return [f"approvals invalid: {exc}"]
    enough = len(orgs) >= current.threshold > 0
    lines = [f"approvals: {len(orgs)} organisation(s) ({', '.join(sorted(orgs)) or 'none yet'})"
             f"; {current.threshold} of {len(current.governing)} needed"
             + (": enough" if enough else "")]
    if new is not None:
        adds = {v.pubkey for v in new.validators} - {v.pubkey for v in current.validators}
        missing = adds - {k for k, _ in proposal.joins}
        if missing:
            lines.append("joins missing from new validator key(s): "
                         + ", ".join(sorted(short(k) for k in missing))
                         + " (each runs: ledger config approve PROPOSAL.json --identity "
                         "NODE.pem)")
    return lines


def approve_redaction(proposal: Proposal, key: PrivateKey, current: Config) -> Approval:
    """Add ``key``'s redaction approval (an admin of ``current``)."""
    if proposal.kind != "redact":
        raise GovernanceError(f"not a redaction proposal (kind {proposal.kind!r})")
    _same_chain(proposal, current)
    anchor, ids, reason = parse_redaction(proposal.change)
    if anchor != current.genesis_hash:
        raise GovernanceError("the redaction change names another chain's genesis")
    out = Approval(proposal, redaction_summary(ids, reason))
    member = current.governs(key.public)
    if member is None:
        raise GovernanceError(
            f"key {key.public.hex()} is not a member holding the governance role "
            f"{current.governance_role!r} in configuration version {current.version}: it "
            "cannot approve")
    approvals, added = _add(proposal.approvals, key,
                            approval_message(current.genesis_hash, proposal.change, REDACT_TAG))
    out.proposal = replace(proposal, approvals=approvals)
    out.lines.append(f"{'approved' if added else 'already approved'} by "
                     f"{member.organization}/{member.name} ({short(key.public)})")
    out.lines += status(out.proposal, current)
    return out


def redaction_summary(ids: list[bytes], reason: str) -> list[str]:
    """The lines describing a redaction."""
    return [f"redact {len(ids)} record(s): reason {json.dumps(reason)}",
            *(f"  - {i.hex()}" for i in ids)]


def approve(proposal: Proposal, key: PrivateKey, current: Config,
            prev: Config | None = None) -> Approval:
    """``approve_config`` or ``approve_redaction`` by the proposal's kind."""
    if proposal.kind == "redact":
        return approve_redaction(proposal, key, current)
    return approve_config(proposal, key, current, prev)


def approve_offline(proposal: Proposal, key: PrivateKey) -> Approval:
    """Sign without a node (an offline admin machine): nothing is checked against the chain;
    a key the change lists as a validator signs a join, any other an approval."""
    tag = CONFIG_TAG if proposal.kind == "config" else REDACT_TAG
    joining = False
    if proposal.kind == "config":
        doc = decode_change(proposal.change)
        validators = doc.get("validators")
        joining = isinstance(validators, list) and any(
            isinstance(v, dict) and v.get("pubkey") == key.public.hex() for v in validators)
    out = Approval(proposal, ["not checked against a node (no --node): the chain, version, "
                              "diff and whether this key may approve are the node's to judge"])
    if joining:
        joins, added = _add(proposal.joins, key,
                            approval_message(proposal.genesis_hash, proposal.change, JOIN_TAG))
        out.proposal = replace(proposal, joins=joins)
        out.lines.append(f"{'join signed' if added else 'join already signed'} by "
                         f"{short(key.public)}")
    else:
        approvals, added = _add(proposal.approvals, key,
                                approval_message(proposal.genesis_hash, proposal.change, tag))
        out.proposal = replace(proposal, approvals=approvals)
        out.lines.append(f"{'approved' if added else 'already approved'} by "
                         f"{short(key.public)}")
    return out


# ---- submitting -----------------------------------------------------------------------------

def record_of(proposal: Proposal) -> tuple[str, str, dict[str, Any]]:
    """The ``(type, subject, payload)`` of the record a proposal becomes (SPEC 9 and 10)."""
    approvals = [[k, s] for k, s in proposal.approvals]
    if proposal.kind == "redact":
        return REDACT_TYPE, "redact", {"change": proposal.change, "approvals": approvals}
    return CONFIG_TYPE, "config", {"change": proposal.change, "approvals": approvals,
                                   "joins": [[k, s] for k, s in proposal.joins]}


# ---- the file -------------------------------------------------------------------------------

def read_proposal(path: Path) -> Proposal:
    """Read and parse a proposal file."""
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise GovernanceError(f"{path}: cannot read a proposal ({exc})") from exc
    return Proposal.from_json(doc, str(path))


def write_proposal(path: Path, proposal: Proposal) -> None:
    """Write ``proposal`` atomically: a reader never sees half a file."""
    write_durably(path, (json.dumps(proposal.to_json(), indent=2) + "\n").encode())


# ---- the commands (wired into ``ledger`` by node/cli.py) ------------------------------------

def _client(args: argparse.Namespace, identity: PrivateKey | None = None) -> LedgerClient:
    from node.cli import _ca
    from node.client import LedgerClient

    return LedgerClient(args.node, identity=identity, verify=_ca(args),
                        timeout=getattr(args, "timeout", 30.0) + 10)


def _identity(args: argparse.Namespace) -> PrivateKey:
    from node.cli import _read_identity

    return _read_identity(args)


def refuse_overwrite(path: Path, force: bool) -> None:
    """A proposal file is not replaced unless ``--force``: it may hold approvals that took
    a day to collect."""
    if path.exists() and not force:
        raise GovernanceError(f"{path} already exists (a proposal with its approvals?): "
                              "choose another --out, or pass --force to replace it")


def cmd_config_propose(args: argparse.Namespace) -> int:
    """``ledger config propose``: write a proposal for NEW.json and print the diff."""
    refuse_overwrite(args.out, args.force)
    try:
        new_doc = json.loads(args.config.read_text())
    except (OSError, ValueError) as exc:
        raise GovernanceError(f"{args.config}: cannot read JSON ({exc})") from exc
    with _client(args) as client:
        _, current = fetch_config(client)
    proposal = propose_config(current, new_doc, str(args.config))
    print("\n".join(diff(current, parse_change(current, proposal.change))))
    write_proposal(args.out, proposal)
    print(f"wrote {args.out} (version {current.version + 1}, needs approvals from "
          f"{current.threshold} of {len(current.governing)} governing organisations: "
          f"{', '.join(sorted(current.governing))}); next: ledger config approve {args.out} "
          f"--identity ADMIN.pem --node {args.node}")
    return 0


def cmd_config_approve(args: argparse.Namespace) -> int:
    """``ledger config approve``: print the diff, add this key's approval or join."""
    proposal = read_proposal(args.proposal)
    key = _identity(args)
    if not args.node:
        result = approve_offline(proposal, key)
    else:
        with _client(args) as client:
            genesis, current = fetch_config(client)
            prev = None
            if proposal.kind == "redact" and proposal.genesis_hash == genesis.hash:
                for rid in parse_redaction(proposal.change)[1]:
                    check_redactable(rid, client.record(rid.hex()))
            if proposal.kind == "config" and proposal.genesis_hash == genesis.hash:
                before = change_version(proposal) - 1
                if 0 <= before < current.version:  # the version it was written against
                    prev = fetch_config(client, before, genesis)[1]
        result = approve(proposal, key, current, prev)
    print("\n".join(result.lines))
    if result.proposal != proposal:
        write_proposal(args.proposal, result.proposal)
        print(f"wrote {args.proposal}")
    return 0


def cmd_config_submit(args: argparse.Namespace) -> int:
    """``ledger config submit``: the proposal as a record, through the SDK."""
    proposal = read_proposal(args.proposal)
    type_, subject, payload = record_of(proposal)
    with _client(args, _identity(args)) as client:
        status_doc = client.status()
        theirs = status_doc.get("genesis_hash")
        if isinstance(theirs, str) and theirs != proposal.genesis_hash.hex():
            raise GovernanceError(f"proposal is for another chain: genesis "
                                  f"{proposal.genesis_hash.hex()}, the node runs {theirs}")
        result = client.write(type=type_, subject=subject, payload=payload, wait=args.wait,
                              timeout=args.timeout)
    if result.get("status") == "rejected":
        print(f"rejected: {result.get('error')}: {result.get('detail')}", file=sys.stderr)
        return 1
    line = str(result.get("id")) + (f" height {result['height']}" if "height" in result else "")
    print(line if result.get("status") == "accepted" else f"{line} (duplicate)")
    return 0


def cmd_redact(args: argparse.Namespace) -> int:
    """``ledger redact``: write a redaction proposal (approved at once if --identity is an
    admin)."""
    refuse_overwrite(args.out, args.force)
    try:
        ids = [hex_decode(r, "--record", 32) for r in args.record]
    except DecodeError as exc:
        raise GovernanceError(str(exc)) from exc
    key = _identity(args)
    with _client(args) as client:
        _, current = fetch_config(client)
        for rid in ids:  # NodeError not_found names an unknown id
            check_redactable(rid, client.record(rid.hex()))
    proposal = propose_redaction(current, ids, args.reason)
    lines = redaction_summary(ids, args.reason)
    if current.governs(key.public) is not None:
        result = approve_redaction(proposal, key, current)
        proposal, lines = result.proposal, result.lines
    else:
        lines += [f"{short(key.public)} is not an admin: not approved by it",
                  *status(proposal, current)]
    print("\n".join(lines))
    write_proposal(args.out, proposal)
    print(f"wrote {args.out}; next: ledger config approve {args.out} --identity ADMIN.pem "
          f"--node {args.node}, then ledger config submit {args.out} --node {args.node} "
          "--identity PEM --wait")
    return 0


def check_redactable(rid: bytes, answer: dict[str, Any]) -> None:
    """Refuse an id the redaction rule would refuse (SPEC section 10): a record that is not
    committed, or not sealed (its payload is on the chain: nothing to delete)."""
    from ledger.records import Record

    if answer.get("status") != "committed":
        raise GovernanceError(f"record {rid.hex()} is not committed yet "
                              f"(status {answer.get('status')!r})")
    try:
        record = Record.from_wire(b64decode(answer.get("envelope"), "record envelope"))
    except LedgerError as exc:
        raise GovernanceError(f"record {rid.hex()}: {exc}") from exc
    if record.id != rid:
        raise GovernanceError(f"record {rid.hex()}: the node answered another record")
    if not record.body.sealed:
        raise GovernanceError(f"record {rid.hex()} is not sealed: its payload is part of the "
                              "chain and cannot be redacted (SPEC section 10)")


def add_commands(sub: Any, config_sub: Any) -> None:
    """Add ``config propose|approve|submit`` to ``config_sub`` and ``redact`` to ``sub``."""
    def common(p: argparse.ArgumentParser, node_required: bool = True) -> None:
        p.add_argument("--node", required=node_required, metavar="URL", help="a node's API")
        p.add_argument("--ca", type=Path, help="CA file for an https node (or LEDGER_CA)")

    p = config_sub.add_parser(
        "propose", help="write a proposal for a new configuration and print what changes",
        description="Fetch the configuration in force from --node, check NEW.json (the whole "
        "new configuration in genesis.json's shapes, e.g. 'ledger config show' output edited) "
        "by the ledger's own rules, write PROPOSAL.json (version = current + 1, bound to the "
        "configuration in force) and print what changes: organisations, members and roles, "
        "validators and powers, policies, read policies, governance, witnesses. Then each "
        "admin runs 'ledger config approve', and anyone runs 'ledger config submit'.")
    common(p)
    p.add_argument("--config", required=True, type=Path, metavar="NEW.json",
                   help="the new configuration, whole")
    p.add_argument("--out", required=True, type=Path, metavar="PROPOSAL.json")
    p.add_argument("--force", action="store_true",
                   help="replace PROPOSAL.json if it exists (its approvals are lost)")
    p.set_defaults(func=cmd_config_propose)

    p = config_sub.add_parser(
        "approve", help="add this admin's approval (or a new validator's join) to a proposal",
        description="Print what the proposal changes against the configuration it was "
        "written for (fetched from --node), then add this key's signature to the file "
        "(atomically): an approval if the key holds the governance role in the configuration "
        "in force, a join signature if the change adds it as a validator. Refuses a proposal "
        "for another chain, a stale version (already applied or superseded) and any other "
        "key. Approving twice changes nothing. Without --node nothing is checked (an offline "
        "machine): the node judges at submission.")
    p.add_argument("proposal", type=Path, metavar="PROPOSAL.json")
    p.add_argument("--identity", required=True, type=Path, metavar="PEM",
                   help="the admin's (or new validator's node.pem) key file")
    common(p, node_required=False)
    p.set_defaults(func=cmd_config_approve)

    p = config_sub.add_parser(
        "submit", help="submit a proposal as a ledger.config (or ledger.redact) record",
        description="Sign the record carrying the proposal with --identity (any member of "
        "the configuration in force) and submit it; print its id (and height with --wait). "
        "A refusal prints 'rejected: CODE: reason' (e.g. approvals_insufficient, "
        "config_version) and exits 1. The change governs from the height after its block.")
    p.add_argument("proposal", type=Path, metavar="PROPOSAL.json")
    p.add_argument("--identity", required=True, type=Path, metavar="PEM")
    common(p)
    p.add_argument("--wait", action="store_true", help="wait until the record is committed")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds to wait (default 30)")
    p.set_defaults(func=cmd_config_submit)

    p = sub.add_parser(
        "redact", help="write a redaction proposal (SPEC section 10)",
        description="Write PROPOSAL.json asking every node to delete the off-chain payloads "
        "of sealed records --record ID...; with --identity an admin's key, its approval is "
        "added. Other admins add theirs with 'ledger config approve', then 'ledger config "
        "submit' sends the ledger.redact record.")
    common(p)
    p.add_argument("--identity", required=True, type=Path, metavar="PEM")
    p.add_argument("--record", required=True, nargs="+", metavar="ID",
                   help="record ids (hex) to redact")
    p.add_argument("--reason", required=True, metavar="TEXT", help="why, kept on the chain")
    p.add_argument("--out", required=True, type=Path, metavar="PROPOSAL.json")
    p.add_argument("--force", action="store_true",
                   help="replace PROPOSAL.json if it exists (its approvals are lost)")
    p.set_defaults(func=cmd_redact)
