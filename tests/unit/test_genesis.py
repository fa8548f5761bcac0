"""genesis.json parsing and policy (SPEC section 5)."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest

from ledger.encoding import packb
from ledger.errors import GenesisError
from ledger.genesis import Genesis
from tests.factory import make_fixture

FX = make_fixture()


def doc() -> dict[str, Any]:
    return json.loads(FX.genesis.raw)


def parse(d: dict[str, Any]) -> Genesis:
    return Genesis.from_bytes(json.dumps(d).encode())


def test_hash_is_sha256_of_the_file_bytes() -> None:
    assert FX.genesis.hash == hashlib.sha256(FX.genesis.raw).digest()
    # Same content, different bytes: a different genesis hash.
    assert parse(doc()).hash != FX.genesis.hash


def test_validators_hash_follows_spec() -> None:
    expected = hashlib.sha256(
        packb([[k.public, 1] for k in FX.validator_keys])
    ).digest()
    assert FX.genesis.validators.hash == expected
    assert FX.genesis.validators.total_power == 4


def test_quorum_is_more_than_two_thirds() -> None:
    vs = FX.genesis.validators
    assert not vs.is_quorum(2)
    assert vs.is_quorum(3)


def test_may_submit_follows_policies() -> None:
    g = FX.genesis
    assert g.may_submit(FX.writer.public, "sensor.reading")
    assert g.may_submit(FX.writer.public, "quality.certificate")  # via "*"
    assert g.may_submit(FX.operator.public, "sensor.reading")
    assert not g.may_submit(FX.operator.public, "quality.certificate")  # not in "*"
    assert not g.may_submit(FX.outsider.public, "sensor.reading")
    assert not g.may_submit(FX.validator_keys[0].public, "sensor.reading")


def test_type_without_entry_and_no_star_is_refused() -> None:
    d = doc()
    del d["policies"]["*"]
    g = parse(d)
    assert not g.may_submit(FX.writer.public, "anything")


def test_a_refusal_says_why_in_one_line() -> None:
    d = doc()
    del d["policies"]["*"]
    d["policies"]["quality.certificate"] = ["certifier"]
    g = parse(d)
    assert g.refusal(FX.writer.public, "sensor.reading") is None
    typo = ('record type "sensor.readings" is not allowed by this chain\'s genesis; '
            "allowed types: quality.certificate, sensor.reading")
    # a type nobody may write: the types that are named, whoever signs
    assert g.refusal(FX.writer.public, "sensor.readings") == typo
    assert g.refusal(FX.outsider.public, "sensor.readings") == typo
    assert g.refusal(FX.outsider.public, "sensor.reading") == (
        f'signer {FX.outsider.public.hex()} is not authorised for type "sensor.reading": '
        "it is not a member of any organisation in this chain's genesis")
    assert g.refusal(FX.operator.public, "quality.certificate") == (
        f'signer {FX.operator.public.hex()} is not authorised for type "quality.certificate": '
        "its roles (operator) are not among those allowed (certifier)")
    # with "*", an unnamed type falls back to it (SPEC section 5): the role decides
    assert FX.genesis.refusal(FX.writer.public, "sensor.readings") is None
    assert "its roles (operator)" in str(FX.genesis.refusal(FX.operator.public, "x"))


def test_a_refusal_lists_at_most_twenty_types() -> None:
    d = doc()
    d["policies"] = {f"type.{i:02}": ["writer"] for i in range(25)}
    message = str(parse(d).refusal(FX.writer.public, "typo"))
    assert message.endswith("allowed types: " + ", ".join(f"type.{i:02}" for i in range(20))
                            + ", ... (5 more)")
    d["policies"] = {}
    assert str(parse(d).refusal(FX.writer.public, "typo")).endswith("allowed types: none")


def test_extra_keys_are_kept_not_required() -> None:
    d = doc()
    d["consensus"] = {"timeout_propose_ms": 1000}
    del d["validators"][0]["p2p"]
    g = parse(d)
    assert g.extra == {"consensus": {"timeout_propose_ms": 1000}}
    assert g.validators[0].p2p == ""


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d.pop("chain_id"), "missing 'chain_id'"),
        (lambda d: d.update(chain_id=""), "chain_id"),
        (lambda d: d.update(validators=[]), "at least one validator"),
        (lambda d: d["validators"][1].update(pubkey="AB" * 32), r"validators\[1\].pubkey"),
        (lambda d: d["validators"][1].update(pubkey="ab" * 31), r"validators\[1\].pubkey"),
        (lambda d: d["validators"][2].update(power=0), r"validators\[2\].power"),
        (lambda d: d["validators"][2].update(power=True), r"validators\[2\].power"),
        (lambda d: d["validators"][3].update(pubkey=d["validators"][0]["pubkey"]),
         "share a public key"),
        (lambda d: d["organizations"][0]["members"][0].pop("roles"), "missing 'roles'"),
        (lambda d: d["organizations"][1]["members"].append(
            dict(d["organizations"][0]["members"][0])), "already belongs to acme/gateway"),
        (lambda d: d["policies"].update({"Bad Type": ["writer"]}), "not a valid record type"),
        (lambda d: d["policies"].update({"x": "writer"}), "list of role names"),
    ],
)
def test_malformed_genesis_names_the_problem(mutate, message) -> None:  # type: ignore[no-untyped-def]
    d = doc()
    mutate(d)
    with pytest.raises(GenesisError, match=message):
        parse(d)


def test_not_json_and_duplicate_keys_are_rejected(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(GenesisError, match="not valid JSON"):
        Genesis.from_bytes(b"{nope")
    with pytest.raises(GenesisError, match="appears twice"):
        Genesis.from_bytes(b'{"chain_id": "a", "chain_id": "b"}')
    with pytest.raises(GenesisError, match="cannot read"):
        Genesis.load(tmp_path / "missing.json")
    path = FX.write_genesis(tmp_path)
    assert Genesis.load(path).hash == FX.genesis.hash
