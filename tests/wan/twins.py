"""Twins on real processes (issue 16): two ``ledger node run`` processes holding the SAME
validator key (validator 3's), in two namespaces, on opposite sides of a partition.

Hosts: node0..node3, twin3, client. node3 ("twin A") runs node3's directory; twin3 ("twin
B") runs a copy of it (same key, its own store, signing state, address and TLS certificate).
Links follow rank (node/transport/network.py): every node dials the validators ranked after
it, so validator 3 dials nobody and is dialed by 0, 1 and 2, each at the address its config
names for validator 3. node0 and node1 name twin A's (as generated); node2's config names
twin B's. So honest nodes link with one twin each, as an operator's mistake (two copies of a
validator, each found by part of the consortium) would make them.

The run: partition {node0, node1, node3} / {node2, twin3} (the client reaches both sides),
load through node0 and node1: side A (3 of 4 keys, with twin A) commits, side B (node2 and
twin B: 2 of 4) cannot. Heal: node2 syncs side A's blocks, twin B follows node2, and from
then on both twins sign at every height. Each signs what it saw: when validator 3 proposes,
the twins propose different blocks (their own time and mempool), and their prevotes and
precommits differ whenever they saw different proposals or timed out differently. An honest
node sees the other twin's messages without linking with it: honest validators relay the
proposal and the polka behind their valid value (``ConsensusCore._resend``), and every
node's own signed messages reach every other (node2 relays twin B's in the polka it holds
for node0 and node1, and node0/node1 relay twin A's to node2). A conflicting pair at the
height a node is deciding is evidence (``RecordEvidence``), which the node persists
(evidence.json) and serves in ``GET /v1/status`` (``evidence``).

Checked: the chain never forks (every honest node at one tip, the same block there,
``ledger audit`` passes against each honest node pinned to it, every acknowledged record
once), and honest nodes hold evidence naming validator 3, shown as ``/v1/status`` shows it.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tests.wan.bed import Bed
from tests.wan.chaos import (
    CONSENSUS,
    HEALTHY_S,
    AckedLoad,
    start_node,
    status,
    verify_chain,
)
from tests.wan.cluster import API_PORT, P2P_PORT, WanCluster, _reissue_cert

TWIN = 3  # validator whose key both twins hold (ranked last: dialed by all, dials nobody)
# An honest node sees both twins' proposals when validator 3 proposes (one height in four)
# and node0 or node1 re-sends its valid value while still deciding that height (it relays
# every resend_ms): in the runs measured, at about 1 in 3 such heights once twin B has caught
# up. Waiting for this many heights after that (15 of validator 3's) before giving up makes
# a miss unlikely.
MIN_HEIGHTS = 60
# The Twins run's consensus: the chaos one, relaying every 20 ms instead of 500 ms: the relay
# that shows node2 twin A's messages must come while the height is still being decided, and
# on a quiet machine a height at 10 ms one-way takes ~3 round trips (~60 ms); with 200 ms a
# quiet run found no evidence in 93 heights after the heal.
TWINS_CONSENSUS: dict[str, object] = {**CONSENSUS, "resend_ms": 20}
HOSTS = ["node0", "node1", "node2", "node3", "twin3", "client"]
SIDE_A = ["node0", "node1", "node3"]
SIDE_B = ["node2", "twin3"]


def make_twin(c: WanCluster, host: str = "twin3") -> Path:
    """A copy of node3's directory for ``host``: same key (and genesis), its own (empty)
    store and signing state, its own address and a certificate naming it."""
    src, dst = c.dir / f"node{TWIN}", c.dir / host
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("*.db*", "*.json.tmp",
                                                             "signing*", "evidence*"))
    address = c.bed.address(host)
    config = json.loads((dst / "config.json").read_text())
    config["api"] = f"{address}:{API_PORT}"
    config["p2p"] = f"{address}:{P2P_PORT}"
    (dst / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    if c.tls:
        _reissue_cert(dst, host, address, c.dir / "tls")
    return dst


def point_at(c: WanCluster, i: int, host: str) -> None:
    """Node ``i``'s config names ``host``'s address for validator TWIN."""
    path = c.dir / f"node{i}" / "config.json"
    config = json.loads(path.read_text())
    config["peers"][str(TWIN)] = f"{c.bed.address(host)}:{P2P_PORT}"
    path.write_text(json.dumps(config, indent=2) + "\n")


@dataclass
class TwinsReport:
    seed: int
    partition_s: float
    healed_s: float
    heights_at_heal: dict[str, int] = field(default_factory=dict)
    acknowledged: int = 0
    lost: int = 0
    height: int = 0
    tip: str = ""
    twins_tips: dict[str, str | None] = field(default_factory=dict)
    evidence: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    evidence_after_s: float | None = None
    heights_after_heal: int = 0
    twin_b_caught_up_at: int | None = None  # the height when twin B had synced side A's
    # per evidence height: the block the chain holds there (one of the twins' or neither)
    committed: dict[int, str] = field(default_factory=dict)
    evidence_files: dict[str, int] = field(default_factory=dict)  # entries in evidence.json
    peers: dict[str, list[int]] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def twin_status(c: WanCluster, host: str) -> dict[str, Any]:
    def fetch() -> dict[str, Any]:
        with httpx.Client(verify=c.verify(), timeout=10) as http:
            r = http.get(f"https://{c.bed.address(host)}:{API_PORT}/v1/status")
            r.raise_for_status()
            out: dict[str, Any] = r.json()
            return out
    return c.bed.call("client", fetch)


def run_twins(directory: Path, seed: int = 0, partition_s: float = 8, healed_s: float = 20,
              delay_ms: float = 10, say: Callable[[str], None] = print,
              stop_early: bool = True, max_wait_s: float = 150) -> TwinsReport:
    """The Twins run; raises AssertionError if the chain forks or a record is lost. The
    load goes on for ``healed_s`` after the heal; with ``stop_early``, it stops 3 s after an
    honest node first shows evidence naming validator 3, and when none has, goes on until
    the chain grew MIN_HEIGHTS past the height where twin B had caught up (or
    ``max_wait_s``: a starved machine). The caller judges the evidence."""
    report = TwinsReport(seed, partition_s, healed_s)

    def line(text: str) -> None:
        say(f"[wan-twins seed={seed}] {text}")

    honest = [0, 1, 2]
    with Bed(HOSTS, seed=seed) as bed:
        bed.shape("*", delay_ms=delay_ms, jitter_ms=1)
        c = WanCluster(bed, directory / "cluster", consensus=TWINS_CONSENSUS)
        twin_dir = make_twin(c)
        point_at(c, 2, "twin3")
        bed.partition(SIDE_A, SIDE_B)
        line(f"validator {TWIN}'s key in node3 (twin A, {bed.address('node3')}) and twin3 "
             f"(twin B, {bed.address('twin3')}); node0 and node1 dial twin A, node2 dials "
             f"twin B; partition {SIDE_A} / {SIDE_B}; one-way delay {delay_ms} ms")
        for i in range(4):
            start_node(c, i)
        twin = start_node(c, TWIN, directory=twin_dir, host="twin3", key=99)
        for i in range(4):
            c.wait_healthy(i, HEALTHY_S)
        deadline = time.monotonic() + HEALTHY_S
        while True:
            if twin.poll() is not None:
                raise RuntimeError("twin3 exited: "
                                   + (c.dir / "twin3.log").read_text(errors="replace")[-2000:])
            try:
                twin_status(c, "twin3")
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.3)
        load = AckedLoad(c, [c.url(0), c.url(1)], clients=2, batch=10)
        load.start()
        t0 = time.monotonic()
        try:
            time.sleep(partition_s)
            report.heights_at_heal = {f"node{i}": int(status(c, i)["height"]) for i in range(4)}
            report.heights_at_heal["twin3"] = int(twin_status(c, "twin3")["height"])
            line(f"t={time.monotonic() - t0:5.1f} s heights before the heal: "
                 f"{report.heights_at_heal} (side B cannot commit: 2 of 4 keys)")
            assert report.heights_at_heal["node2"] < report.heights_at_heal["node0"]
            bed.heal()
            healed = time.monotonic()
            line(f"t={healed - t0:5.1f} s heal; load now through node0, node1 and node2")
            load2 = AckedLoad(c, [c.url(2)], clients=1, batch=10, nonce_base=100_000_000)
            load2.start()
            try:
                while True:
                    time.sleep(1.0)
                    now = {i: status(c, i) for i in honest}
                    found = {f"node{i}": [e for e in now[i]["evidence"]
                                          if e["validator"] == TWIN] for i in honest}
                    top = max(int(s["height"]) for s in now.values())
                    report.heights_after_heal = top - report.heights_at_heal["node0"]
                    if report.twin_b_caught_up_at is None:
                        with contextlib.suppress(httpx.HTTPError):
                            if int(twin_status(c, "twin3")["height"]) >= top - 2:
                                report.twin_b_caught_up_at = top
                                line(f"t={time.monotonic() - t0:5.1f} s twin B caught up "
                                     f"(height {top})")
                    both = (top - report.twin_b_caught_up_at
                            if report.twin_b_caught_up_at is not None else 0)
                    waited = time.monotonic() - healed
                    if waited >= healed_s and (
                            report.evidence_after_s is not None or not stop_early
                            or both >= MIN_HEIGHTS or waited >= max_wait_s):
                        break
                    if any(found.values()) and report.evidence_after_s is None:
                        report.evidence_after_s = round(time.monotonic() - healed, 1)
                        line(f"t={time.monotonic() - t0:5.1f} s first evidence of validator "
                             f"{TWIN}'s equivocation, {report.evidence_after_s} s after "
                             f"the heal")
                    if stop_early and report.evidence_after_s is not None and \
                            time.monotonic() > healed + report.evidence_after_s + 3:
                        break
            finally:
                load2.join()
        finally:
            load.join()
        acked = {**load.acked, **load2.acked}
        report.acknowledged = len(acked)
        line(f"load stopped: {len(acked)} records acknowledged "
             f"({len(load.acked)} via node0/node1, {len(load2.acked)} via node2)")
        bed.shape("*", delay_ms=0)
        checked = verify_chain(c, honest, acked, line)
        report.height, report.tip = checked["height"], checked["tip"]
        for i in honest:
            now = status(c, i)
            report.evidence[f"node{i}"] = now["evidence"]
            report.peers[f"node{i}"] = now["peers"]
        # The twins run the same (honest) software: they follow the one chain too.
        for name, fetch in (("node3", lambda: status(c, TWIN)),
                            ("twin3", lambda: twin_status(c, "twin3"))):
            try:
                s = fetch()
                tip = s["last_block_hash"] if s["height"] == report.height else None
                report.twins_tips[name] = tip
            except httpx.HTTPError:
                report.twins_tips[name] = None
        blocks = {b.height: b.hash.hex() for b in checked["blocks"]}
        for name, entries in report.evidence.items():
            for e in entries:
                line(f"{name} /v1/status evidence: {json.dumps(e)}")
                report.committed[e["height"]] = blocks[e["height"]]
        for h, block_hash in sorted(report.committed.items()):
            line(f"height {h}: the chain holds block {block_hash[:16]}")
        time.sleep(1.5)  # a node writes its evidence file within a second of recording it
        for i in honest:
            path = c.dir / f"node{i}" / "evidence.json"
            report.evidence_files[f"node{i}"] = (len(json.loads(path.read_text()))
                                                 if path.exists() else 0)
        line(f"evidence.json entries: {report.evidence_files}")
        line(f"twins' tips at height {report.height}: {report.twins_tips}")
    return report
