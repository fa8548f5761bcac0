"""``ledger witness`` (node/witnesscli.py), without processes: nodes are ``FakeNode`` block
sources over chains built with tests/factory.py. What is shown: the state saved before any
post and loaded again; a restarted witness never cosigns another block at a height it
cosigned nor a chain that does not extend its own, and re-posts its last saved batch; two
nodes serving different blocks stop it (split view); a forked node is caught at the height
where it forks; a bad block is refused with ``height N:``; transient failures are retried."""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from ledger.blocks import Block
from ledger.crypto import is_valid_signature
from ledger.store.memory import MemoryStore
from ledger.witness import Cosignature, cosigned_message
from node.client import NodeError
from node.witnesscli import (
    STATE_MAGIC,
    Hooks,
    Refusal,
    Unavailable,
    Witness,
    WitnessState,
    WitnessStateError,
    run,
)
from tests.factory import ChainBuilder, Fixture, make_fixture

FX = make_fixture(witnesses=2)


@dataclass
class FakeNode:
    """A block source over a list of blocks; records what is posted to it."""

    name: str
    blocks: list[Block]
    posted: list[Cosignature] = field(default_factory=list)
    log: list[str] = field(default_factory=list)
    down: bool = False
    fail_posts: int = 0  # the next n posts answer 503
    fail_blocks: bool = False  # block reads answer 503 (the status still answers)
    conflict: bool = False  # answers 409 to posts

    def tip(self) -> int:
        if self.down:
            raise NodeError(f"cannot connect to {self.name}")
        return len(self.blocks)

    def block_bytes(self, height: int) -> bytes | None:
        if self.fail_blocks:
            raise NodeError(f"GET /v1/blocks/{height}: 503", 503)
        if self.down:
            raise NodeError(f"cannot connect to {self.name}")
        return self.blocks[height - 1].to_wire() if height <= len(self.blocks) else None

    def post(self, cosig: Cosignature) -> bool:
        if self.down or self.fail_posts:
            self.fail_posts = max(0, self.fail_posts - 1)
            raise NodeError("POST /v1/log/cosignatures: 503", 503)
        if self.conflict:
            raise NodeError("POST /v1/log/cosignatures: 409 split_view", 409, "split_view")
        new = cosig not in self.posted
        self.posted.append(cosig)
        return new


def chain(n: int, fx: Fixture = FX, prefix: list[Block] | None = None,
          nonce: int = 0) -> list[Block]:
    """``n`` blocks; given ``prefix``, its blocks then others (a fork, same keys)."""
    b = ChainBuilder(fx, MemoryStore(fx.genesis.hash))
    for block in prefix or []:
        b.store.append(block)
        b.blocks.append(block)
        b.time_ms = block.header.time_ms
    b.nonce = nonce
    while len(b.blocks) < n:
        b.add(len(b.blocks) % 3 + 1)
    return b.blocks


HONEST = chain(12)
FORK = chain(12, prefix=HONEST[:6], nonce=500)  # same first 6 blocks, then another history


def witness(tmp_path: Path, *nodes: FakeNode, key: int = 0, batch: int = 256,
            hooks: Hooks | None = None) -> tuple[Witness, list[str]]:
    lines: list[str] = []
    w = Witness(FX.genesis, FX.witnesses[key], tmp_path / "w.state", list(nodes),
                batch=batch, log=lines.append, hooks=hooks or Hooks())
    return w, lines


def heights(node: FakeNode) -> list[int]:
    return [c.height for c in node.posted]


def test_cosigns_every_height_saves_then_posts(tmp_path: Path) -> None:
    node = FakeNode("A", HONEST[:5])
    w, lines = witness(tmp_path, node)
    assert w.round() == 5
    assert heights(node) == [1, 2, 3, 4, 5]
    key = FX.witnesses[0]
    for c, block in zip(node.posted, HONEST, strict=False):
        h = block.header
        assert (c.height, c.block_hash, c.log_size, c.log_root) == (h.height, h.hash,
                                                                    h.log_size, h.log_root)
        assert is_valid_signature(key.public, cosigned_message(
            FX.genesis.hash, h.height, h.hash, h.log_size, h.log_root), c.sig)
    assert any("verified and cosigned heights 1..5" in line for line in lines)
    node.blocks = HONEST[:7]
    assert w.round() == 2 and heights(node)[-2:] == [6, 7]
    assert w.round() == 0 and len(node.posted) == 7  # nothing new, nothing posted again


def test_state_is_saved_before_the_post_and_loads_back(tmp_path: Path) -> None:
    node = FakeNode("A", HONEST[:4])
    seen: list[tuple[int, int]] = []

    class Spy(Hooks):
        def after_save(self) -> None:  # the state on disk already names the batch
            state = WitnessState.from_bytes((tmp_path / "w.state").read_bytes(), FX.genesis,
                                            FX.witnesses[0].public)
            seen.append((state.height, len(node.posted)))

    w, _ = witness(tmp_path, node, hooks=Spy())
    w.round()
    assert seen == [(4, 0)]
    data = (tmp_path / "w.state").read_bytes()
    assert data.startswith(STATE_MAGIC)
    state = WitnessState.from_bytes(data, FX.genesis, FX.witnesses[0].public)
    assert state.height == 4 and state.verifier.tip_hash == HONEST[3].header.hash
    assert [c.height for c in state.cosigned] == [1, 2, 3, 4]
    assert state.cosigned == node.posted
    again = WitnessState.from_bytes(state.to_bytes(FX.witnesses[0].public), FX.genesis,
                                    FX.witnesses[0].public)  # round trip
    assert (again.hashes, again.cosigned, again.verifier.seen_ids) == \
        (state.hashes, state.cosigned, state.verifier.seen_ids)


def test_a_damaged_or_foreign_state_is_refused(tmp_path: Path) -> None:
    node = FakeNode("A", HONEST[:3])
    witness(tmp_path, node)[0].round()
    path = tmp_path / "w.state"
    data = path.read_bytes()
    with pytest.raises(WitnessStateError, match="not of this identity"):
        witness(tmp_path, node, key=1)
    path.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    with pytest.raises(WitnessStateError, match="checksum"):
        witness(tmp_path, node)
    path.write_bytes(data[:40])
    with pytest.raises(WitnessStateError, match="truncated or corrupt"):
        witness(tmp_path, node)
    other = make_fixture(witnesses=2, chain="other-chain")
    path.write_bytes(data)
    with pytest.raises(WitnessStateError, match="another chain"):
        Witness(other.genesis, FX.witnesses[0], path, [node])


def test_crash_after_save_then_restart_reposts_the_same_cosignatures(tmp_path: Path) -> None:
    node = FakeNode("A", HONEST[:5])

    class Crash(Hooks):
        def after_save(self) -> None:
            raise SystemExit("killed")  # stands for SIGKILL: nothing after the save runs

    w, _ = witness(tmp_path, node, hooks=Crash())
    with pytest.raises(SystemExit):
        w.round()
    assert node.posted == []  # died before posting
    saved = WitnessState.from_bytes((tmp_path / "w.state").read_bytes(), FX.genesis,
                                    FX.witnesses[0].public).cosigned
    w2, lines = witness(tmp_path, node)
    assert "verified to height 5; last cosigned height 5" in lines[0]
    assert w2.round() == 0  # nothing new to verify ...
    assert node.posted == saved  # ... and the saved batch is posted, the same bytes


def test_after_restart_a_forked_node_is_refused_at_the_fork(tmp_path: Path) -> None:
    """Cosigned to 9 on the honest chain; restarted against a node serving a history that
    forks at 7: refused there, nothing posted, the state unchanged."""
    honest = FakeNode("honest", HONEST[:9])
    witness(tmp_path, honest)[0].round()
    saved = (tmp_path / "w.state").read_bytes()
    forked = FakeNode("forked", FORK)
    w, _ = witness(tmp_path, forked)
    with pytest.raises(Refusal) as caught:
        w.round()
    assert caught.value.height == 7
    assert str(caught.value).startswith("height 7: forked serves a block that is not the one "
                                        "this witness verified and cosigned")
    assert forked.posted == [] and (tmp_path / "w.state").read_bytes() == saved
    # a fork shorter than the saved height is caught too (its tip block differs)
    forked.blocks = FORK[:8]
    with pytest.raises(Refusal, match=r"^height 7: "):
        witness(tmp_path, forked)[0].round()
    # and the honest node is still cosigned onwards, the saved batch re-posted first
    honest.blocks = HONEST
    w, _ = witness(tmp_path, honest)
    posted = len(honest.posted)
    assert w.round() == 3
    assert heights(honest)[posted:] == [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]


def test_a_fork_past_the_cosigned_height_is_caught_through_the_hash_links(
        tmp_path: Path) -> None:
    """Cosigned to 6 (the common prefix), then the fork's 7..12 (a valid chain: the
    witness has never seen another). Now the honest 7..12 are refused at 7: one history per
    witness, whichever it saw first."""
    forked = FakeNode("forked", FORK[:6])
    witness(tmp_path, forked)[0].round()
    forked.blocks = FORK
    assert witness(tmp_path, forked)[0].round() == 6
    honest = FakeNode("honest", HONEST)
    with pytest.raises(Refusal, match=r"^height 7: honest serves a block that is not"):
        witness(tmp_path, honest)[0].round()
    assert honest.posted == []


def test_two_nodes_serving_different_blocks_stop_it_split_view(tmp_path: Path) -> None:
    a, b = FakeNode("A", HONEST[:9]), FakeNode("B", FORK[:9])
    w, _ = witness(tmp_path, a, b)
    with pytest.raises(Refusal) as caught:
        w.round()
    assert str(caught.value) == "height 7: nodes A and B serve different blocks (split view); " \
                                "not cosigning"
    assert a.posted == b.posted == [] and not (tmp_path / "w.state").exists()


def test_split_view_found_when_a_lagging_node_catches_up(tmp_path: Path) -> None:
    a, b = FakeNode("A", HONEST[:9]), FakeNode("B", FORK[:5])
    w, _ = witness(tmp_path, a, b)
    assert w.round() == 9
    assert heights(a) == list(range(1, 10)) and heights(b) == [1, 2, 3, 4, 5]
    b.blocks = FORK[:8]
    with pytest.raises(Refusal, match=r"^height 7: B serves a block that is not the one"):
        w.round()
    assert heights(b) == [1, 2, 3, 4, 5]


def test_the_same_chain_from_two_nodes_is_posted_to_both(tmp_path: Path) -> None:
    a, b = FakeNode("A", HONEST[:4]), FakeNode("B", HONEST[:6])
    w, _ = witness(tmp_path, a, b, batch=4)
    assert w.round() == 4  # at most one batch a round
    assert w.round() == 2
    assert heights(a) == [1, 2, 3, 4] and heights(b) == [1, 2, 3, 4, 5, 6]
    a.blocks = HONEST[:6]
    w.round()
    assert heights(a) == [1, 2, 3, 4, 5, 6]  # the lagging node gets what it lacked


def test_a_bad_block_is_refused_at_its_height(tmp_path: Path) -> None:
    """The audit's verifier decides: block 5 certified by too few validators."""
    b = ChainBuilder(FX, MemoryStore(FX.genesis.hash))
    for _ in range(4):
        b.add(2)
    bad = b.block([b.record()], signers=2)
    node = FakeNode("A", [*b.blocks, bad])
    w, _ = witness(tmp_path, node)
    with pytest.raises(Refusal, match=r"^height 5: .*not cosigning"):
        w.round()
    assert node.posted == [] and not (tmp_path / "w.state").exists()


def test_a_key_that_is_not_a_witness_verifies_but_cosigns_nothing(tmp_path: Path) -> None:
    node = FakeNode("A", HONEST[:3])
    lines: list[str] = []
    w = Witness(FX.genesis, FX.writer, tmp_path / "w.state", [node], log=lines.append)
    assert w.round() == 3 and w.height == 3 and node.posted == []
    assert "not a witness there" in lines[-1]


def test_409_from_a_node_stops_it(tmp_path: Path) -> None:
    node = FakeNode("A", HONEST[:2], conflict=True)
    with pytest.raises(Refusal, match=r"^height 1: A refuses this witness's cosignature"):
        witness(tmp_path, node)[0].round()


def test_run_once_retries_transient_failures(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    a, b = FakeNode("A", HONEST[:5], fail_posts=2), FakeNode("B", HONEST[:5], down=True)
    w, lines = witness(tmp_path, a, b)
    waits: list[float | None] = []

    class NoSleep(threading.Event):
        def wait(self, timeout: float | None = None) -> bool:
            waits.append(timeout)
            return False

    stop, wake = NoSleep(), threading.Event()
    now = [0.0]

    def clock() -> float:
        now[0] += 1
        return now[0]

    code = run(w, once=True, until=None, stop=stop, wake=wake, retry_for=30, clock=clock)
    assert code == 0 and heights(a) == [1, 2, 3, 4, 5]
    assert "ok: cosigned to height 5; B did not answer" in capsys.readouterr().out
    assert any("B does not answer" in line for line in lines)
    assert waits[:2] == [0.5, 1.0]  # backoff doubles
    # every node down: gives up after --retry-for, exit 2
    a.down = True
    w, _ = witness(tmp_path, a, b)
    assert run(w, once=True, until=None, stop=stop, wake=wake, retry_for=5, clock=clock) == 2
    with pytest.raises(Unavailable):
        w.round()
    # the status answers but no block does: retried with backoff, bounded, not spun
    waits.clear()
    c = FakeNode("C", HONEST[:5], fail_blocks=True)
    (tmp_path / "c").mkdir()
    w, _ = witness(tmp_path / "c", c)
    assert run(w, once=True, until=None, stop=stop, wake=wake, retry_for=5, clock=clock) == 2
    assert waits == [0.5, 1.0, 2.0, 4.0, 8.0] and w.height == 0  # one clock tick a round
    assert "C did not answer; gave up after 5 s at height 0" in capsys.readouterr().err


def test_sigterm_stops_between_rounds(tmp_path: Path) -> None:
    node = FakeNode("A", HONEST[:3])
    w, _ = witness(tmp_path, node)
    stop, wake = threading.Event(), threading.Event()
    stop.set()
    assert run(w, once=False, until=None, stop=stop, wake=wake, retry_for=1) == 0
    assert node.posted == []


def test_cluster_init_witnesses(tmp_path: Path) -> None:
    """``ledger cluster init --witnesses N``: N keys in DIR/witnesses, listed in genesis;
    without it genesis has no ``witnesses`` key (today's shape)."""
    from ledger.crypto import read_key_file
    from ledger.genesis import Genesis
    from node.cluster import init_cluster

    init_cluster(tmp_path / "plain", 4, 9000)
    assert "witnesses" not in json.loads((tmp_path / "plain" / "genesis.json").read_text())
    assert not (tmp_path / "plain" / "witnesses").exists()
    init_cluster(tmp_path / "w", 4, 9000, witnesses=2)
    genesis = Genesis.load(tmp_path / "w" / "genesis.json")
    keys = [read_key_file(tmp_path / "w" / "witnesses" / f"witness{i}.pem").public
            for i in range(2)]
    assert [(w.name, w.pubkey) for w in genesis.config.witnesses] == \
        [("witness0", keys[0]), ("witness1", keys[1])]


def test_cosigns_only_heights_whose_configuration_lists_it(tmp_path: Path) -> None:
    """Witnesses join and leave by configuration changes (SPEC 9, 11): a change at height 2
    lists the key (it governs from 3), one at 4 removes it (from 5). The witness verifies
    every height, follows both changes, and cosigns 3 and 4 only."""
    from ledger.validation import check_records
    from tests.factory import change_bytes, change_record, config_doc, make_governed_fixture

    gov = make_governed_fixture()
    key = FX.witnesses[0]
    b = ChainBuilder(gov, MemoryStore(gov.genesis.hash))
    config = gov.genesis.config
    b.add(2)
    for height, listed in ((2, True), (4, False)):
        if height == 4:
            b.add(1)
        doc = config_doc(gov.genesis)
        if listed:
            doc["witnesses"] = [{"name": "w0", "pubkey": key.public.hex()}]
        rec = change_record(config, gov.admins[0], change_bytes(config, doc),
                            approvers=gov.admins[1:], nonce=height)
        block = b.block([rec, b.record()])
        b.store.append(block)
        b.blocks.append(block)
        new_config = check_records(config, block.records).config
        assert new_config is not None
        config = new_config
        b.follow(config)
    b.add(2)
    node = FakeNode("A", b.blocks)
    w = Witness(gov.genesis, key, tmp_path / "w.state", [node], log=lambda _: None)
    assert w.round() == 5 and w.height == 5
    assert heights(node) == [3, 4]
    assert w.state.verifier.config.version == 2


def test_catching_up_with_worker_processes_cosigns_the_same(tmp_path: Path) -> None:
    """A batch of 64+ blocks is checked by --workers processes (the audit's pool): the
    same cosignatures as inline."""
    blocks = chain(66)
    posted = []
    for workers in (1, 2):
        node = FakeNode("A", blocks)
        w = Witness(FX.genesis, FX.witnesses[0], tmp_path / f"w{workers}.state", [node],
                    workers=workers, log=lambda _: None)
        assert w.round() == 66
        posted.append(node.posted)
    assert posted[0] == posted[1] and len(posted[0]) == 66


def test_until_height_stops_there(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    node = FakeNode("A", HONEST[:8])
    w, _ = witness(tmp_path, node, batch=2)
    stop, wake = threading.Event(), threading.Event()
    assert run(w, once=False, until=5, stop=stop, wake=wake, retry_for=1) == 0
    assert heights(node) == [1, 2, 3, 4, 5] and w.height == 5
    assert "ok: cosigned to height 5; state" in capsys.readouterr().out


def test_two_witness_processes_cannot_share_a_state_file(tmp_path: Path) -> None:
    from node.cli import CommandError
    from node.witnesscli import _lock

    held = _lock(tmp_path / "w.state")
    try:
        with pytest.raises(CommandError, match="another witness process uses this state"):
            _lock(tmp_path / "w.state")
    finally:
        held.close()
    _lock(tmp_path / "w.state").close()  # free again


def test_run_once_gives_up_on_a_node_claiming_a_tip_it_does_not_serve(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Review 14: a node whose status claims height 1000 but serves only 5 blocks made
    ``--once`` (target: the tip the nodes claim now) wait forever, POLL_S at a time."""

    @dataclass
    class Liar(FakeNode):
        def tip(self) -> int:
            return 1000

    liar = Liar("L", HONEST[:5])
    w, _ = witness(tmp_path, liar)
    waits: list[float | None] = []

    class NoSleep(threading.Event):
        def wait(self, timeout: float | None = None) -> bool:
            waits.append(timeout)
            if len(waits) > 50:  # bounded: before the fix this loop never ended
                raise AssertionError(f"--once still waiting after {len(waits)} waits")
            return False

    now = [0.0]

    def clock() -> float:
        now[0] += 1
        return now[0]

    code = run(w, once=True, until=None, stop=NoSleep(), wake=NoSleep(), retry_for=5,
               clock=clock)
    assert code == 2 and w.height == 5 and heights(liar) == [1, 2, 3, 4, 5]
    assert "serve no block past height 5" in capsys.readouterr().err


def test_lock_holds_through_a_symlinked_state_path(tmp_path: Path) -> None:
    """Review 14: the lock file was named after the path as given, so a second witness
    reaching the same state file through a symlink took another lock and ran beside the
    first: two processes on one state file, each believing it alone cosigned."""
    from node.cli import CommandError
    from node.witnesscli import _lock

    real = tmp_path / "w.state"
    real.write_bytes(b"")
    (tmp_path / "link.state").symlink_to(real)
    first = _lock(real)
    try:
        with pytest.raises(CommandError, match="another witness process uses this state"):
            second = _lock(tmp_path / "link.state")
            second.close()
    finally:
        first.close()
