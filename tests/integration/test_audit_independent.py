"""`ledger audit` (and `ledger verify`) against a chain written by an independent implementation.

The chain comes from ``tests.independent.writer`` and is served by ``tests.independent.server``;
neither imports ``ledger`` or ``node``, and neither does the mini-verifier below, which pins that
the writer's chains are what they claim to be (clean, or broken only at height 3) so the
subprocess tests cannot pass vacuously.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import msgpack
import pytest
from nacl.exceptions import CryptoError
from nacl.signing import VerifyKey

from tests.independent import writer
from tests.independent.server import running, serve_chain

REPO_ROOT = Path(__file__).resolve().parents[2]

CLI_TIMEOUT_S = 120
RECORD_KEYS = frozenset({"chain", "type", "subject", "payload", "ts", "nonce", "signer"})
TYPE_PATTERN = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
HEIGHT_MENTION = re.compile(r"\bheight (\d+):")

# What the mini-verifier must say about each fault (a word of its reason).
FAULT_REASONS = {
    "bad_record_sig": "signature",
    "unauthorised_signer": "not authorised",
    "broken_prev_hash": "prev_hash",
    "weak_cert": "power",
    "wrong_log_root": "log_root",
}


# --- a mini-verifier, independent of both `ledger` and the writer ---------------------------


def _sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def _packb(obj: Any) -> bytes:
    data: bytes = msgpack.packb(obj, use_bin_type=True)
    return data


def _tree_head(entries: list[bytes]) -> bytes:
    """RFC 9162 tree head by another route than the writer's: level by level, odd node carried."""
    if not entries:
        return _sha256(b"")
    level = [_sha256(b"\x00" + e) for e in entries]
    while len(level) > 1:
        pairs = [_sha256(b"\x01" + level[i] + level[i + 1]) for i in range(0, len(level) - 1, 2)]
        level = [*pairs, level[-1]] if len(level) % 2 else pairs
    return level[0]


def _root_from_inclusion_proof(index: int, size: int, leaf: bytes, path: list[bytes]) -> bytes:
    """RFC 9162 section 2.1.3.2, step by step."""
    if index >= size:
        raise ValueError("index beyond tree size")
    fn, sn, r = index, size - 1, _sha256(b"\x00" + leaf)
    for p in path:
        if sn == 0:
            raise ValueError("audit path too long")
        if fn & 1 or fn == sn:
            r = _sha256(b"\x01" + p + r)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            r = _sha256(b"\x01" + r + p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ValueError("audit path too short")
    return r


def _signature_ok(pubkey: bytes, message: bytes, sig: bytes) -> bool:
    try:
        VerifyKey(pubkey).verify(message, sig)
    except (CryptoError, ValueError, TypeError):
        return False
    return True


class MiniVerifier:
    """Checks blocks in order against SPEC sections 2–5; collects every defect it finds."""

    def __init__(self, genesis: bytes) -> None:
        doc = json.loads(genesis)
        self.chain: str = doc["chain_id"]
        self.validators = [(bytes.fromhex(v["pubkey"]), int(v["power"])) for v in doc["validators"]]
        self.validators_hash = _sha256(_packb([[pk, p] for pk, p in self.validators]))
        self.roles: dict[bytes, set[str]] = {}
        for org in doc["organizations"]:
            for member in org["members"]:
                self.roles.setdefault(bytes.fromhex(member["pubkey"]), set()).update(
                    member["roles"]
                )
        self.policies: dict[str, list[str]] = doc["policies"]
        self.prev_hash = _sha256(genesis)
        self.log: list[bytes] = []
        self.ids: set[bytes] = set()
        self.nonces: set[tuple[bytes, int]] = set()

    def is_authorised(self, signer: bytes, type_: str) -> bool:
        allowed = self.policies.get(type_, self.policies.get("*", []))
        return bool(self.roles.get(signer, set()) & set(allowed))

    def record_defect(self, env_bytes: Any) -> str | None:
        if not isinstance(env_bytes, bytes):
            return "envelope is not msgpack bin"
        env = msgpack.unpackb(env_bytes, raw=False)
        if not (isinstance(env, list) and len(env) == 2 and all(isinstance(x, bytes) for x in env)):
            return "envelope is not [bin, bin]"
        body, sig = env
        pairs = msgpack.unpackb(body, raw=False, object_pairs_hook=list, strict_map_key=False)
        if not isinstance(pairs, list) or len(pairs) != 7 or {k for k, _ in pairs} != RECORD_KEYS:
            return "body is not a map of exactly the seven record keys"
        rec = dict(pairs)
        signer = rec["signer"]
        if not (isinstance(signer, bytes) and len(signer) == 32):
            return "signer is not 32 bytes"
        if not _signature_ok(signer, writer.RECORD_TAG + body, sig):
            return "record signature does not verify"
        if rec["chain"] != self.chain:
            return "record chain mismatch"
        if not (isinstance(rec["type"], str) and TYPE_PATTERN.fullmatch(rec["type"])):
            return "bad record type"
        if not (isinstance(rec["subject"], str) and 1 <= len(rec["subject"].encode()) <= 256):
            return "bad subject"
        if not (isinstance(rec["ts"], int) and isinstance(rec["nonce"], int)):
            return "ts or nonce not an int"
        if not 0 <= rec["nonce"] < 2**64:
            return "nonce out of range"
        if not self.is_authorised(signer, rec["type"]):
            return f"signer not authorised for {rec['type']!r}"
        rid = _sha256(body)
        if rid in self.ids or (signer, rec["nonce"]) in self.nonces:
            return "duplicate record id or (signer, nonce)"
        self.ids.add(rid)
        self.nonces.add((signer, rec["nonce"]))
        return None

    def cert_defects(self, height: int, block_hash: bytes, cert: Any) -> list[str]:
        if not (isinstance(cert, list) and len(cert) == 4):
            return ["certificate is not [height, round, block_hash, sigs]"]
        c_height, round_, c_hash, sigs = cert
        if c_height != height or c_hash != block_hash:
            return ["certificate is for another block"]
        vote = writer.VOTE_TAG + _packb([self.chain, 2, height, round_, block_hash])
        power, last = 0, -1
        for index, sig in sigs:
            if not (isinstance(index, int) and last < index < len(self.validators)):
                return ["certificate signers not distinct, ascending validators"]
            if not _signature_ok(self.validators[index][0], vote, sig):
                return [f"certificate signature of validator {index} does not verify"]
            power += self.validators[index][1]
            last = index
        total = sum(p for _, p in self.validators)
        if not 3 * power > 2 * total:
            return [f"certificate power {power} of {total} is not more than 2/3"]
        return []

    def block_defects(self, height: int, wire: bytes) -> list[str]:
        """Every defect of the block at ``height``; state advances over the block regardless."""
        block = msgpack.unpackb(wire, raw=False)
        header, envelopes, cert = block
        if not (isinstance(header, list) and len(header) == 11 and header[0] == 1):
            return ["header is not an 11-field version-1 array"]
        (_, chain, h, _time, prev, records_root, count, log_root, log_size, proposer, vhash) = (
            header
        )
        problems = []
        if chain != self.chain or h != height:
            problems.append("header chain or height mismatch")
        if prev != self.prev_hash:
            problems.append("prev_hash does not link to the previous block")
        if vhash != self.validators_hash:
            problems.append("validators_hash mismatch")
        if not 0 <= proposer < len(self.validators):
            problems.append("proposer out of range")
        for i, env in enumerate(envelopes):
            if reason := self.record_defect(env):
                problems.append(f"record {i}: {reason}")
        if records_root != _tree_head(envelopes) or count != len(envelopes):
            problems.append("records_root or record_count mismatch")
        self.log.extend(envelopes)
        if log_root != _tree_head(self.log) or log_size != len(self.log):
            problems.append("log_root or log_size mismatch")
        block_hash = _sha256(_packb(header))
        problems += self.cert_defects(height, block_hash, cert)
        self.prev_hash = block_hash
        return problems


def all_defects(genesis: bytes, wires: list[bytes]) -> list[str]:
    """Every defect of the chain as ``height N: reason``, lowest height first."""
    verifier = MiniVerifier(genesis)
    return [
        f"height {h}: {p}" for h, w in enumerate(wires, 1) for p in verifier.block_defects(h, w)
    ]


def receipt_defect(genesis: bytes, receipt: dict[str, Any]) -> str | None:
    """SPEC section 6's checks, with nothing but genesis."""
    verifier = MiniVerifier(genesis)
    env = base64.b64decode(receipt["envelope"])
    body, _sig = msgpack.unpackb(env, raw=False)
    if _sha256(body).hex() != receipt["record_id"]:
        return "record id"
    if reason := verifier.record_defect(env):
        return reason
    header = msgpack.unpackb(base64.b64decode(receipt["header"]), raw=False)
    if header[2] != receipt["height"]:
        return "height"
    path = [bytes.fromhex(p) for p in receipt["audit_path"]]
    try:
        root = _root_from_inclusion_proof(receipt["index"], header[6], env, path)
    except ValueError as exc:
        return str(exc)
    if root != header[5]:
        return "audit path does not reach records_root"
    c = receipt["cert"]
    sigs = [[s["validator"], base64.b64decode(s["sig"])] for s in c["signatures"]]
    block_hash = _sha256(_packb(header))
    cert = [header[2], c["round"], block_hash, sigs]
    problems = verifier.cert_defects(header[2], block_hash, cert)
    return problems[0] if problems else None


# --- the writer is what it claims to be -----------------------------------------------------

# RFC 6962 / certificate-transparency reference vectors: tree heads of the first n leaves.
CT_LEAVES = [
    bytes.fromhex(h)
    for h in (
        "",
        "00",
        "10",
        "2021",
        "3031",
        "40414243",
        "5051525354555657",
        "606162636465666768696a6b6c6d6e6f",
    )
]
CT_ROOTS = [
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]


def test_writer_merkle_matches_rfc_vectors_and_second_implementation() -> None:
    assert writer.merkle_root([]).hex() == hashlib.sha256(b"").hexdigest()
    for n, expected in enumerate(CT_ROOTS, start=1):
        assert writer.merkle_root(CT_LEAVES[:n]).hex() == expected
        assert _tree_head(CT_LEAVES[:n]).hex() == expected
    for n in range(1, 34):
        leaves = [n.to_bytes(2, "big") + i.to_bytes(2, "big") for i in range(n)]
        root = writer.merkle_root(leaves)
        assert _tree_head(leaves) == root
        for i in range(n):
            path = writer.audit_path(i, leaves)
            assert _root_from_inclusion_proof(i, n, leaves[i], path) == root


def test_independent_writer_does_not_import_ledger() -> None:
    for module in ("writer", "server", "__init__"):
        source = (REPO_ROOT / "tests" / "independent" / f"{module}.py").read_text()
        assert not re.search(r"^\s*(from|import)\s+(ledger|node)\b", source, re.MULTILINE)


def test_clean_independent_chain_is_self_consistent() -> None:
    genesis, wires = writer.build_chain()
    assert all_defects(genesis, wires) == []

    # Spelled out once more, so the mini-verifier cannot be vacuous either.
    prev, log, types = hashlib.sha256(genesis).digest(), [], set()
    for h, wire in enumerate(wires, start=1):
        header, envelopes, cert = msgpack.unpackb(wire, raw=False)
        assert _packb([header, envelopes, cert]) == wire  # canonical bytes
        assert header[2] == h and header[4] == prev
        assert all(isinstance(e, bytes) for e in envelopes)  # bin inside the block
        assert header[6] == len(envelopes) == 5
        log += envelopes
        assert header[8] == len(log) and header[7] == _tree_head(log)
        prev = hashlib.sha256(_packb(header)).digest()
        assert cert[2] == prev and len(cert[3]) in (3, 4)
        for env in envelopes:
            body, _ = msgpack.unpackb(env, raw=False)
            types.add(msgpack.unpackb(body, raw=False)["type"])
    assert types == {"sensor.reading", "maintenance.log", "batch.created"}  # "*" is exercised
    assert {round_ for round_ in (msgpack.unpackb(w)[2][1] for w in wires)} == {0, 1}


def test_chain_with_empty_block_is_self_consistent() -> None:
    genesis, wires = writer.build_chain(empty_heights=(4,))
    assert all_defects(genesis, wires) == []
    assert msgpack.unpackb(wires[3], raw=False)[1] == []


def test_writer_is_deterministic() -> None:
    assert writer.build_chain() == writer.build_chain()


@pytest.mark.parametrize("fault", writer.FAULTS)
def test_each_fault_is_the_only_defect_and_is_at_height_3(fault: str) -> None:
    genesis, clean = writer.build_chain()
    genesis_f, wires = writer.build_chain(fault=fault)
    assert genesis_f == genesis
    assert wires[:2] == clean[:2]  # heights 1 and 2 are untouched
    assert wires[2] != clean[2]
    defects = all_defects(genesis, wires)
    assert len(defects) == 1, defects
    assert defects[0].startswith("height 3: ")
    assert FAULT_REASONS[fault] in defects[0]


def test_receipt_from_independent_chain_verifies_offline() -> None:
    genesis, blocks = writer.build_blocks()
    for block in blocks:
        for index in range(len(block.envelopes)):
            assert receipt_defect(genesis, writer.make_receipt(block, index)) is None
    bad = writer.make_receipt(blocks[3], 2)
    bad["index"] = 1
    assert receipt_defect(genesis, bad) is not None


# --- the real CLI against the independent server --------------------------------------------


def _run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    pythonpath = [str(REPO_ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(pythonpath)}
    return subprocess.run(
        [sys.executable, "-m", "node.cli", *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_S,
    )


def _audit(genesis: bytes, wires: list[bytes], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "genesis.json"
    path.write_bytes(genesis)
    with serve_chain(wires) as url:
        return _run_cli("audit", "--node", url, "--genesis", str(path))


def _output(proc: subprocess.CompletedProcess[str]) -> str:
    return proc.stdout + proc.stderr


@pytest.fixture
def genesis_path(tmp_path: Path) -> Path:
    return tmp_path / "genesis.json"


@pytest.mark.slow
def test_audit_accepts_clean_independent_chain(genesis_path: Path) -> None:
    genesis, wires = writer.build_chain()
    genesis_path.write_bytes(genesis)
    with running(wires) as server:
        proc = _run_cli("audit", "--node", server.base_url, "--genesis", str(genesis_path))
        fetched = set(server.requested_heights())
        accepts = {a for p, a in server.requests if p.startswith("/v1/blocks/")}
    assert proc.returncode == 0, _output(proc)
    assert fetched >= set(range(1, len(wires) + 1)), "the auditor must fetch every block"
    assert all("application/msgpack" in a for a in accepts)


@pytest.mark.slow
def test_audit_accepts_independent_chain_with_empty_block(tmp_path: Path) -> None:
    genesis, wires = writer.build_chain(empty_heights=(4,))
    proc = _audit(genesis, wires, tmp_path)
    assert proc.returncode == 0, _output(proc)


@pytest.mark.slow
@pytest.mark.parametrize("fault", writer.FAULTS)
def test_audit_reports_independent_fault_at_height_3(fault: str, tmp_path: Path) -> None:
    genesis, wires = writer.build_chain(fault=fault)
    proc = _audit(genesis, wires, tmp_path)
    out = _output(proc)
    assert proc.returncode != 0, out
    assert "height 3:" in out, out
    assert set(HEIGHT_MENTION.findall(out)) == {"3"}, out


@pytest.mark.slow
def test_receipt_shape_from_independent_chain(tmp_path: Path) -> None:
    genesis, blocks = writer.build_blocks()
    (tmp_path / "genesis.json").write_bytes(genesis)
    receipt = writer.make_receipt(blocks[3], 2)
    good = tmp_path / "receipt.json"
    good.write_text(json.dumps(receipt))
    proc = _run_cli("verify", str(good), "--genesis", str(tmp_path / "genesis.json"))
    assert proc.returncode == 0, _output(proc)

    tampered = dict(receipt, index=1)  # the audit path no longer reaches records_root
    bad = tmp_path / "tampered.json"
    bad.write_text(json.dumps(tampered))
    proc = _run_cli("verify", str(bad), "--genesis", str(tmp_path / "genesis.json"))
    assert proc.returncode != 0, _output(proc)
