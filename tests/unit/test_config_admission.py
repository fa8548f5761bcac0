"""Each bad configuration change is refused at admission with its code, through the node's
real HTTP API (SPEC sections 7 and 9), and never reaches the chain; a block holding two
changes, proposed by a crafted proposer, is prevoted nil and never committed by an honest
validator."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest

from ledger.blocks import PRECOMMIT, PREVOTE, Vote, build_header
from ledger.config import CONFIG_TAG, CONFIG_TYPE, JOIN_TAG, approval_message
from ledger.consensus import (
    Broadcast,
    CommitBlock,
    ConsensusConfig,
    ConsensusCore,
    MessageReceived,
    Proposal,
    SignedVote,
    Start,
)
from ledger.crypto import PrivateKey, sha256
from ledger.records import Record
from ledger.store import MemoryStore
from tests.factory import (
    ChainBuilder,
    change_bytes,
    change_record,
    config_doc,
    make_governed_fixture,
    seeded_key,
)
from tests.inprocess import InProcessApi, msgpack_post, now_ms
from tests.unit.consensus_helpers import ListMempool
from tests.unit.test_store_config import revoke_writer

FX = make_governed_fixture()  # three governing organisations: the threshold is 2
C0 = FX.genesis.config
A0, A1, A2 = FX.admins
NEW_VAL = seeded_key("validator-new")


def doc(**changes: Any) -> dict[str, Any]:
    d = copy.deepcopy(config_doc(FX.genesis))
    d.update(changes)
    return d


def with_new_validator() -> dict[str, Any]:
    d = doc()
    d["validators"].append({"name": "node-new", "pubkey": NEW_VAL.public.hex(), "power": 1})
    return d


def signed(change: bytes, *, signer: PrivateKey = A0, approvers: tuple[PrivateKey, ...] = (A0, A1),
           approvals: list[list[bytes]] | None = None, joiners: tuple[PrivateKey, ...] = (),
           joins: list[list[bytes]] | None = None, extra: dict[str, Any] | None = None,
           ) -> Record:
    """A ``ledger.config`` record stamped now (admission checks the clock)."""
    msg = approval_message(C0.genesis_hash, change, CONFIG_TAG)
    jmsg = approval_message(C0.genesis_hash, change, JOIN_TAG)
    payload = {"change": change,
               "approvals": approvals if approvals is not None
               else [[k.public, k.sign(msg)] for k in approvers],
               "joins": joins if joins is not None else [[k.public, k.sign(jmsg)] for k in joiners],
               **(extra or {})}
    return Record.create(signer, chain=C0.chain_id, type=CONFIG_TYPE, subject="config",
                         payload=payload, ts=now_ms(), nonce=int.from_bytes(sha256(change)[:6]))


def _bad_signature() -> Record:
    change = change_bytes(C0, doc())
    msg = approval_message(C0.genesis_hash, change)
    return signed(change, approvals=[[A0.public, A0.sign(msg)], [A1.public, A0.sign(msg)]])


def _other_chain() -> Record:
    change = change_bytes(C0, doc())
    other = approval_message(sha256(b"another chain's genesis"), change)
    return signed(change, approvals=[[A0.public, A0.sign(approval_message(
        C0.genesis_hash, change))], [A1.public, A1.sign(other)]])


def _join_domain() -> Record:  # a join signature offered as an approval
    change = change_bytes(C0, doc())
    return signed(change, approvals=[
        [A0.public, A0.sign(approval_message(C0.genesis_hash, change))],
        [A1.public, A1.sign(approval_message(C0.genesis_hash, change, JOIN_TAG))]])


def _approval_for_join() -> Record:  # an approval-domain signature offered as a join
    change = change_bytes(C0, with_new_validator())
    return signed(change, joins=[[NEW_VAL.public,
                                  NEW_VAL.sign(approval_message(C0.genesis_hash, change))]])


CASES: list[tuple[str, Callable[[], Record], str]] = [
    ("stale version", lambda: signed(change_bytes(C0, doc(), version=0)), "config_version"),
    ("future version", lambda: signed(change_bytes(C0, doc(), version=2)), "config_version"),
    ("prev names another configuration",
     lambda: signed(change_bytes(C0, doc(), prev=sha256(b"x"))), "config_version"),
    ("approvals below the threshold",
     lambda: signed(change_bytes(C0, doc()), approvers=(A0,)), "approvals_insufficient"),
    ("no approval at all",
     lambda: signed(change_bytes(C0, doc()), approvers=()), "approvals_insufficient"),
    ("a duplicated approver",
     lambda: signed(change_bytes(C0, doc()), approvers=(A0, A1, A0)), "approval_invalid"),
    ("an approver without the governance role",
     lambda: signed(change_bytes(C0, doc()), approvers=(A0, A1, FX.writer)),
     "approval_invalid"),
    ("an approver who is no member",
     lambda: signed(change_bytes(C0, doc()), approvers=(A0, A1, FX.outsider)),
     "approval_invalid"),
    ("a bad approval signature", _bad_signature, "approval_invalid"),
    ("an approval for another chain", _other_chain, "approval_invalid"),
    ("a join signature as an approval", _join_domain, "approval_invalid"),
    ("a reserved type in policies",
     lambda: signed(change_bytes(C0, doc(policies={"ledger.config": ["admin"], "*": ["writer"]}))),
     "reserved_type"),
    ("a reserved type in read_policies",
     lambda: signed(change_bytes(C0, doc(read_policies={"ledger.redact": ["admin"]}))),
     "reserved_type"),
    ("an empty validator set",
     lambda: signed(change_bytes(C0, doc(validators=[]))), "config_invalid"),
    ("a threshold above the governing organisations",
     lambda: signed(change_bytes(C0, doc(governance={"role": "admin", "threshold": 4}))),
     "config_invalid"),
    ("an unknown key in the change",
     lambda: signed(change_bytes(C0, doc(consensus={"timeout_propose_ms": 1}))),
     "config_invalid"),
    ("a payload with an extra key",
     lambda: signed(change_bytes(C0, doc()), extra={"note": "x"}), "config_invalid"),
    ("a missing join", lambda: signed(change_bytes(C0, with_new_validator())), "join_invalid"),
    ("a join by a key the change does not add",
     lambda: signed(change_bytes(C0, doc()), joiners=(FX.validator_keys[0],)), "join_invalid"),
    ("a join twice",
     lambda: signed(change_bytes(C0, with_new_validator()), joiners=(NEW_VAL, NEW_VAL)),
     "join_invalid"),
    ("an approval signature as a join", _approval_for_join, "join_invalid"),
    ("a signer who is no member",
     lambda: signed(change_bytes(C0, doc()), signer=FX.outsider), "unauthorized"),
]


@pytest.mark.asyncio
@pytest.mark.parametrize(("make", "code"), [(m, c) for _, m, c in CASES],
                         ids=[name for name, _, _ in CASES])
async def test_a_bad_change_is_refused_at_admission_with_its_code_and_never_committed(
        make: Callable[[], Record], code: str) -> None:
    api = InProcessApi(FX)
    bad = make()
    async with api.client() as http:
        resp = await http.post("/v1/records", **msgpack_post([bad.envelope]))
        assert resp.status_code == 202, resp.text
        (result,) = resp.json()["results"]
        assert (result["status"], result.get("error")) == ("rejected", code), result
        assert result["detail"]
        # nothing pending: the next block holds only an ordinary record, never the change
        other = api.record(key=FX.operator)
        await http.post("/v1/records", **msgpack_post([other.envelope]))
        block = api.commit()
        assert block is not None and [r.id for r in block.records] == [other.id]
        assert (await http.get(f"/v1/records/{bad.id.hex()}")).status_code == 404
        assert (await http.get("/v1/config")).json()["version"] == 0
        # and the same change, done right, is admitted (each case breaks one rule only)
        good = signed(change_bytes(C0, doc()))
        resp = await http.post("/v1/records", **msgpack_post([good.envelope]))
        assert resp.json()["results"][0]["status"] == "accepted"


# ---- two changes in one block, from a crafted proposer ---------------------------------

def test_an_honest_validator_prevotes_nil_on_two_changes_and_never_commits_them() -> None:
    store = MemoryStore(FX.genesis.hash, config=FX.genesis.config)
    builder = ChainBuilder(FX, store)
    builder.add(1)
    assert store.history is not None
    cores = {i: ConsensusCore(FX.genesis, store, ListMempool(), key=FX.validator_keys[i],
                              config=ConsensusConfig(), config_at=store.history.at)
             for i in range(4)}
    height = 2
    proposer = cores[0].proposer(height, 0)
    honest = next(i for i in cores if i != proposer)
    core = cores[honest]
    tip = store.block(1)
    assert tip is not None
    start_ms = tip.header.time_ms + 500
    core.handle(Start(start_ms))
    assert core.height == height

    # The crafted proposer (a real validator key) signs a block of two valid changes.
    first = change_record(C0, A0, revoke_writer(FX, C0), approvers=[A0, A1], nonce=7)
    second = change_record(C0, A1, change_bytes(C0, doc()), approvers=[A1, A2], nonce=8)
    records = (first, second)
    header = build_header(
        chain=C0.chain_id, height=height, time_ms=start_ms + 100,
        prev_hash=store.tip_hash() or FX.genesis.hash, records=records, log=store.log,
        proposer=proposer, validators_hash=C0.validators.hash)
    prop = Proposal.sign(C0.chain_id, 0, -1, header, records, proposer,
                         FX.validator_keys[proposer], tip.cert)
    assert not core.is_valid(prop)
    actions = core.handle(MessageReceived(99, prop))
    prevotes = [a.message.vote.block_hash for a in actions
                if isinstance(a, Broadcast) and isinstance(a.message, SignedVote)
                and a.message.vote.kind == PREVOTE]
    assert prevotes == [None]  # nil: the block is invalid
    # Even with every other validator precommitting it, the honest one never commits it.
    for i in range(4):
        if i == honest:
            continue
        vote = Vote(C0.chain_id, PRECOMMIT, height, 0, header.hash)
        actions += core.handle(MessageReceived(99, SignedVote.sign(
            vote, i, FX.validator_keys[i])))
    assert not any(isinstance(a, CommitBlock) for a in actions)
    assert core.height == height and store.height == 1
    # Each change alone is a valid block: the refusal is the one-change-per-block rule.
    for one in records:
        alone = build_header(
            chain=C0.chain_id, height=height, time_ms=start_ms + 100,
            prev_hash=store.tip_hash() or FX.genesis.hash, records=(one,), log=store.log,
            proposer=proposer, validators_hash=C0.validators.hash)
        core.check_block(alone, (one,))
