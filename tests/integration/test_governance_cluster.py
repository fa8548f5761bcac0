"""The governance commands against a real cluster from `ledger cluster init` (SPEC section 8):
`ledger config propose` adds an organisation with a member, `approve` by the admins of two
of the three organisations, `submit --wait`; then the new member's record is committed. The
same proposal with one approval is refused `approvals_insufficient`. Then the demo key is
revoked the same way, timed from the first command to its next record refused (the figure
in docs/governance.md). Only `ledger` processes."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ledger.crypto import read_key_file
from tests.integration.cluster_util import ROOT, Cluster

pytestmark = pytest.mark.slow


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster.create(tmp_path / "c")
    try:
        c.start_all()
        yield c
    finally:
        c.stop_all()


def ledger(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "node.cli", *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=90)


def ok(*args: str | Path) -> str:
    res = ledger(*args)
    assert res.returncode == 0, f"ledger {args}: {res.stdout}{res.stderr}"
    return res.stdout


def test_onboard_an_organisation_with_the_cli(cluster: Cluster, tmp_path: Path) -> None:
    url, clients = cluster.url(0), cluster.dir / "clients"
    newcomer = tmp_path / "newco-gw.pem"
    pubkey = ok("keygen", newcomer).split()[-1]
    assert len(pubkey) == 64

    new = json.loads(ok("config", "show", "--node", url))
    new["organizations"].append({"name": "newco", "members": [
        {"name": "gw", "pubkey": pubkey, "roles": ["writer"]}]})
    (tmp_path / "new.json").write_text(json.dumps(new))
    proposal = tmp_path / "proposal.json"
    out = ok("config", "propose", "--node", url, "--config", tmp_path / "new.json",
             "--out", proposal)
    assert "+ organisation newco" in out and f"+ member newco/gw ({pubkey[:8]}): writer" in out

    # the new member cannot write yet
    refused = ledger("submit", "--node", url, "--identity", newcomer, "--type",
                     "sensor.reading", "--subject", "s", "--payload", "1")
    assert refused.returncode == 1 and "unauthorized" in refused.stderr

    out = ok("config", "approve", proposal, "--identity", clients / "demo-org-admin.pem",
             "--node", cluster.url(1))
    assert "+ organisation newco" in out
    assert "approvals: 1 organisation(s) (demo-org); 2 of 3 needed" in out
    assert len(json.loads(proposal.read_text())["approvals"]) == 1
    # one organisation is below the threshold: refused at admission, with the code
    short = ledger("config", "submit", proposal, "--node", url, "--identity",
                   clients / "demo.pem", "--wait")
    assert short.returncode == 1, short.stdout + short.stderr
    assert short.stderr.startswith("rejected: approvals_insufficient:"), short.stderr
    # not an admin: refused by approve, the file unchanged
    before = proposal.read_bytes()
    notadmin = ledger("config", "approve", proposal, "--identity", clients / "demo.pem",
                      "--node", url)
    assert notadmin.returncode == 2 and "governance role" in notadmin.stderr
    assert proposal.read_bytes() == before

    ok("config", "approve", proposal, "--identity", clients / "supplier-admin.pem",
       "--node", url)
    again = ok("config", "approve", proposal, "--identity", clients / "supplier-admin.pem",
               "--node", url)
    assert "already approved" in again and ": enough" in again
    assert len(json.loads(proposal.read_text())["approvals"]) == 2
    rid, _, height = ok("config", "submit", proposal, "--node", url, "--identity",
                        clients / "demo.pem", "--wait").split()
    assert len(rid) == 64 and int(height) > 0

    written = ok("submit", "--node", cluster.url(2), "--identity", newcomer, "--type",
                 "sensor.reading", "--subject", "newco/line-1", "--payload", '{"v": 1}',
                 "--wait").split()
    assert int(written[2]) > int(height)
    # applied: approving the same proposal again is refused as stale
    stale = ledger("config", "approve", proposal, "--identity",
                   clients / "carrier-admin.pem", "--node", url)
    assert stale.returncode == 2 and "stale proposal" in stale.stderr

    # revoke the demo key with the same commands (docs/governance.md): timed from the
    # decision (the first command) to the key's next record refused
    started = time.monotonic()
    demo = read_key_file(clients / "demo.pem").public.hex()
    now = json.loads(ok("config", "show", "--node", url))
    for org in now["organizations"]:
        org["members"] = [m for m in org["members"] if m["pubkey"] != demo]
    (tmp_path / "revoke.json").write_text(json.dumps(now))
    revoke = tmp_path / "revoke-proposal.json"
    assert f"- member demo-org/demo ({demo[:8]}): revoked" in ok(
        "config", "propose", "--node", url, "--config", tmp_path / "revoke.json", "--out", revoke)
    for admin in ("carrier", "demo-org"):
        ok("config", "approve", revoke, "--identity", clients / f"{admin}-admin.pem",
           "--node", url)
    submitted = time.monotonic()
    ok("config", "submit", revoke, "--node", url, "--identity", newcomer, "--wait")
    late = ledger("submit", "--node", cluster.url(3), "--identity", clients / "demo.pem",
                  "--type", "sensor.reading", "--subject", "s", "--payload", "2")
    done = time.monotonic()
    assert late.returncode == 1 and late.stderr.startswith("rejected: unauthorized:"), late
    print(f"revocation: decision -> refused {done - started:.2f} s, submit -> refused "
          f"{done - submitted:.2f} s")
    assert done - started < 60
