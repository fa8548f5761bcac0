"""examples/genesis.example.json (docs/genesis.md) is a valid genesis meaning what the guide
says it means."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ledger.crypto import read_key_file
from ledger.errors import GenesisError, UnauthorisedError
from ledger.genesis import Genesis
from ledger.records import Record
from ledger.validation import check_records
from node.cluster import DEMO_TYPES, init_cluster
from node.config import NodeConfig
from node.mempool import check, decode

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "genesis.example.json"


def _member(genesis: Genesis, org: str, name: str) -> bytes:
    (key,) = [k for k, m in genesis.members.items() if m.organization == org and m.name == name]
    return key


def test_the_example_parses_and_its_policies_mean_what_the_guide_says() -> None:
    genesis = Genesis.load(EXAMPLE)
    assert genesis.chain_id == "acme-supply-1"
    assert len(genesis.validators) == 4 and genesis.validators.total_power == 4
    assert genesis.validators.is_quorum(3) and not genesis.validators.is_quorum(2)
    assert "*" not in genesis.policies  # every type explicit: a typo is refused
    gateway = _member(genesis, "acme", "plant-7-gateway")
    goods_in = _member(genesis, "boltco", "goods-in")
    assert genesis.may_submit(gateway, "sensor.reading")
    assert not genesis.may_submit(gateway, "sensor.readings")  # a typo
    assert not genesis.may_submit(gateway, "quality.certificate")
    assert genesis.may_submit(goods_in, "shipment.received")
    assert genesis.may_submit(goods_in, "quality.inspection")  # two roles
    assert not genesis.may_submit(genesis.validators[0].pubkey, "sensor.reading")
    # the consensus section is one a node accepts
    config = NodeConfig.consensus_config(None, genesis)  # type: ignore[arg-type]
    assert config.timeout_propose_ms == 3000 and config.create_empty_blocks is False


def test_cluster_init_authorises_every_type_as_the_spec_says(tmp_path: Path) -> None:
    """SPEC section 8: without --types, the demo key may write every record type."""
    init_cluster(tmp_path, 1, base_port=20000)
    genesis = Genesis.load(tmp_path / "genesis.json")
    assert genesis.policies == {"*": frozenset({"writer"})}
    demo = read_key_file(tmp_path / "clients" / "demo.pem")
    assert genesis.may_submit(demo.public, "any.type") and genesis.may_submit(
        demo.public, "sensor.readings")


def test_cluster_init_types_option(tmp_path: Path) -> None:
    """`--types example` is DEMO_TYPES (what make run asks for); a list is taken as given;
    something that is not a record type is a one-line usage error (exit 2)."""
    from node.cli import main

    assert main(["cluster", "init", str(tmp_path / "a"), "--nodes", "1", "--base-port",
                 "20000", "--types", "example"]) == 0
    assert set(Genesis.load(tmp_path / "a" / "genesis.json").policies) == set(DEMO_TYPES)
    assert main(["cluster", "init", str(tmp_path / "b"), "--nodes", "1", "--base-port",
                 "20000", "--types", "lab.result, lab.sample"]) == 0
    assert set(Genesis.load(tmp_path / "b" / "genesis.json").policies) == {
        "lab.result", "lab.sample"}
    with pytest.raises(SystemExit) as usage:
        main(["cluster", "init", str(tmp_path / "c"), "--nodes", "1", "--types", "Lab Result"])
    assert usage.value.code == 2 and not (tmp_path / "c").exists()


def test_the_demo_genesis_names_the_example_types_and_refuses_a_typo(tmp_path: Path) -> None:
    """`make run`'s genesis (`cluster init --types example`): explicit types, no "*"."""
    init_cluster(tmp_path, 1, base_port=20000, types=DEMO_TYPES)
    genesis = Genesis.load(tmp_path / "genesis.json")
    assert set(genesis.policies) == set(DEMO_TYPES) == set(Genesis.load(EXAMPLE).policies)
    demo = read_key_file(tmp_path / "clients" / "demo.pem")
    assert all(genesis.may_submit(demo.public, t) for t in DEMO_TYPES)
    typo = Record.create(demo, chain=genesis.chain_id, type="sensor.readings", subject="s",
                         payload=1, ts=1, nonce=1)
    why = ('record type "sensor.readings" is not allowed by this chain\'s genesis; allowed '
           "types: quality.certificate, quality.inspection, sensor.reading, "
           "shipment.dispatched, shipment.in-transit, shipment.received")
    # admission (what the API answers) and consensus/audit share the rule and its words
    result = check(genesis, decode(typo.envelope))
    assert (result.status, result.error, result.detail) == ("rejected", "unauthorized", why)
    with pytest.raises(UnauthorisedError) as refused:
        check_records(genesis, [typo])
    assert str(refused.value) == f"record 0 ({why})"


@pytest.mark.parametrize(("change", "message"), [
    (lambda d: d.update(chain_id="acme supply"), "chain_id"),
    (lambda d: d["validators"][1].update(pubkey=d["validators"][0]["pubkey"]),
     "share a public key"),
    (lambda d: d["validators"][0].update(power=0), "power"),
    (lambda d: d["organizations"][1].update(name="acme"), "appears twice"),
    (lambda d: d["organizations"][1]["members"][0].update(
        pubkey=d["organizations"][0]["members"][0]["pubkey"]), "already belongs to"),
    (lambda d: d["policies"].update({"Sensor.Reading": ["sensor"]}), "not a valid record type"),
    (lambda d: d["policies"].update({"sensor.reading": "sensor"}), "list of role names"),
    (lambda d: d.pop("policies"), "missing 'policies'"),
])
def test_the_rules_the_guide_lists_are_enforced(change, message) -> None:  # type: ignore[no-untyped-def]
    doc = json.loads(EXAMPLE.read_text())
    change(doc)
    with pytest.raises(GenesisError, match=message):
        Genesis.from_bytes(json.dumps(doc).encode())


def test_the_privacy_template_makes_a_cluster_with_its_read_policy(tmp_path: Path) -> None:
    """examples/privacy-template.json (docs/privacy.md) gives a cluster whose batch.recipe
    payloads plant.qa and plant.operator may read and supplier.viewer may not."""
    init_cluster(tmp_path / "c", 4, template=EXAMPLE.with_name("privacy-template.json"))
    config = Genesis.load(tmp_path / "c" / "genesis.json").config
    key = {name: read_key_file(tmp_path / "c" / "clients" / f"{name}.pem").public
           for name in ("plant.qa", "plant.operator", "supplier.viewer")}
    assert config.may_read(key["plant.qa"], "batch.recipe")
    assert config.may_read(key["plant.operator"], "batch.recipe")
    assert not config.may_read(key["supplier.viewer"], "batch.recipe")
    assert not config.may_read(None, "batch.recipe")
    assert config.may_read(None, "sensor.reading")  # no read policy for that type
    assert config.may_submit(key["plant.operator"], "batch.recipe")
