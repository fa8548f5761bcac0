"""Hostile review of issue 13's peers-follow-configuration, 1 MiB payloads, governance CLI
and ``ledger node init`` (each test reproduces one defect the review found)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest

from ledger.config import Config, ConfigHistory, Validator, ValidatorSet
from ledger.crypto import PrivateKey
from node.config import NodeConfig
from node.runtime import peer_map
from node.transport import PeerNetwork
from node.transport.peers import PeerDirectory, accepted_peers
from tests.factory import make_fixture, seeded_key

FX = make_fixture()
G = FX.genesis
KEYS = FX.validator_keys
HOST = "127.0.0.1"
R1, R2 = seeded_key("review13-replacement-1"), seeded_key("review13-replacement-2")

pytestmark = pytest.mark.timeout(60)


def with_validators(config: Config, keys: list[PrivateKey], version: int) -> Config:
    vs = tuple(Validator(i, f"v-{k.public.hex()[:4]}", k.public, 1, f"127.0.0.1:{9300 + i}")
               for i, k in enumerate(keys))
    return replace(config, version=version, validators=ValidatorSet(vs))


async def until(cond: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.02)
    return True


def lagging_config(tmp_path: Path, replacement_port: int) -> NodeConfig:
    """Validator 3's node config after its operator named a current validator by key
    (the documented way in for a node whose known validators are all gone); genesis
    validators 0..2 at a closed port (their machines are decommissioned)."""
    return NodeConfig(dir=tmp_path, index=3, api=(HOST, 0), p2p=(HOST, 0),
                      genesis_path=tmp_path / "g", key_path=tmp_path / "k",
                      store_path=tmp_path / "s", peers={i: (HOST, 9) for i in range(3)},
                      peer_keys={R1.public: (HOST, replacement_port)})


def test_a_lagging_validator_uses_the_keys_its_config_names_that_its_history_lacks(
        tmp_path: Path) -> None:
    """Validator 3 was down while 0, 1 and 2 were replaced by R1 and R2 (version 1). Its
    history is genesis: it knows no validator that is still running, and R1/R2, ranked
    after it, wait for it to dial. Its config's ``peers`` by key must be used (before the
    fix they were ignored because its own key is in force: no way to ever catch up)."""
    peers = peer_map(lagging_config(tmp_path, 9400), G, ConfigHistory(G.config), 0,
                     KEYS[3].public)
    assert peers.get(R1.public) == (HOST, 9400)
    # a named key the history knows and no longer accepts stays refused
    history = ConfigHistory(G.config)
    history.append(3, with_validators(G.config, [KEYS[3], R1, R2], 1))
    cfg = replace(lagging_config(tmp_path, 9400), peer_keys={KEYS[0].public: (HOST, 9401)})
    assert KEYS[0].public not in peer_map(cfg, G, history, 5, KEYS[3].public)


@pytest.mark.asyncio
async def test_a_validator_down_while_every_peer_it_knew_was_replaced_links_again(
        tmp_path: Path) -> None:
    """Real sockets: R1 (synced, version 1 in force) and validator 3 (genesis only, its
    config naming R1 by key) end up linked, so validator 3 can sync and vote again."""
    history = ConfigHistory(G.config)
    history.append(3, with_validators(G.config, [KEYS[3], R1, R2], 1))
    current = PeerNetwork(genesis=G, key=R1, listen=(HOST, 0), peers={},
                          directory=PeerDirectory.from_history(history),
                          on_message=lambda p, b: None, backoff_max=0.3)
    lagging = PeerNetwork(genesis=G, key=KEYS[3], listen=(HOST, 0), peers={},
                          on_message=lambda p, b: None, backoff_max=0.3)
    try:
        await current.start()
        await lagging.start()
        current.set_peers({k: None for k in accepted_peers(history, 6) if k != R1.public})
        lagging.set_peers(peer_map(lagging_config(tmp_path, current.port), G,
                                   ConfigHistory(G.config), 0, KEYS[3].public))
        assert await until(lambda: current.connected() == [3], 8.0), \
            "validator 3 never links with the validator set in force"
    finally:
        await lagging.stop()
        await current.stop()


def test_an_unapproved_1_mib_change_is_refused_before_its_change_bytes_are_decoded() -> None:
    """Any member may sign a ledger.config record. Its body holds the change as one bin
    (one msgpack element: the body's element bound does not see inside it), so 1 MiB of
    empty maps in ``change`` was decoded to ~1M objects (~78 MB, 0.2 s) before the
    approvals were looked at. Approvals sign sha256(change) and depend only on the
    configuration in force: they are checked first, so the change is built only for a
    record enough admins approved."""
    import tracemalloc

    from ledger.config import apply_change
    from ledger.errors import LedgerError
    from ledger.records import Record

    n = 1024 * 1024 - 3000
    change = b"\xdd" + n.to_bytes(4, "big") + b"\x80" * n
    record = Record.from_wire(Record.create(
        FX.writer, chain=G.chain_id, type="ledger.config", subject="config",
        payload={"change": change, "approvals": [], "joins": []}, ts=1, nonce=1).envelope)
    tracemalloc.start()
    try:
        with pytest.raises(LedgerError) as refused:
            apply_change(G.config, record)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert refused.value.code == "approvals_insufficient"
    assert peak < 8 * 1024 * 1024, f"{peak / 1e6:.0f} MB allocated to refuse it"


def test_a_peers_entry_by_key_gives_the_address_of_a_validator_added_by_a_change(
        tmp_path: Path) -> None:
    """A validator added by a change with no (or a host-unreachable) ``p2p`` in the
    configuration: the lower-ranked validators must dial it, and ``peers`` by genesis
    index cannot name it. Its key in ``peers`` (or LEDGER_PEERS) was ignored once the
    node's own key was in force, leaving no way to reach it ("no address for validator
    4; it cannot be reached", forever)."""
    history = ConfigHistory(G.config)
    added = with_validators(G.config, [*KEYS, R1], 1)
    vs = tuple(replace(v, p2p="") if v.pubkey == R1.public else v for v in added.validators)
    history.append(3, replace(added, validators=ValidatorSet(vs)))
    cfg = replace(lagging_config(tmp_path, 9500), peers={})
    peers = peer_map(cfg, G, history, 5, KEYS[0].public)
    assert peers[R1.public] == (HOST, 9500)


def test_node_init_reports_an_unwritable_directory_and_leaves_no_half_made_node(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``ledger node init`` into a path it cannot create raised a bare OSError (a
    traceback from the CLI); a failure after genesis.json was written left it behind, and
    every retry was then refused as 'already holds a node'."""
    import node.join
    from node.join import NodeInitError, init_node

    genesis = FX.write_genesis(tmp_path)
    (tmp_path / "a-file").write_text("")
    with pytest.raises(NodeInitError, match="a-file"):
        init_node(tmp_path / "a-file" / "node", genesis, "127.0.0.1:1", "127.0.0.1:2")

    def full_disk(path: Path, key: PrivateKey) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(node.join, "write_key_file", full_disk)
    with pytest.raises(NodeInitError, match="No space left"):
        init_node(tmp_path / "n", genesis, "127.0.0.1:1", "127.0.0.1:2")
    assert not any((tmp_path / "n").iterdir())
    monkeypatch.undo()
    entry = init_node(tmp_path / "n", genesis, "127.0.0.1:1", "127.0.0.1:2")
    assert (tmp_path / "n" / "config.json").exists() and len(entry["pubkey"]) == 64
