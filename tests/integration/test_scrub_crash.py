"""SIGKILL a real process at each point of a redaction's erasure (issue 15, review s25):
right after the redaction's commit, inside the ``sealed`` rebuild, inside the TRUNCATE
checkpoint. The next open for writing must always end with no redacted payload in
``chain.db`` or ``chain.db-wal`` and every other pair intact."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from ledger.store.sqlite import SqliteStore
from tests.unit.test_one_rule import GOVERNED
from tests.unit.test_payload_store import _leaked
from tests.unit.test_redaction_scrub import healed, markers, redact

ROOT = Path(__file__).resolve().parents[2]
COUNT = 400
GONE = [n for n in range(COUNT) if n % 2]


def run(db: Path, mode: str, arg: str) -> list[str]:
    proc = subprocess.run([sys.executable, "-m", "tests.integration.scrub_crasher", str(db),
                           mode, arg], cwd=ROOT, capture_output=True, text=True, timeout=60)
    out = proc.stdout.split()
    assert proc.returncode == -signal.SIGKILL or (proc.returncode == 0 and "survived" in out), (
        proc.returncode, proc.stderr)
    return out


def copy_dir(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for f in src.iterdir():
        if f.name.startswith("chain.db"):
            shutil.copy(f, dst / f.name)
    return dst / "chain.db"


def reopen_and_check(db: Path) -> int:
    """Open for writing as a restarting node does; the rebuilds it ran."""
    store = SqliteStore(db, genesis_hash=GOVERNED.hash, config=GOVERNED.config)
    try:
        rebuilt = store.sealed_rebuilds
        assert not store.rebuild_pending()
        assert (db.parent / "chain.db-wal").stat().st_size == 0
    finally:
        store.close()
    assert _leaked(db.parent, markers("X", GONE)) == []
    kept = [n for n in range(COUNT) if n not in GONE]
    assert _leaked(db.parent, markers("X", kept)) == kept
    return rebuilt


@pytest.mark.slow
def test_a_kill_at_any_point_of_the_erasure_leaves_no_copy_after_the_restart(
        tmp_path: Path) -> None:
    live = tmp_path / "live"
    live.mkdir()
    store, builder, records = healed(live / "chain.db", COUNT, "X")
    assert store.scrub()
    base = copy_dir(live, tmp_path / "base")  # before the redaction, WAL empty
    redact(store, builder, [records[n][0].id for n in GONE], 0)
    block = tmp_path / "redaction.block"
    block.write_bytes(store.block_bytes(store.height) or b"")
    store.close()

    # killed right after the redaction's commit: nothing scrubbed, the flag durable
    pending = copy_dir(base.parent, tmp_path / "pending")
    assert "committed" in run(pending, "commit", str(block))
    assert _leaked(pending.parent, markers("X", GONE)), "the crash left nothing to erase"
    assert reopen_and_check(copy_dir(pending.parent, tmp_path / "after-commit")) == 1

    # killed inside the open's rebuild: the flag must survive it and the next open redo it
    cut = 0
    for steps in (10, 100, 1000, 3000, 100_000):
        db = copy_dir(pending.parent, tmp_path / f"rebuild-{steps}")
        out = run(db, "rebuild", str(steps))
        assert "rebuilding" in out
        if "rebuilt" not in out:
            cut += 1
            print(f"killed {steps} VM steps into the rebuild: markers in the files "
                  f"{len(_leaked(db.parent, markers('X', GONE)))}")
            assert reopen_and_check(db) == 1, steps
        else:
            assert reopen_and_check(db) == 0, steps
    assert cut >= 2, "no kill landed inside the rebuild"

    # killed inside (or just after) the TRUNCATE checkpoint that follows the rebuild
    for micros in (0, 200, 1000, 5000, 20_000):
        db = copy_dir(pending.parent, tmp_path / f"checkpoint-{micros}")
        out = run(db, "checkpoint", str(micros))
        assert "checkpointing" in out
        wal = db.parent / "chain.db-wal"
        size = wal.stat().st_size if wal.exists() else 0
        print(f"killed {micros} us into the checkpoint: WAL {size} B, "
              f"markers in the files {len(_leaked(db.parent, markers('X', GONE)))}")
        assert reopen_and_check(db) == 0, micros  # the rebuild had committed
