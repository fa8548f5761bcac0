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


# -- the witnesses section (SPEC section 12) --------------------------------------------------

FXW = make_fixture(witnesses=2)


def cosigned_export(tmp_path: Path, heights: tuple[int, ...] = (2, 5)) -> tuple[Path, Path]:
    """A 6-block chain whose store holds both witnesses' cosignatures of ``heights``,
    exported from the store."""
    from ledger.witness import cosign

    db = tmp_path / "chain.db"
    with SqliteStore(db, genesis_hash=FXW.genesis.hash) as s:
        b = ChainBuilder(FXW, s)
        for i in range(6):
            b.add(i % 3 + 1)
        for h in heights:
            header = b.blocks[h - 1].header
            for key in FXW.witnesses:
                assert s.add_cosignature(h, key.public, cosign(key, FXW.genesis.hash, header))
    genesis = FXW.write_genesis(tmp_path)
    out = tmp_path / "chain.bundle"
    assert cli.main(["export", "--db", str(db), "--genesis", str(genesis), "--out", str(out),
                     "-q"]) == 0
    return out, genesis


def test_export_writes_the_store_s_cosignatures_and_audit_verifies_them(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out, genesis = cosigned_export(tmp_path)
    objs = objects(out)
    with SqliteStore(tmp_path / "chain.db", readonly=True) as store:
        assert objs[1:7] == [store.block_bytes(h) for h in range(1, 7)]
        section = objs[7]
        assert section == ["witnesses", [[h, pk, sig] for h, pk, sig
                                         in store.cosignatures_between(1, 6)]]
        assert objs[8] == ["end", 6, store.tip_hash()]
    assert [e[0] for e in section[1]] == [2, 2, 5, 5]  # type: ignore[index]
    assert audit(out, genesis) == 0
    assert "4 witness cosignatures of 2 heights verified" in capsys.readouterr().out


def test_a_store_without_cosignatures_writes_no_witnesses_section(tmp_path: Path) -> None:
    out, _ = cosigned_export(tmp_path, heights=())
    assert not any(isinstance(o, list) and o[0] == "witnesses" for o in objects(out))


@pytest.mark.parametrize("case, expected", [
    ("bad_sig", "height 5: witnesses section.witnesses[1]: cosignature by"),
    ("unknown_key", "height 2: witnesses section.witnesses[0]: "),
    ("other_height", "height 5: "),
    ("twice", "height 2: witnesses section.witnesses[2]: witness"),
    ("beyond", "height 9: "),
    ("short_sig", "height 2: "),
    ("not_a_list", "height 7: "),
    ("before_a_block", "height 6: "),
    ("two_sections", "height 7: "),
])
def test_bad_witness_entries_fail_the_file_audit_at_their_height(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str, expected: str) -> None:
    out, genesis = cosigned_export(tmp_path)
    objs = objects(out)
    section: list = objs[7]  # type: ignore[assignment]
    entries = section[1]
    if case == "bad_sig":
        sig = bytearray(entries[3][2])
        sig[0] ^= 1
        entries[3][2] = bytes(sig)
    elif case == "unknown_key":
        entries[0][1] = FX.validator_keys[0].public
    elif case == "other_height":  # height 2's cosignature listed at height 5
        entries[2][2] = entries[0][2]
    elif case == "twice":
        entries.insert(2, list(entries[0]))
    elif case == "beyond":
        entries.append([9, entries[0][1], entries[0][2]])
    elif case == "short_sig":
        entries[0][2] = entries[0][2][:10]
    elif case == "not_a_list":
        objs[7] = ["witnesses", {"a": 1}]
    elif case == "before_a_block":
        objs.insert(6, objs.pop(7))
    elif case == "two_sections":
        objs.insert(8, section)
    write(out, objs)
    code = audit(out, genesis)
    assert code != 0
    err = capsys.readouterr().err
    assert expected in err, err


def test_witnesses_count_from_the_height_their_configuration_governs(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A witness added by a configuration change at height 2 cosigns from height 3: its
    cosignature of height 2 in a bundle fails the audit there, of height 3 passes."""
    import copy

    from ledger.witness import cosign
    from tests.factory import (
        change_bytes,
        change_record,
        config_doc,
        make_governed_fixture,
        seeded_key,
    )

    gov = make_governed_fixture()
    joiner = seeded_key("witness-joining")
    genesis = gov.write_genesis(tmp_path)
    for height, ok in ((3, True), (2, False)):
        db = tmp_path / f"chain{height}.db"
        with SqliteStore(db, genesis_hash=gov.genesis.hash, config=gov.genesis.config) as s:
            b = ChainBuilder(gov, s)
            b.add(1)
            doc = copy.deepcopy(config_doc(gov.genesis))
            doc["witnesses"] = [{"name": "joiner", "pubkey": joiner.public.hex()}]
            rec = change_record(gov.genesis.config, gov.admins[0],
                                change_bytes(gov.genesis.config, doc),
                                approvers=gov.admins[:2], nonce=1)
            block = b.block([rec])
            s.append(block)
            b.blocks.append(block)
            assert s.history is not None
            b.follow(s.history.latest)
            b.add(1)
            header = b.blocks[height - 1].header
            s.add_cosignature(height, joiner.public, cosign(joiner, gov.genesis.hash, header))
        out = tmp_path / f"chain{height}.bundle"
        assert cli.main(["export", "--db", str(db), "--genesis", str(genesis), "--out",
                         str(out), "-q"]) == 0
        assert (audit(out, genesis) == 0) is ok
        captured = capsys.readouterr()
        if ok:
            assert "1 witness cosignature of 1 height verified" in captured.out
        else:
            assert "height 2: " in captured.err and "not a witness" in captured.err


def test_export_over_http_carries_the_node_s_cosignatures(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """``ledger export --node`` writes the witnesses section from ``GET /v1/log/
    cosignatures`` (paged by height), and ``audit --file`` verifies it."""
    from ledger.witness import cosign
    from node import api as node_api
    from tests.inprocess import InProcessApi
    from tests.unit.test_log_proofs import served

    monkeypatch.setattr(node_api, "COSIGNATURE_PAGE_HEIGHTS", 2)  # 6 heights: 3 pages
    genesis = FXW.write_genesis(tmp_path)
    api = InProcessApi(FXW)
    service = api.service
    for n in (2, 3, 1, 2, 1, 1):
        block = service.builder.block([api.record() for _ in range(n)])
        service.append(block)
        service.builder.blocks.append(block)
    for h in (1, 4, 5):
        header = service.builder.blocks[h - 1].header
        for key in FXW.witnesses[:2]:
            assert api.store.add_cosignature(h, key.public,
                                             cosign(key, FXW.genesis.hash, header))
    out = tmp_path / "http.bundle"
    with served(api) as url:
        assert cli.main(["export", "--node", url, "--out", str(out), "-q"]) == 0
        from node.client import LedgerClient
        page = LedgerClient(url).cosignatures(1)
        assert (page["from_height"], page["to_height"], page["next"]) == (1, 2, 3)
        assert [c["height"] for c in page["cosignatures"]] == [1, 1]
    objs = objects(out)
    assert objs[-2] == ["witnesses", [[h, pk, sig] for h, pk, sig
                                      in api.store.cosignatures_between(1, 6)]]
    assert len(objs[-2][1]) == 6  # type: ignore[index]
    assert audit(out, genesis) == 0
    assert "6 witness cosignatures of 3 heights verified" in capsys.readouterr().out


def sealed_bundle(tmp_path: Path, case: str = "good") -> tuple[Path, Path, list[object]]:
    """A bundle of test_one_rule's SealedChain (block 1: three sealed records; block 2
    redacts the third) with a payloads section for the two not redacted, altered by
    ``case``."""
    from ledger.crypto import sha256
    from tests.unit.test_one_rule import GOVERNED, SealedChain

    c = SealedChain()
    db = tmp_path / "sealed.db"
    c.sqlite(db).close()
    genesis = tmp_path / "genesis.json"
    genesis.write_bytes(GOVERNED.raw)
    out = tmp_path / "sealed.bundle"
    assert cli.main(["export", "--db", str(db), "--genesis", str(genesis), "--out", str(out),
                     "-q"]) == 0

    def pair(record: object, nonce: int) -> list[bytes]:
        return [record.id, sha256(b"salt" + nonce.to_bytes(8, "big")),  # type: ignore[attr-defined]
                packb({"secret": nonce})]

    entries = [pair(c.own, 10_001), pair(c.acme, 10_002)]
    objs = objects(out)
    if case == "wrong_salt":
        entries[1][1] = bytes(32)
    elif case == "short_salt":
        entries[1][1] = bytes(31)
    elif case == "not_a_payload":
        entries[0][2] = b"\xc1"  # never used in msgpack
    elif case == "unknown_id":
        entries.append([bytes(32), bytes(32), packb(1)])
    elif case == "inline_id":
        entries.append([c.inline.id, bytes(32), packb(1)])
    elif case == "twice":
        entries.append(entries[0])
    elif case == "redacted":
        entries.append(pair(c.gone, 10_003))
    section = ["payloads", entries]
    if case == "after_witnesses":
        objs.insert(-1, ["witnesses", []])
    objs.insert(-1, section)
    if case == "two_sections":
        objs.insert(-1, section)
    write(out, objs)
    return out, genesis, objs


def test_a_payloads_section_is_checked_against_the_sealed_digests(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """SPEC section 12: ``audit --file`` checks every payload against its digest."""
    out, genesis, _ = sealed_bundle(tmp_path)
    assert audit(out, genesis) == 0
    assert "2 sealed payloads matched their digests" in capsys.readouterr().out


@pytest.mark.parametrize("case, expected", [
    ("wrong_salt", "height 1: "),
    ("short_salt", "height 1: "),
    ("not_a_payload", "height 1: "),
    ("unknown_id", "height 3: "),
    ("inline_id", "height 3: "),
    ("twice", "height 1: "),
    ("redacted", "height 2: "),
    ("after_witnesses", "height 3: "),
    ("two_sections", "height 3: "),
])
def test_a_bad_payloads_entry_fails_the_file_audit(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str, expected: str) -> None:
    out, genesis, _ = sealed_bundle(tmp_path, case)
    assert audit(out, genesis) == 1
    err = capsys.readouterr().err
    assert err.startswith(expected), err


def test_a_node_import_keeps_a_payloads_section(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A node started from a bundle keeps its sealed payloads, each checked."""
    from node.config import NodeConfig

    out, genesis, objs = sealed_bundle(tmp_path)
    code = cli.main(["node", "init", str(tmp_path / "n"), "--genesis", str(genesis),
                     "--api", "127.0.0.1:1", "--p2p", "127.0.0.1:2", "--bundle", str(out), "-q"])
    assert code == 0, capsys.readouterr().err
    assert "2 sealed payloads checked and kept" in capsys.readouterr().out
    entries = next(o for o in objs if isinstance(o, list) and o[0] == "payloads")[1]
    store = SqliteStore(NodeConfig.load(tmp_path / "n").store_path, readonly=True)
    try:
        held = store.payloads([e[0] for e in entries])  # type: ignore[union-attr]
    finally:
        store.close()
    assert {rid: (p.salt, p.payload) for rid, p in held.items()} == {
        e[0]: (e[1], e[2]) for e in entries}  # type: ignore[union-attr]
