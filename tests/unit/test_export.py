"""Export bundles (SPEC section 12): ledger export, then ledger audit --file."""

from __future__ import annotations

from pathlib import Path

import msgpack
import pytest

from ledger.encoding import packb
from ledger.store import SqliteStore
from node import cli
from tests.factory import ChainBuilder, make_fixture

FX = make_fixture()


def chain(tmp_path: Path, blocks: int = 6) -> tuple[Path, Path]:
    db = tmp_path / "chain.db"
    with SqliteStore(db, genesis_hash=FX.genesis.hash) as s:
        b = ChainBuilder(FX, s)
        for i in range(blocks):
            b.add(i % 3 + 1)
    return db, FX.write_genesis(tmp_path)


def export(tmp_path: Path) -> tuple[Path, Path]:
    db, genesis = chain(tmp_path)
    out = tmp_path / "chain.bundle"
    assert cli.main(["export", "--db", str(db), "--genesis", str(genesis), "--out", str(out),
                     "-q"]) == 0
    assert not (tmp_path / "chain.bundle.tmp").exists()
    return out, genesis


def objects(path: Path) -> list[object]:
    return list(msgpack.Unpacker(open(path, "rb"), raw=False))


def write(path: Path, objs: list[object]) -> None:
    path.write_bytes(b"".join(packb(o) for o in objs))


def audit(bundle: Path, genesis: Path) -> int:
    return cli.main(["audit", "--file", str(bundle), "--genesis", str(genesis), "-q",
                     "--workers", "1"])


def test_export_layout_is_the_spec_s(tmp_path: Path) -> None:
    out, genesis = export(tmp_path)
    objs = objects(out)
    store = SqliteStore(tmp_path / "chain.db", readonly=True)
    try:
        assert objs[0] == ["ledger-export", 1, genesis.read_bytes()]
        assert objs[1:-1] == [store.block_bytes(h) for h in range(1, 7)]
        assert objs[-1] == ["end", 6, store.tip_hash()]
    finally:
        store.close()


def test_round_trip_audits_clean(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out, genesis = export(tmp_path)
    assert audit(out, genesis) == 0
    assert "6 blocks" in capsys.readouterr().out


def test_export_over_http_audits_clean(tmp_path: Path) -> None:
    from tests.inprocess import InProcessApi
    from tests.unit.test_log_proofs import served

    genesis = FX.write_genesis(tmp_path)
    api = InProcessApi(FX)
    service = api.service
    for n in (2, 3, 1, 2):
        block = service.builder.block([api.record() for _ in range(n)])
        service.append(block)
        service.builder.blocks.append(block)
    out = tmp_path / "http.bundle"
    with served(api) as url:
        assert cli.main(["export", "--node", url, "--out", str(out), "-q"]) == 0
    objs = objects(out)
    assert objs[0] == ["ledger-export", 1, genesis.read_bytes()]
    assert objs[1:-1] == [api.store.block_bytes(h) for h in range(1, 5)]
    assert audit(out, genesis) == 0


@pytest.mark.parametrize("case, expected", [
    ("truncated", "height 5: "),
    ("reordered", "height 3: "),
    ("altered", "height 4: "),
    ("trailing", "data after the end marker"),
    ("bad_count", "end marker counts 5"),
    ("bad_tip", "end marker names tip"),
    ("payloads", "not supported yet"),
])
def test_damaged_bundle_is_rejected(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                    case: str, expected: str) -> None:
    out, genesis = export(tmp_path)
    objs = objects(out)
    blocks = objs[1:-1]
    if case == "truncated":
        objs = objs[:5]  # header + 4 blocks, no end marker
    elif case == "reordered":
        objs[3], objs[4] = objs[4], objs[3]
    elif case == "altered":
        data = bytearray(blocks[3])  # type: ignore[arg-type]
        data[-10] ^= 1
        objs[4] = bytes(data)
    elif case == "trailing":
        objs.append(b"junk")
    elif case == "bad_count":
        objs[-1] = ["end", 5, objs[-1][2]]  # type: ignore[index]
    elif case == "bad_tip":
        objs[-1] = ["end", 6, bytes(32)]
    elif case == "payloads":
        objs.insert(-1, ["payloads", []])
    write(out, objs)
    code = audit(out, genesis)
    assert code != 0
    assert expected in capsys.readouterr().err


def test_trailing_bytes_that_are_not_msgpack_are_rejected(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out, genesis = export(tmp_path)
    for junk in (b"\xc1", b"\x92"):  # never valid msgpack; an incomplete array
        out.write_bytes(out.read_bytes() + junk)
        assert audit(out, genesis) == 1
        assert "data after the end marker" in capsys.readouterr().err
        out.write_bytes(out.read_bytes()[:-1])
    assert audit(out, genesis) == 0


def test_wrong_genesis_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out, genesis = export(tmp_path)
    other = tmp_path / "other"
    other.mkdir()
    g2 = make_fixture(chain="other-chain").write_genesis(other)
    assert audit(out, g2) == 2
    assert "genesis.json is not the bytes" in capsys.readouterr().err
    edited = tmp_path / "edited.json"
    edited.write_bytes(genesis.read_bytes() + b"\n")
    assert audit(out, edited) == 2


def test_failed_export_leaves_no_file(tmp_path: Path) -> None:
    db = tmp_path / "empty.db"
    SqliteStore(db, genesis_hash=FX.genesis.hash).close()
    out = tmp_path / "x.bundle"
    code = cli.main(["export", "--db", str(db), "--genesis", str(FX.write_genesis(tmp_path)),
                     "--out", str(out), "-q"])
    assert code == 2
    assert list(tmp_path.glob("x.bundle*")) == []


def test_db_export_needs_genesis(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db, _ = chain(tmp_path, blocks=1)
    assert cli.main(["export", "--db", str(db), "--out", str(tmp_path / "b"), "-q"]) == 2
    assert "--db needs --genesis" in capsys.readouterr().err


def test_bundle_cut_mid_object_is_truncated(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    out, genesis = export(tmp_path)
    data = out.read_bytes()
    for cut in (5, 60):  # inside the end marker; inside the last block
        out.write_bytes(data[:-cut])
        assert audit(out, genesis) == 1
        assert "truncated" in capsys.readouterr().err
