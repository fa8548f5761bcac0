"""SPEC section 9, rule by rule: the configuration as a value, changes by approved records,
and the history of versions (ledger/config.py), through the one validity rule
(ledger/validation.py)."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from ledger.config import (
    CONFIG_TYPE,
    JOIN_TAG,
    Config,
    ConfigHistory,
    apply_change,
    approval_message,
)
from ledger.crypto import RECORD_TAG, PrivateKey, sha256
from ledger.encoding import packb
from ledger.errors import (
    ApprovalInvalidError,
    ApprovalsInsufficientError,
    BlockError,
    ConfigDuplicateError,
    ConfigInvalidError,
    ConfigVersionError,
    GenesisError,
    JoinInvalidError,
    ReservedTypeError,
    UnauthorisedError,
)
from ledger.genesis import Genesis
from ledger.records import Record, RecordBody
from ledger.validation import check_header_fields, check_record, check_records
from tests.factory import (
    change_bytes,
    change_record,
    config_doc,
    make_fixture,
    make_governed_fixture,
    seeded_key,
)

FX = make_governed_fixture()
C0 = FX.genesis.config
A0, A1, A2 = FX.admins
NEW_VAL = seeded_key("validator-new")


def doc() -> dict[str, Any]:
    return copy.deepcopy(config_doc(FX.genesis))


def with_new_validator(d: dict[str, Any], key: PrivateKey = NEW_VAL) -> dict[str, Any]:
    d["validators"].append({"name": "node-new", "pubkey": key.public.hex(), "power": 2})
    return d


def apply(change: bytes, *, config: Config = C0, signer: PrivateKey = A0,
          approvers: list[PrivateKey] | None = None, **kw: Any) -> Config:
    rec = change_record(config, signer, change,
                        approvers=[A0, A1] if approvers is None else approvers, **kw)
    check_record(config, rec)  # the record's own signature and chain
    return apply_change(config, rec)


def genesis_with(**changes: Any) -> Genesis:
    d = json.loads(FX.genesis.raw)
    d.update(changes)
    return Genesis.from_bytes(json.dumps(d).encode())


# ---- the value ----------

def test_genesis_is_version_0_named_by_its_hash_with_default_governance() -> None:
    assert C0.version == 0 and C0.id == FX.genesis.hash
    assert C0.governance_role == "admin" and C0.governing == {"org0", "org1", "org2"}
    assert C0.threshold == 2  # n // 2 + 1 of 3
    assert make_governed_fixture(orgs=4).genesis.config.threshold == 3
    assert FX.genesis.validators is C0.validators


def test_a_genesis_without_governing_organisations_is_valid_and_can_never_change() -> None:
    v1 = make_fixture().genesis.config
    assert v1.threshold == 0 and not v1.governing
    rec = change_record(v1, make_fixture().writer, change_bytes(v1, config_doc(make_fixture()
                                                                                .genesis)),
                        approvers=[])
    with pytest.raises(ApprovalsInsufficientError, match="cannot be changed"):
        apply_change(v1, rec)


@pytest.mark.parametrize("threshold", [0, 4, -1])
def test_the_threshold_must_be_within_1_and_the_governing_organisations(threshold: int) -> None:
    with pytest.raises(GenesisError, match="threshold"):
        genesis_with(governance={"role": "admin", "threshold": threshold})
    assert genesis_with(governance={"threshold": 3}).config.threshold == 3
    assert genesis_with(governance={"role": "writer"}).config.governing == {"acme"}


def test_reserved_types_cannot_be_named_by_policies_and_star_does_not_cover_them() -> None:
    with pytest.raises(GenesisError, match="reserved"):
        genesis_with(policies={"ledger.config": ["admin"]})
    with pytest.raises(GenesisError, match="reserved"):
        genesis_with(read_policies={"ledger.x": ["admin"]})
    # policies have "*": ["writer"], yet a ledger.* record by the writer is not valid
    rec = Record.create(FX.writer, chain=C0.chain_id, type="ledger.note", subject="s",
                        payload=1, ts=0, nonce=1)
    assert not C0.may_submit(FX.writer.public, "ledger.note")
    with pytest.raises(ReservedTypeError):
        check_record(C0, rec)


def test_genesis_rejects_a_small_order_key_and_repeated_roles() -> None:
    d = json.loads(FX.genesis.raw)
    d["validators"][0]["pubkey"] = "01" + "00" * 31  # the identity point: small order
    with pytest.raises(GenesisError, match="not a valid Ed25519 public key"):
        Genesis.from_bytes(json.dumps(d).encode())
    d = json.loads(FX.genesis.raw)
    d["organizations"][0]["members"][0]["roles"] = ["writer", "writer"]
    with pytest.raises(GenesisError, match="twice"):
        Genesis.from_bytes(json.dumps(d).encode())


# ---- a valid change ----------

def test_a_valid_change_makes_the_next_version_named_by_its_bytes() -> None:
    change = change_bytes(C0, with_new_validator(doc()))
    new = apply(change, joiners=[NEW_VAL])
    assert new.version == 1 and new.id == sha256(change)
    assert new.chain_id == C0.chain_id and new.genesis_hash == C0.genesis_hash
    assert len(new.validators) == 5 and new.validators[4].power == 2
    assert new.validators.hash != C0.validators.hash
    # and a second change must name the first
    d = doc()
    d["validators"] = d["validators"][1:]
    second = apply(change_bytes(new, d), config=new, approvers=[A1, A2], nonce=7)
    assert second.version == 2 and len(second.validators) == 3


def test_the_signer_needs_only_be_a_member_and_counts_only_if_listed() -> None:
    change = change_bytes(C0, doc())
    assert apply(change, signer=FX.writer).version == 1  # a writer may submit it
    with pytest.raises(ApprovalsInsufficientError):
        apply(change, signer=A0, approvers=[A1])  # the signer is not an approval
    with pytest.raises(UnauthorisedError, match="not a member"):
        apply(change, signer=FX.outsider)


# ---- version and prev ----------

@pytest.mark.parametrize("version", [0, 2, 7])
def test_a_stale_or_future_version_is_config_version(version: int) -> None:
    with pytest.raises(ConfigVersionError, match="version"):
        apply(change_bytes(C0, doc(), version=version))


def test_a_prev_that_does_not_name_the_configuration_in_force_is_config_version() -> None:
    with pytest.raises(ConfigVersionError, match="prev"):
        apply(change_bytes(C0, doc(), prev=sha256(b"another")))
    new = apply(change_bytes(C0, doc()))
    with pytest.raises(ConfigVersionError, match="prev"):  # version 2 written against genesis
        apply(change_bytes(new, doc(), prev=C0.id), config=new)


# ---- strict decoding ----------

def _set(path: list[Any], value: Any) -> dict[str, Any]:
    d = doc()
    target: Any = d
    for p in path[:-1]:
        target = target[p]
    target[path[-1]] = value
    return d


@pytest.mark.parametrize("path,value", [
    (["extra"], 1),
    (["validators", 0, "weight"], 1),
    (["organizations", 0, "members", 0, "email"], "x"),
    (["organizations", 0, "city"], "x"),
    (["governance"], {"role": "admin", "threshold": 2, "quorum": 1}),
    (["validators", 0, "power"], None),
    (["validators", 0, "power"], 1.0),
    (["validators", 0, "power"], True),
    (["validators", 0, "pubkey"], b"\x00" * 32),
    (["validators"], []),
    (["policies", "sensor.reading"], "writer"),
    (["validators", 1, "name"], "node0"),
], ids=["top-key", "validator-key", "member-key", "org-key", "governance-key", "nil", "float",
        "bool", "bin-key", "no-validators", "roles-not-list", "repeated-name"])
def test_a_change_holds_exactly_the_listed_keys_and_types(path: list[Any], value: Any) -> None:
    with pytest.raises(ConfigInvalidError):
        apply(change_bytes(C0, _set(path, value)))


def test_a_change_with_a_repeated_key_at_any_depth_is_config_invalid() -> None:
    d = _set(["governance"], {"role": "admin", "threshold": 2})
    good = change_bytes(C0, d)
    inner = packb({"role": "admin", "threshold": 2})
    assert good.count(inner) == 1
    repeated = good.replace(inner, packb({"role": "admin", "x": 2}).replace(
        packb("x"), packb("role")))  # {"role": "admin", "role": 2}, two levels down
    assert apply(good).version == 1
    with pytest.raises(ConfigInvalidError, match="appears twice"):
        apply(repeated)
    top = packb({"version": 1})
    with pytest.raises(ConfigInvalidError, match="appears twice"):
        apply(b"\x82" + top[1:] + top[1:])
    with pytest.raises(ConfigInvalidError):
        apply(b"\xc1")


def test_the_new_configuration_obeys_the_reserved_type_and_threshold_rules() -> None:
    with pytest.raises(ReservedTypeError):
        apply(change_bytes(C0, _set(["policies", "ledger.config"], ["admin"])))
    with pytest.raises(ReservedTypeError):
        apply(change_bytes(C0, _set(["read_policies"], {"ledger.redact": ["admin"]})))
    with pytest.raises(ConfigInvalidError, match="threshold"):
        apply(change_bytes(C0, _set(["governance"], {"role": "admin", "threshold": 4})))


# ---- approvals ----------

def test_approvals_from_fewer_organisations_than_the_threshold_are_insufficient() -> None:
    with pytest.raises(ApprovalsInsufficientError, match="2 of 3"):
        apply(change_bytes(C0, doc()), approvers=[A0])


def test_two_admins_of_one_organisation_count_once() -> None:
    d = json.loads(FX.genesis.raw)
    extra = seeded_key("admin-0b")
    d["organizations"][2]["members"].append(
        {"name": "admin0b", "pubkey": extra.public.hex(), "roles": ["admin"]})
    c = Genesis.from_bytes(json.dumps(d).encode()).config
    with pytest.raises(ApprovalsInsufficientError):
        apply(change_bytes(c, doc()), config=c, approvers=[A0, extra])
    assert apply(change_bytes(c, doc()), config=c, approvers=[extra, A1]).version == 1


@pytest.mark.parametrize("case", ["duplicate", "not-admin", "outsider", "bad-sig", "other-chain",
                                  "join-domain"])
def test_any_bad_approval_invalidates_the_record(case: str) -> None:
    change = change_bytes(C0, doc())
    msg = approval_message(C0.genesis_hash, change)
    pairs = [[A0.public, A0.sign(msg)], [A1.public, A1.sign(msg)], [A2.public, A2.sign(msg)]]
    if case == "duplicate":
        pairs.append([A0.public, A0.sign(msg)])
    elif case == "not-admin":
        pairs.append([FX.writer.public, FX.writer.sign(msg)])
    elif case == "outsider":
        pairs.append([FX.outsider.public, FX.outsider.sign(msg)])
    elif case == "bad-sig":
        pairs[2][1] = A1.sign(msg)
    elif case == "other-chain":
        pairs[2][1] = A2.sign(approval_message(sha256(b"other genesis"), change))
    elif case == "join-domain":
        pairs[2][1] = A2.sign(approval_message(C0.genesis_hash, change, JOIN_TAG))
    with pytest.raises(ApprovalInvalidError):
        apply(change, approvals=pairs)


# ---- joins ----------

def test_joins_are_exactly_one_valid_signature_per_new_validator_key() -> None:
    change = change_bytes(C0, with_new_validator(doc()))
    assert apply(change, joiners=[NEW_VAL]).version == 1
    with pytest.raises(JoinInvalidError, match="no join signature"):
        apply(change)
    with pytest.raises(JoinInvalidError, match="twice"):
        apply(change, joiners=[NEW_VAL, NEW_VAL])
    with pytest.raises(JoinInvalidError, match="not a validator key this change adds"):
        apply(change, joiners=[NEW_VAL, FX.validator_keys[0]])
    wrong = [[NEW_VAL.public, NEW_VAL.sign(approval_message(C0.genesis_hash, change))]]
    with pytest.raises(JoinInvalidError, match="does not verify"):
        apply(change, joins=wrong)  # signed in the approval domain, not the join domain
    with pytest.raises(JoinInvalidError):  # no join may be listed when no key is added
        apply(change_bytes(C0, doc()), joiners=[NEW_VAL])


def test_a_payload_with_other_keys_is_config_invalid() -> None:
    change = change_bytes(C0, doc())
    msg = approval_message(C0.genesis_hash, change)
    rec = Record.create(A0, chain=C0.chain_id, type=CONFIG_TYPE, subject="config",
                        payload={"change": change, "approvals": [[A0.public, A0.sign(msg)]],
                                 "joins": [], "note": "x"}, ts=0, nonce=3)
    with pytest.raises(ConfigInvalidError, match="exactly"):
        apply_change(C0, rec)


def test_a_sealed_reserved_record_is_reserved_type() -> None:
    body = RecordBody(C0.chain_id, CONFIG_TYPE, "config", None, 0, 1, A0.public,
                      payload_digest=b"\x11" * 32)
    raw = body.to_wire()
    sig = A0.sign(RECORD_TAG + raw)
    rec = Record.from_wire(packb([raw, sig]))
    assert rec.body.sealed
    with pytest.raises(ReservedTypeError, match="inline"):
        check_record(C0, rec)


# ---- the block rule ----------

def test_one_change_per_block_and_the_block_says_what_it_changes() -> None:
    change = change_bytes(C0, doc())
    first = change_record(C0, A0, change, approvers=[A0, A1], nonce=1)
    second = change_record(C0, A1, change, approvers=[A0, A1], nonce=2)
    effects = check_records(C0, [first])
    assert effects.config is not None and effects.config.version == 1
    assert check_records(FX.genesis, []).config is None
    with pytest.raises(ConfigDuplicateError, match="record 1"):
        check_records(C0, [first, second])


def test_members_and_headers_follow_the_configuration_in_force() -> None:
    d = doc()
    newcomer = seeded_key("newcomer")
    d["organizations"][0]["members"] = [  # the writer is revoked, a newcomer added
        {"name": "gw2", "pubkey": newcomer.public.hex(), "roles": ["writer"]}]
    d["validators"] = d["validators"][:3]
    new = apply(change_bytes(C0, d))
    rec_old = Record.create(FX.writer, chain=C0.chain_id, type="sensor.reading", subject="s",
                            payload=1, ts=0, nonce=1)
    rec_new = Record.create(newcomer, chain=C0.chain_id, type="sensor.reading", subject="s",
                            payload=1, ts=0, nonce=1)
    check_record(C0, rec_old)
    with pytest.raises(UnauthorisedError):
        check_record(C0, rec_new)
    check_record(new, rec_new)
    with pytest.raises(UnauthorisedError, match="version 1"):
        check_record(new, rec_old)

    class H:
        chain = C0.chain_id
        proposer = 0
        validators_hash = C0.validators.hash

    check_header_fields(C0, H())  # type: ignore[arg-type]
    with pytest.raises(BlockError, match="version 1"):
        check_header_fields(new, H())  # type: ignore[arg-type]


# ---- the history ----------

def test_the_history_says_which_configuration_governs_each_height() -> None:
    v1 = apply(change_bytes(C0, with_new_validator(doc())), joiners=[NEW_VAL])
    d = doc()
    d["validators"] = d["validators"][:1]
    v2 = apply(change_bytes(v1, d), config=v1)
    history = ConfigHistory(C0)
    history.append(5, v1)   # committed at 5: governs from 6
    history.append(6, v2)   # governs from 7
    assert [history.at(h).version for h in (0, 1, 5, 6, 7, 100)] == [0, 0, 0, 1, 2, 2]
    assert history.validators_at(6) == v1.validators and len(history.validators_at(9)) == 1
    # proposer priorities restart where a new set takes force (ledger.consensus.proposer)
    assert (history.validators_at(5).since, history.validators_at(6).since,
            history.validators_at(7).since) == (1, 6, 7)
    assert history.latest == v2 and history.start(1) == 6 and len(history) == 3
    with pytest.raises(ValueError):
        history.append(9, v1)  # not the next version
    history.truncate(5)  # the block of height 6 (and its change) rolled back
    assert history.latest == v1
    history.truncate(0)
    assert history.latest is C0
    with pytest.raises(ValueError):
        ConfigHistory(v1)
