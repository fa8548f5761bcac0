"""node/governance.py: proposals, the diff, approvals and their refusals (SPEC sections 8-10).

Everything is checked against the ledger's own rules: a proposal approved here becomes a
record ``apply_change`` (what every node runs) accepts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from ledger.config import CONFIG_TYPE, Config, apply_change, parse_change
from ledger.crypto import sha256
from ledger.encoding import b64encode
from ledger.errors import ApprovalsInsufficientError, ConfigInvalidError, LedgerError
from ledger.records import Record
from ledger.validation import check_redaction
from node.governance import (
    GovernanceError,
    Proposal,
    approve,
    approve_offline,
    config_from_answer,
    diff,
    fetch_config,
    propose_config,
    propose_redaction,
    read_proposal,
    record_of,
    write_proposal,
)
from tests.factory import config_doc, make_governed_fixture, seeded_key

FX = make_governed_fixture()  # org0..org2 admins, threshold 2 of 3
G = FX.genesis
NEWCOMER = seeded_key("newcomer")
NEW_VALIDATOR = seeded_key("validator-new")


def onboard() -> dict[str, Any]:
    """The genesis configuration plus organisation 'newco' with one writer."""
    doc = config_doc(G)
    doc["organizations"].append({"name": "newco", "members": [
        {"name": "gw", "pubkey": NEWCOMER.public.hex(), "roles": ["writer"]}]})
    return doc


def as_record(proposal: Proposal, config: Config) -> Record:
    type_, subject, payload = record_of(proposal)
    return Record.create(FX.admins[0], chain=config.chain_id, type=type_, subject=subject,
                         payload=payload, ts=1, nonce=7)


def test_a_proposal_approved_by_two_admins_is_a_change_the_ledger_accepts(
        tmp_path: Path) -> None:
    proposal = propose_config(G.config, onboard())
    assert proposal.kind == "config" and proposal.genesis_hash == G.hash
    path = tmp_path / "p.json"
    write_proposal(path, proposal)
    doc = json.loads(path.read_text())
    assert set(doc) == {"genesis_hash", "kind", "change", "approvals", "joins"}
    assert doc["change"] == b64encode(proposal.change) and doc["approvals"] == []
    assert read_proposal(path) == proposal

    first = approve(read_proposal(path), FX.admins[0], G.config)
    assert "  + organisation newco" in first.lines
    assert f"  + member newco/gw ({NEWCOMER.public.hex()[:8]}): writer" in first.lines
    assert any(line.startswith("approved by org0/admin0") for line in first.lines)
    assert "approvals: 1 organisation(s) (org0); 2 of 3 needed" in first.lines
    with pytest.raises(ApprovalsInsufficientError):  # one organisation is not enough
        apply_change(G.config, as_record(first.proposal, G.config))

    second = approve(first.proposal, FX.admins[1], G.config)
    assert second.lines[-1].endswith(": enough")
    new = apply_change(G.config, as_record(second.proposal, G.config))
    assert new.version == 1 and new.id == sha256(proposal.change)
    assert new.may_submit(NEWCOMER.public, "sensor.reading")


def test_approving_twice_does_not_duplicate() -> None:
    once = approve(propose_config(G.config, onboard()), FX.admins[0], G.config)
    twice = approve(once.proposal, FX.admins[0], G.config)
    assert twice.proposal == once.proposal and len(twice.proposal.approvals) == 1
    assert any(line.startswith("already approved by org0/admin0") for line in twice.lines)


def test_refusals_another_chain_stale_future_and_non_admin() -> None:
    proposal = propose_config(G.config, onboard())
    other = make_governed_fixture(validators=3).genesis  # another genesis, same admins
    with pytest.raises(GovernanceError, match="another chain"):
        approve(proposal, FX.admins[0], other.config)
    for key in (FX.writer, FX.outsider, FX.validator_keys[0]):  # not admins
        with pytest.raises(GovernanceError, match="not a member holding the governance role"):
            approve(proposal, key, G.config)

    # once version 1 is in force, the proposal for version 1 is stale (applied or superseded)
    done = approve(approve(proposal, FX.admins[0], G.config).proposal, FX.admins[1], G.config)
    v1 = apply_change(G.config, as_record(done.proposal, G.config))
    with pytest.raises(GovernanceError, match="stale proposal: it makes version 1, but "
                       "version 1 is already in force") as stale:
        approve(done.proposal, FX.admins[2], v1, prev=G.config)
    assert "+ organisation newco" in str(stale.value)  # what it was, for the operator
    # a proposal written against v1 is refused while genesis is still in force (future)
    ahead = propose_config(v1, config_doc(G))
    with pytest.raises(GovernanceError, match="version 2, but version 0 is in force"):
        approve(ahead, FX.admins[0], G.config)


def test_a_new_validator_signs_its_join_and_the_diff_shows_validators_and_power() -> None:
    doc = config_doc(G)
    doc["validators"][1]["power"] = 3
    removed = doc["validators"].pop(0)
    doc["validators"].append({"name": "node9", "pubkey": NEW_VALIDATOR.public.hex(),
                              "power": 1, "p2p": "127.0.0.1:8109"})
    doc["policies"]["lab.result"] = ["writer"]
    doc["governance"] = {"threshold": 3}
    proposal = propose_config(G.config, doc)
    lines = diff(G.config, parse_change(G.config, proposal.change))
    assert f"  - validator node0 ({removed['pubkey'][:8]}) power 1" in lines
    assert f"  + validator node9 ({NEW_VALIDATOR.public.hex()[:8]}) power 1 p2p " \
           "127.0.0.1:8109" in lines
    assert any("validator node1" in x and "power 1 -> 3" in x for x in lines)
    assert "  + policy lab.result: writer" in lines
    assert any("governance" in x and "threshold 2 of 3" in x and "threshold 3 of 3" in x
               for x in lines)

    signed = approve(proposal, NEW_VALIDATOR, G.config)
    assert [k for k, _ in signed.proposal.joins] == [NEW_VALIDATOR.public]
    assert signed.proposal.approvals == ()
    for admin in FX.admins[:2]:
        signed = approve(signed.proposal, admin, G.config)
    new = apply_change(G.config, as_record(signed.proposal, G.config))
    assert new.validators.by_key(NEW_VALIDATOR.public) is not None


def test_a_bad_new_configuration_fails_naming_the_field() -> None:
    doc = config_doc(G)
    doc["validators"][2]["power"] = 0
    with pytest.raises(ConfigInvalidError, match=r"validators\[2\]\.power"):
        propose_config(G.config, doc)
    doc = config_doc(G)
    doc["policies"]["ledger.config"] = ["writer"]
    with pytest.raises(LedgerError, match="policies"):
        propose_config(G.config, doc)
    with pytest.raises(GovernanceError, match="'consensus' is not part of the configuration"):
        propose_config(G.config, {**config_doc(G), "consensus": {}})
    with pytest.raises(GovernanceError, match="chain_id"):
        propose_config(G.config, {**config_doc(G), "chain_id": "other"})
    # `ledger config show` output with chain_id equal is fine
    assert propose_config(G.config, {**onboard(), "chain_id": G.chain_id}).change


def test_the_config_in_force_is_rebuilt_from_the_nodes_answers() -> None:
    proposal = approve(approve(propose_config(G.config, onboard()), FX.admins[0],
                               G.config).proposal, FX.admins[1], G.config).proposal
    v1 = apply_change(G.config, as_record(proposal, G.config))

    class FakeClient:
        base_url = "http://node"

        def genesis(self) -> bytes:
            return G.raw

        def config(self, version: int | None = None) -> dict[str, Any]:
            if version == 0:
                return {"version": 0, "change": None, "config": {}}
            return {"version": 1, "change": b64encode(proposal.change), "config": {}}

    genesis, current = fetch_config(FakeClient())  # type: ignore[arg-type]
    assert genesis.hash == G.hash
    assert (current.version, current.id, dict(current.members)) == (
        1, v1.id, dict(v1.members))
    assert config_from_answer(G, {"version": 0}) is G.config
    assert diff(current, v1) == ["configuration version 1 -> 1", "  (no change)"]


def test_redaction_proposal_is_approved_with_its_own_tag() -> None:
    ids = [sha256(b"a"), sha256(b"b")]
    proposal = propose_redaction(G.config, ids, "personal data")
    result = approve(proposal, FX.admins[2], G.config)
    assert result.lines[0] == 'redact 2 record(s): reason "personal data"'
    type_, _, payload = record_of(result.proposal)
    assert type_ == "ledger.redact" and set(payload) == {"change", "approvals"}
    redaction = check_redaction(G.config, as_record(result.proposal, G.config), 0)
    assert list(redaction.ids) == ids and redaction.orgs == {"org2"}
    with pytest.raises(GovernanceError, match="not a member holding"):
        approve(proposal, FX.writer, G.config)
    with pytest.raises(GovernanceError, match="named twice"):
        propose_redaction(G.config, [ids[0], ids[0]], "x")


def test_offline_approval_and_bad_files(tmp_path: Path) -> None:
    proposal = propose_config(G.config, onboard())
    signed = approve_offline(proposal, FX.admins[0]).proposal
    assert signed == approve(proposal, FX.admins[0], G.config).proposal
    assert record_of(signed)[0] == CONFIG_TYPE
    bad = tmp_path / "bad.json"
    for doc, match in (({**proposal.to_json(), "kind": "other"}, "kind"),
                       ({**proposal.to_json(), "extra": 1}, "unknown key 'extra'"),
                       ({**proposal.to_json(), "genesis_hash": "AB"}, "genesis_hash"),
                       ({**proposal.to_json(), "approvals": [{"pubkey": "00"}]},
                        r"approvals\[0\]")):
        bad.write_text(json.dumps(doc))
        with pytest.raises(LedgerError, match=match):
            read_proposal(bad)


def test_only_committed_sealed_records_are_redactable() -> None:
    from node.governance import check_redactable

    inline = Record.create(FX.writer, chain=G.chain_id, type="sensor.reading", subject="s",
                           payload=1, ts=1, nonce=1)
    answer = {"status": "committed", "envelope": b64encode(inline.envelope)}
    with pytest.raises(GovernanceError, match="is not sealed"):
        check_redactable(inline.id, answer)
    with pytest.raises(GovernanceError, match="not committed"):
        check_redactable(inline.id, {**answer, "status": "accepted"})
    with pytest.raises(GovernanceError, match="another record"):
        check_redactable(sha256(b"x"), answer)
    from tests.unit.test_redaction_rules import sealed

    rec = sealed(FX.writer, 5)
    check_redactable(rec.id, {"status": "committed", "envelope": b64encode(rec.envelope)})


def test_cluster_init_writes_a_genesis_that_can_be_governed(tmp_path: Path) -> None:
    """Three organisations, each with an admin key in clients/, two of three approve; the
    demo key (SPEC section 8) still writes every type."""
    from ledger.crypto import read_key_file
    from ledger.genesis import Genesis
    from node.cluster import init_cluster

    init_cluster(tmp_path, 1, base_port=20000)
    config = Genesis.load(tmp_path / "genesis.json").config
    assert (config.governance_role, config.threshold) == ("admin", 2)
    assert config.governing == {"demo-org", "supplier", "carrier"}
    for org in config.governing:
        member = config.governs(read_key_file(tmp_path / "clients" / f"{org}-admin.pem").public)
        assert member is not None and member.organization == org
    demo = read_key_file(tmp_path / "clients" / "demo.pem").public
    assert config.may_submit(demo, "any.type") and config.governs(demo) is None


def test_the_diff_shows_a_reordered_set_and_a_rotated_key() -> None:
    doc = config_doc(G)
    doc["validators"].reverse()
    doc["organizations"][0]["members"][0]["pubkey"] = NEWCOMER.public.hex()  # rotate
    lines = diff(G.config, parse_change(G.config, propose_config(G.config, doc).change))
    assert "  ~ validators reordered (the proposer order follows the list): node3, node2, " \
           "node1, node0" in lines
    assert f"  + member acme/gateway ({NEWCOMER.public.hex()[:8]}): writer" in lines
    assert f"  - member acme/gateway ({FX.writer.public.hex()[:8]}): revoked" in lines
    assert not any(line.startswith("  = validators") for line in lines)


@pytest.mark.parametrize("command", ["propose", "redact"])
def test_an_existing_proposal_file_is_not_replaced_without_force(
        tmp_path: Path, command: str) -> None:
    """A proposal file may hold approvals collected over days: `propose` and `redact` refuse
    to overwrite it (before asking any node), `--force` lets them."""
    import subprocess
    import sys

    out = tmp_path / "proposal.json"
    out.write_text('{"approvals": "collected"}')
    args = (["config", "propose", "--config", str(tmp_path / "new.json")] if command == "propose"
            else ["redact", "--identity", str(tmp_path / "k.pem"), "--record", "00" * 32,
                  "--reason", "r"])
    base = [sys.executable, "-m", "node.cli", *args, "--node", "http://127.0.0.1:9",
            "--out", str(out)]
    root = Path(__file__).resolve().parents[2]
    res = subprocess.run(base, capture_output=True, text=True, timeout=60, cwd=root)
    assert res.returncode != 0 and "already exists" in res.stderr, res.stderr
    assert out.read_text() == '{"approvals": "collected"}'
    forced = subprocess.run([*base, "--force"], capture_output=True, text=True, timeout=60,
                            cwd=root)
    assert "already exists" not in forced.stderr  # it went on (and failed later: no node)
    assert out.read_text() == '{"approvals": "collected"}'
