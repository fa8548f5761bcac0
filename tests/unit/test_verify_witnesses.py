"""The verifier's side of witnesses and trusted checkpoints (SPEC sections 6 and 11):
``verify_receipt(..., witnesses=k, checkpoints=...)``, ``verify_checkpoint(...,
witnesses=k)`` and ``ledger verify --witnesses K --checkpoint H:HASH``.

The chain: genesis lists witnesses w0..w2; a configuration change at height 2 replaces them
with w3, w4 (governing from height 3). The witnesses of a height are those of the
configuration the receipt's ``config_proof`` derives, so w0's cosignature of height 4 is
refused however valid its signature."""

from __future__ import annotations

import copy
import json
import pickle
from pathlib import Path
from typing import Any

import pytest

from ledger.blocks import Header
from ledger.checkpoint import checkpoint_json, verify_checkpoint
from ledger.crypto import PrivateKey
from ledger.encoding import b64decode
from ledger.errors import LogProofError, ReceiptError
from ledger.genesis import Genesis
from ledger.receipts import TrustedCheckpoint, build_receipt, config_steps, verify_receipt
from ledger.store.memory import MemoryStore
from ledger.validation import check_records
from ledger.witness import cosign, witnesses_json
from tests.factory import (
    ChainBuilder,
    Fixture,
    change_bytes,
    change_record,
    config_doc,
    make_governed_fixture,
    seeded_key,
)

WITNESSES = [seeded_key(f"witness-{i}") for i in range(5)]


def governed_with_witnesses() -> Fixture:
    """make_governed_fixture's chain, its genesis listing witnesses w0..w2."""
    fx = make_governed_fixture()
    doc = json.loads(fx.genesis.raw)
    doc["witnesses"] = [{"name": f"w{i}", "pubkey": k.public.hex()}
                        for i, k in enumerate(WITNESSES[:3])]
    raw = json.dumps(doc, indent=2).encode()
    return Fixture(Genesis.from_bytes(raw), fx.validator_keys, fx.writer, fx.operator,
                   fx.outsider, fx.admins, WITNESSES[:3])


FX = governed_with_witnesses()
CHANGES = [(2, 0)]


@pytest.fixture(scope="module")
def chain() -> tuple[MemoryStore, ChainBuilder]:
    """Heights 1..5; at 2 a change to witnesses w3, w4 (no other change)."""
    store = MemoryStore(FX.genesis.hash)
    b = ChainBuilder(FX, store)
    b.add(2)
    config = FX.genesis.config
    d = copy.deepcopy(config_doc(FX.genesis))
    d["witnesses"] = [{"name": f"w{i}", "pubkey": WITNESSES[i].public.hex()} for i in (3, 4)]
    rec = change_record(config, FX.admins[0], change_bytes(config, d),
                        approvers=FX.admins[1:], nonce=2)
    block = b.block([rec, b.record()])
    store.append(block)
    b.blocks.append(block)
    new = check_records(config, block.records).config
    assert new is not None and [w.name for w in new.witnesses] == ["w3", "w4"]
    b.follow(new)
    for _ in range(3):
        b.add(2)
    return store, b


def receipt_at(chain: tuple[MemoryStore, ChainBuilder], height: int,
               signers: list[PrivateKey] | None) -> dict[str, Any]:
    """The receipt of the first record at ``height``, listing the cosignatures of
    ``signers`` (None: no ``witnesses`` key, a v1.0 receipt)."""
    store, b = chain
    block = b.blocks[height - 1]
    receipt = build_receipt(store, block.records[0].id, CHANGES)
    assert receipt is not None
    if signers is not None:
        receipt["witnesses"] = witnesses_json(
            (k.public, cosign(k, FX.genesis.hash, block.header)) for k in signers)
    return receipt


def test_receipt_witnesses_are_those_of_the_height_the_config_proof_derives(
        chain: tuple[MemoryStore, ChainBuilder]) -> None:
    w = WITNESSES
    # height 1: genesis's w0..w2
    early = receipt_at(chain, 1, w[:2])
    assert verify_receipt(early, FX.genesis, witnesses=2).witnesses == 2
    # height 4: w3, w4 govern after the change at 2
    late = receipt_at(chain, 4, [w[3], w[4]])
    result = verify_receipt(late, FX.genesis, witnesses=2)
    assert (result.witnesses, result.config and result.config.version) == (2, 1)
    # a retired witness's cosignature of height 4 holds as a signature, yet is refused
    with pytest.raises(ReceiptError, match=r"receipt.witnesses\[0\]: .* is not a witness of "
                                           r"height 4") as err:
        verify_receipt(receipt_at(chain, 4, [w[0], w[3]]), FX.genesis)
    assert err.value.code == "unknown_witness"
    # ... and so is the new witnesses' cosignature of height 1
    with pytest.raises(ReceiptError, match="is not a witness of height 1"):
        verify_receipt(receipt_at(chain, 1, [w[3]]), FX.genesis)


def test_k_is_demanded_and_every_listed_entry_checked(
        chain: tuple[MemoryStore, ChainBuilder]) -> None:
    w = WITNESSES
    one = receipt_at(chain, 4, [w[3]])
    assert verify_receipt(one, FX.genesis).witnesses == 1
    assert verify_receipt(one, FX.genesis, witnesses=1).witnesses == 1
    with pytest.raises(ReceiptError) as err:
        verify_receipt(one, FX.genesis, witnesses=2)
    assert str(err.value) == ("receipt: 1 witness cosignature of height 4, 2 required (the "
                              "configuration lists 2 witnesses)")
    assert err.value.code == "witnesses_insufficient"
    # a cosignature of another block (height 3's header) is a bad entry even with K=0
    _, b = chain
    wrong = dict(one, witnesses=witnesses_json(
        [(w[3].public, cosign(w[3], FX.genesis.hash, b.blocks[2].header))]))
    with pytest.raises(ReceiptError, match=r"witnesses\[0\]: cosignature by .* does not "
                                           r"verify over block") as err:
        verify_receipt(wrong, FX.genesis)
    assert err.value.code == "bad_cosignature"
    # a repeated witness counts once, and is refused
    twice = dict(one, witnesses=one["witnesses"] * 2)
    with pytest.raises(ReceiptError, match="listed twice"):
        verify_receipt(twice, FX.genesis, witnesses=2)
    for bad in ({"witnesses": "x"}, {"witnesses": [{"pubkey": "00"}]},
                {"witnesses": [{"pubkey": w[3].public.hex(), "sig": "!"}]}):
        with pytest.raises(ReceiptError):
            verify_receipt({**one, **bad}, FX.genesis)


def test_v10_receipts_verify_unless_witnesses_are_demanded(
        chain: tuple[MemoryStore, ChainBuilder]) -> None:
    bare = receipt_at(chain, 4, None)
    assert verify_receipt(bare, FX.genesis).witnesses is None
    assert verify_receipt(bare, FX.genesis, witnesses=0).witnesses is None
    with pytest.raises(ReceiptError, match=r"no witness cosignatures \('witnesses' is "
                                           r"missing\); 1 required for height 4") as err:
        verify_receipt(bare, FX.genesis, witnesses=1)
    assert err.value.code == "witnesses_insufficient"
    # an empty list: zero cosignatures, fine at K=0
    assert verify_receipt({**bare, "witnesses": []}, FX.genesis).witnesses == 0
    with pytest.raises(ValueError):
        verify_receipt(bare, FX.genesis, witnesses=-1)


def test_trusted_checkpoints_match_only_where_the_receipt_shows_the_header(
        chain: tuple[MemoryStore, ChainBuilder]) -> None:
    _, b = chain
    receipt = receipt_at(chain, 4, None)
    at = {h: b.blocks[h - 1].header.hash for h in range(1, 6)}
    own = TrustedCheckpoint(4, at[4])
    step = TrustedCheckpoint(2, at[2])
    result = verify_receipt(receipt, FX.genesis, checkpoints=(own, step))
    assert result.checkpoints == ((own, "receipt"), (step, "config_proof[0]"))
    # another block at the receipt's height, or at the step's: another history
    for point, where in ((TrustedCheckpoint(4, at[3]), "receipt"),
                         (TrustedCheckpoint(2, at[1]), r"config_proof\[0\]")):
        with pytest.raises(ReceiptError, match=rf"^{where}: block .* at height "
                                               rf"{point.height} is not the trusted") as err:
            verify_receipt(receipt, FX.genesis, checkpoints=(point,))
        assert err.value.code == "checkpoint_mismatch"
    # heights the receipt holds no header of: refused, not passed unchecked
    for height in (1, 3, 5):
        with pytest.raises(ReceiptError, match=rf"checkpoint at height {height} cannot be "
                                               r"checked offline .* heights 2, 4 only") as err:
            verify_receipt(receipt, FX.genesis, checkpoints=(TrustedCheckpoint(height,
                                                                               at[height]),))
        assert err.value.code == "checkpoint_unprovable"


def test_trusted_checkpoint_parsing() -> None:
    h = "ab" * 32
    assert TrustedCheckpoint.parse(f"7:{h}") == TrustedCheckpoint(7, bytes.fromhex(h))
    assert str(TrustedCheckpoint.parse(f"7:{h}")) == f"7:{h}"
    assert TrustedCheckpoint.parse(f"7:{h.upper()}") == TrustedCheckpoint.parse(f"7:{h}")
    for bad in ("7", f"0:{h}", f"-1:{h}", f"x:{h}", "7:abcd", f"7:{h}00", f":{h}", f"7:{h}:"):
        with pytest.raises(ReceiptError):
            TrustedCheckpoint.parse(bad)
    err = ReceiptError("m", code="checkpoint_mismatch")
    again = pickle.loads(pickle.dumps(err))
    assert (type(again), str(again), again.code) == (ReceiptError, "m", "checkpoint_mismatch")


def checkpoint_doc(chain: tuple[MemoryStore, ChainBuilder], height: int,
                   signers: list[PrivateKey]) -> tuple[dict[str, Any], list[Any]]:
    store, b = chain
    block = b.blocks[height - 1]
    doc = checkpoint_json(block.header, block.cert)
    doc["witnesses"] = witnesses_json(
        (k.public, cosign(k, FX.genesis.hash, block.header)) for k in signers)
    return doc, config_steps(store, CHANGES, height)


def test_verify_checkpoint_counts_and_demands_witnesses(
        chain: tuple[MemoryStore, ChainBuilder]) -> None:
    w = WITNESSES
    doc, steps = checkpoint_doc(chain, 5, [w[3], w[4]])
    point = verify_checkpoint(doc, steps, FX.genesis, witnesses=2)
    assert (point.height, point.witnesses) == (5, 2)
    assert verify_checkpoint({**doc, "witnesses": []}, steps, FX.genesis).witnesses == 0
    with pytest.raises(LogProofError, match="0 witness cosignatures of height 5, 1 required "
                                            r"\(the configuration lists 2 witnesses\)") as err:
        verify_checkpoint({**doc, "witnesses": []}, steps, FX.genesis, witnesses=1)
    assert err.value.code == "witnesses_insufficient"
    # a retired witness, and a cosignature of height 1's block, are bad entries at any k
    retired, _ = checkpoint_doc(chain, 5, [w[0]])
    with pytest.raises(LogProofError, match="is not a witness of height 5") as err:
        verify_checkpoint(retired, steps, FX.genesis)
    assert err.value.code == "unknown_witness"
    early, early_steps = checkpoint_doc(chain, 1, [w[0], w[1], w[2]])
    assert verify_checkpoint(early, early_steps, FX.genesis, witnesses=3).witnesses == 3
    w0_sig = b64decode(early["witnesses"][0]["sig"], "sig")  # w0's, over height 1
    swapped = {**doc, "witnesses": witnesses_json([(w[3].public, w0_sig)])}
    with pytest.raises(LogProofError, match="does not verify") as err:
        verify_checkpoint(swapped, steps, FX.genesis)
    assert err.value.code == "bad_cosignature"
    # the header as served is still what was verified
    assert Header.from_wire(b64decode(doc["header"], "h")) == point.header


def test_cli_verify_witnesses_and_checkpoint(chain: tuple[MemoryStore, ChainBuilder],
                                            tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    from node.cli import main

    _, b = chain
    genesis = FX.write_genesis(tmp_path)
    path = tmp_path / "receipt.json"

    def run(receipt: dict[str, Any], *extra: str) -> tuple[int, str, str]:
        path.write_text(json.dumps(receipt))
        code = main(["verify", str(path), "--genesis", str(genesis), *extra])
        out, err = capsys.readouterr()
        return code, out, err

    one = receipt_at(chain, 4, [WITNESSES[3]])
    code, out, _ = run(one)
    assert code == 0 and "; cosigned by 1 of 2 witnesses" in out
    code, out, _ = run(one, "--witnesses", "1")
    assert code == 0
    code, _, err = run(one, "--witnesses", "2")
    assert (code, err) == (1, "invalid: receipt: 1 witness cosignature of height 4, 2 "
                              "required (the configuration lists 2 witnesses)\n")
    code, _, err = run(receipt_at(chain, 4, None), "--witnesses", "1")
    assert code == 1 and "'witnesses' is missing" in err
    code, out, _ = run(receipt_at(chain, 4, None))
    assert code == 0 and "cosigned" not in out
    four, two = b.blocks[3].header.hash.hex(), b.blocks[1].header.hash.hex()
    code, out, _ = run(one, "--checkpoint", f"4:{four}", "--checkpoint", f"2:{two}")
    assert code == 0
    assert f"trusted checkpoint 4:{four[:16]}… is the receipt's own block" in out
    assert f"trusted checkpoint 2:{two[:16]}… is config_proof[0]'s block" in out
    code, _, err = run(one, "--checkpoint", f"4:{two}")
    assert code == 1 and err.startswith("invalid: receipt: block ") and "another history" in err
    code, _, err = run(one, "--checkpoint", f"3:{two}")
    assert code == 1 and "cannot be checked offline" in err
    with pytest.raises(SystemExit) as exit_:
        main(["verify", str(path), "--genesis", str(genesis), "--checkpoint", "4:zz"])
    assert exit_.value.code == 2
    with pytest.raises(SystemExit):
        main(["verify", str(path), "--genesis", str(genesis), "--witnesses", "-1"])
    capsys.readouterr()


def test_a_fork_that_omits_a_change_verifies_alone_but_not_with_witnesses_or_a_checkpoint(
        chain: tuple[MemoryStore, ChainBuilder], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    """SPEC section 6's residual risk: validators sign a history without the change at
    height 2 (here they are still the set in force; a set a change removed could do the
    same with its retired keys). Its receipts verify with genesis alone; the honest
    witnesses never cosigned it, and a checkpoint of the real chain names another block."""
    from node.cli import main

    _, real = chain
    fork_store = MemoryStore(FX.genesis.hash)
    fork = ChainBuilder(FX, fork_store, time_ms=real.time_ms + 10_000, nonce=500)
    fork_store.append(real.blocks[0])
    for _ in range(3):
        fork.add(2)
    assert fork_store.height == 4 and fork.blocks[-1].header.hash != real.blocks[3].header.hash
    rec = fork.blocks[-1].records[0]
    receipt = build_receipt(fork_store, rec.id, [])
    assert receipt is not None
    assert verify_receipt(receipt, FX.genesis).header.height == 4  # genesis alone: fooled
    # the real height 4's cosignatures (by w3, w4) do not carry over to the fork's block,
    # and the genesis witnesses w0..w2 (in force on the fork) cosigned nothing of it
    real_receipt = receipt_at(chain, 4, [WITNESSES[3], WITNESSES[4]])
    with pytest.raises(ReceiptError, match="is not a witness of height 4"):
        verify_receipt({**receipt, "witnesses": real_receipt["witnesses"]}, FX.genesis)
    with pytest.raises(ReceiptError, match="1 required"):
        verify_receipt({**receipt, "witnesses": []}, FX.genesis, witnesses=1)
    genesis = FX.write_genesis(tmp_path)
    path = tmp_path / "fork.json"
    path.write_text(json.dumps({**receipt, "witnesses": []}))
    argv = ["verify", str(path), "--genesis", str(genesis)]
    assert main(argv) == 0
    assert main([*argv, "--witnesses", "1"]) == 1
    real_four = real.blocks[3].header.hash.hex()
    assert main([*argv, "--checkpoint", f"4:{real_four}"]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("invalid: receipt: 0 witness cosignatures of height 4, 1 required")
    assert err[1].startswith("invalid: receipt: block ") and err[1].endswith("another history")
