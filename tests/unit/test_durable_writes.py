"""One durable write per signed step, and the block with the signing state where they meet
(issue 17): the two-slot signing-state file (``node.files.SlotFile``), the action plan that
coalesces states and groups one with its block (``node.runtime.plan_durable_writes``), the
store's signing-state row and off-path checkpoints, and which state a restart takes."""

from __future__ import annotations

import dataclasses
import os
import threading
from pathlib import Path

import pytest

from ledger.blocks import Vote
from ledger.consensus import (
    NO_RESERVATION,
    Action,
    Broadcast,
    CommitBlock,
    PersistState,
    RecordEvidence,
    ScheduleTimeout,
    SignedVote,
    SigningState,
    TimeoutKind,
)
from ledger.consensus.messages import BlockRequest
from ledger.errors import DecodeError, DuplicateError
from ledger.store import SqliteStore
from node.files import MIN_SLOT, SlotFile, read_slots, write_durably
from node.runtime import GroupCommit, load_signing_state, plan_durable_writes
from tests.factory import ChainBuilder, make_fixture

# -- the slot file ----------------------------------------------------------------------


def test_slots_alternate_and_the_newest_whole_one_is_read(tmp_path: Path) -> None:
    path = tmp_path / "signing_state.bin"
    assert read_slots(path).payload is None
    f = SlotFile(path)
    for n in range(1, 6):
        f.write(b"state %d" % n)
        found = read_slots(path)
        assert (found.payload, found.seq) == (b"state %d" % n, n)
    assert path.stat().st_size == 4096 + 2 * MIN_SLOT  # made once, never resized
    # a new writer (a restarted node) continues the sequence from the file
    SlotFile(path).write(b"after restart")
    assert read_slots(path).payload == b"after restart"
    assert read_slots(path).seq == 6


def test_a_write_in_place_is_one_fdatasync_and_no_rename(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "signing_state.bin"
    f = SlotFile(path)
    f.write(b"first: the file is made (fsync, rename, folder fsync)")
    calls: list[str] = []
    real_fdatasync = getattr(os, "fdatasync", os.fsync)

    def fdatasync(fd: int) -> None:
        calls.append("fdatasync")
        real_fdatasync(fd)

    monkeypatch.setattr(os, "fdatasync", fdatasync)
    monkeypatch.setattr(os, "fsync", lambda fd: calls.append("fsync"))
    monkeypatch.setattr(os, "replace", lambda *a: calls.append("replace"))
    for n in range(10):
        f.write(b"vote %d" % n)
    assert calls == ["fdatasync"] * 10


def test_a_torn_write_at_any_byte_falls_back_to_the_previous_state(tmp_path: Path) -> None:
    """A crash mid-write tears only the slot being written (never the one holding the newest
    durable state): at every tear point the reader finds the previous state or, when the
    tear happened to leave the whole record, the new one; never neither, never garbage."""
    path = tmp_path / "signing_state.bin"
    new = os.urandom(300)
    record_len = 44 + len(new)
    for torn_at in [*range(0, record_len, 7), record_len]:
        path.unlink(missing_ok=True)
        f = SlotFile(path)
        f.write(b"older")
        f.write(b"previous")  # the newest durable state when the crash comes
        with pytest.raises(OSError, match="torn"):
            f.write(new, torn_at=torn_at)
        found = read_slots(path).payload
        assert found == (new if torn_at >= record_len else b"previous"), torn_at
        # the restarted node writes on: the torn slot is the one it overwrites
        g = SlotFile(path)
        g.write(b"next")
        assert read_slots(path).payload == b"next"


def test_garbage_in_the_slot_being_written_is_never_taken(tmp_path: Path) -> None:
    path = tmp_path / "signing_state.bin"
    f = SlotFile(path)
    f.write(b"one")
    f.write(b"two")  # in slot 0 (sequence 2); slot 1 holds "one"
    with open(path, "r+b") as raw:  # slot 1 torn as a power loss might leave it
        raw.seek(4096 + MIN_SLOT)
        raw.write((3).to_bytes(8, "big") + (3).to_bytes(4, "big") + os.urandom(40))
    assert read_slots(path).payload == b"two"


def test_both_slots_damaged_refuses_to_guess(tmp_path: Path) -> None:
    path = tmp_path / "signing_state.bin"
    f = SlotFile(path)
    f.write(b"one")
    f.write(b"two")
    data = bytearray(path.read_bytes())
    data[4096 + 20] ^= 1
    data[4096 + MIN_SLOT + 20] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="both copies damaged"):
        read_slots(path)
    fx = make_fixture()  # a node refuses to start on it, with an error the CLI reports
    with SqliteStore(tmp_path / "chain.db", genesis_hash=fx.genesis.hash) as store, \
            pytest.raises(DecodeError, match="both copies damaged"):
        load_signing_state(path, store, fx.validator_keys[0].public)


def test_a_state_larger_than_a_slot_remakes_the_file(tmp_path: Path) -> None:
    path = tmp_path / "signing_state.bin"
    f = SlotFile(path)
    f.write(b"small")
    big = os.urandom(3 * MIN_SLOT)
    f.write(big)
    assert read_slots(path).payload == big
    assert path.stat().st_size > 4096 + 2 * len(big)
    f.write(b"small again")  # in place in the larger slots
    assert read_slots(path).payload == b"small again"


def test_an_older_nodes_whole_file_is_read_then_upgraded_on_the_first_write(
        tmp_path: Path) -> None:
    path = tmp_path / "signing_state.bin"
    old = state(3, (3, 1, 2)).to_wire()
    write_durably(path, old)  # what nodes before the slot file wrote
    assert read_slots(path).payload == old
    SlotFile(path).write(b"new")
    assert read_slots(path).payload == b"new"
    assert path.read_bytes().startswith(b"LGSLOTS1")


# -- the plan -----------------------------------------------------------------------------


def state(height: int, last_signed: tuple[int, int, int]) -> SigningState:
    return SigningState(height, last_signed, last_signed[1], -1, None, -1, None)


def vote(height: int, kind: int) -> SignedVote:
    fx = make_fixture()
    return SignedVote.sign(Vote(fx.genesis.chain_id, kind, height, 0, b"\x01" * 32), 1,
                           fx.validator_keys[1])


@pytest.fixture(scope="module")
def block_at_1(tmp_path_factory: pytest.TempPathFactory) -> CommitBlock:
    fx = make_fixture()
    with SqliteStore(tmp_path_factory.mktemp("b") / "c.db",
                     genesis_hash=fx.genesis.hash) as store:
        builder = ChainBuilder(fx, store)
        return CommitBlock(builder.block([builder.record()]))


def test_states_of_one_event_are_written_once_before_any_of_its_sends() -> None:
    prevote, precommit = Broadcast(vote(1, 1)), Broadcast(vote(1, 2))
    p1, p2 = PersistState(state(1, (1, 0, 1))), PersistState(state(1, (1, 0, 2)))
    timer = ScheduleTimeout(1, 0, TimeoutKind.PRECOMMIT, 100)
    assert plan_durable_writes([p1, prevote, timer, p2, precommit]) == [
        p2, prevote, timer, precommit]


def test_a_state_followed_by_its_heights_commit_is_written_with_the_block(
        block_at_1: CommitBlock) -> None:
    precommit = Broadcast(vote(1, 2))
    p = PersistState(state(1, (1, 0, 2)))
    planned = plan_durable_writes([p, precommit, block_at_1])
    assert len(planned) == 2 and planned[1] == precommit
    assert isinstance(planned[0], GroupCommit)
    assert planned[0].persist == p and planned[0].commit == block_at_1


def test_a_commit_is_never_moved_past_anything_but_sends_and_timers(
        block_at_1: CommitBlock) -> None:
    precommit = Broadcast(vote(1, 2))
    p = PersistState(state(1, (1, 0, 2)))
    evidence = RecordEvidence(vote(1, 1), vote(1, 1))
    actions: list[Action] = [p, precommit, evidence, block_at_1]
    assert plan_durable_writes(actions) == actions
    # a commit before the state stays before it; the next height's state is its own write
    later = PersistState(state(2, (2, 0, 0)))
    request = Broadcast(BlockRequest(2))
    assert plan_durable_writes([block_at_1, later, request]) == [block_at_1, later, request]
    # a state of another height than the block's is not grouped with it
    assert plan_durable_writes([later, request, block_at_1]) == [later, request, block_at_1]


# -- the store's row, and which state a restart takes -----------------------------------


def test_the_signing_state_row_commits_with_its_block_or_not_at_all(tmp_path: Path) -> None:
    fx = make_fixture()
    key = fx.validator_keys[0].public
    with SqliteStore(tmp_path / "chain.db", genesis_hash=fx.genesis.hash) as store:
        builder = ChainBuilder(fx, store)
        assert store.signing_state(key) is None
        first = builder.block([builder.record()])
        store.append(first, signing_state=(key, b"with block 1"))
        assert store.signing_state(key) == b"with block 1"
        assert store.signing_state(fx.validator_keys[1].public) is None  # by key
        with pytest.raises(DuplicateError):  # a failing block writes no state either
            store.append(builder.block(list(first.records)),
                         signing_state=(key, b"with a refused block"))
        assert store.signing_state(key) == b"with block 1"
        assert store.height == 1


def test_a_restart_takes_whichever_of_file_and_store_signed_last(tmp_path: Path) -> None:
    fx = make_fixture()
    key = fx.validator_keys[0].public
    path = tmp_path / "signing_state.bin"
    with SqliteStore(tmp_path / "chain.db", genesis_hash=fx.genesis.hash) as store:
        builder = ChainBuilder(fx, store)
        assert load_signing_state(path, store, key) is None
        SlotFile(path).write(state(1, (1, 0, 1)).to_wire())  # prevote, in the file
        grouped = state(1, (1, 0, 2))  # precommit, with block 1
        store.append(builder.block([builder.record()]), signing_state=(key, grouped.to_wire()))
        assert load_signing_state(path, store, key) == grouped
        newer = state(2, (2, 0, 1))
        SlotFile(path).write(newer.to_wire())
        assert load_signing_state(path, store, key) == newer
        # another validator's row (a copied database) is never taken for ours
        other = fx.validator_keys[1].public
        store.append(builder.block([builder.record()]),
                     signing_state=(other, state(9, (9, 9, 2)).to_wire()))
        assert load_signing_state(path, store, key) == newer


def test_on_a_tie_the_file_a_clean_stop_rewrote_is_taken(tmp_path: Path) -> None:
    """A clean stop rewrites the store's state into the file without the reservation it
    did not use (``Node._final_signing_state``): same ``last_signed``, the file's wins."""
    fx = make_fixture()
    key = fx.validator_keys[0].public
    path = tmp_path / "signing_state.bin"
    with SqliteStore(tmp_path / "chain.db", genesis_hash=fx.genesis.hash) as store:
        builder = ChainBuilder(fx, store)
        grouped = dataclasses.replace(state(1, (1, 0, 2)), reserved=(2, 0, 0))
        store.append(builder.block([builder.record()]), signing_state=(key, grouped.to_wire()))
        assert load_signing_state(path, store, key) == grouped
        final = dataclasses.replace(grouped, reserved=NO_RESERVATION)
        SlotFile(path).write(final.to_wire())
        assert load_signing_state(path, store, key) == final


def test_a_checkpoint_never_waits_for_the_writer(tmp_path: Path) -> None:
    """The node's store commits without checkpointing; ``checkpoint`` runs on its own
    connection and returns while a block's transaction is open on the writer."""
    fx = make_fixture()
    with SqliteStore(tmp_path / "chain.db", genesis_hash=fx.genesis.hash,
                     autocheckpoint=False) as store:
        builder = ChainBuilder(fx, store)
        for _ in range(30):
            store.append(builder.block([builder.record() for _ in range(50)]))
        frames, copied = store.checkpoint()
        assert frames > 0 and copied == frames  # nothing was checkpointed by the commits
        store.append(builder.block([builder.record()]))
        after, _ = store.checkpoint()
        assert 0 < after < frames  # the next commit started the WAL over
        store.append(builder.block([builder.record()]))
        done = threading.Event()

        def checkpoint() -> None:
            store.checkpoint()
            done.set()

        with store.bulk():  # the writer mid-transaction, holding the store's lock
            store.append(builder.block([builder.record()]))
            t = threading.Thread(target=checkpoint)
            t.start()
            t.join(timeout=10)
            assert done.is_set()
        assert store.height == 33
