"""`make wan`: a 4-validator TLS cluster on the WAN bed (tests/wan), measured per one-way
delay and loss, against the same cluster shape on loopback in the same run.

For each setting (every host's egress: 0, 10, 25, 50 ms one-way with 1 ms jitter, and 25 ms
with 1% loss) the client namespace runs tests/wan/load.py: light-load submit->commit p50/p99
(one record in flight, every node in turn) and saturated committed throughput (closed loop,
``--clients`` x ``--batch`` records in flight, ``--seconds`` long). The loopback figure is the
same load against a cluster on 127.0.0.1 without the bed. Then the recovery times: node3's
link down 10 s under light load (seconds from link-up until node3 holds the tip the others
had), and a 2/2 split for 10 s (seconds from the heal until a record submitted during the
split commits, and until all four hold the same tip). Prints a markdown table, writes
bench-results/wan_bench.json and wan_bench.png. Targets (issue 16): at 25 ms one-way,
light-load p50 <= 3 round trips + 20 ms and saturated throughput >= 0.7 of loopback.

    python -m tests.bench.wan_bench [--seconds 8] [--light 24] [--clients 8] [--batch 250]
                                    [--rounds 3] [--only '0 ms,25 ms'] [--recovery-only]

The machine's other load comes and goes: every round runs loopback and then each setting,
``--rounds`` times, and each figure is the median-throughput round of its setting. The load
client reports, for its saturation window, the nodes' CPU (in cores) and how busy the whole
machine was: nodes short of CPU on a 100%-busy machine are starved by other processes, on a
machine with idle cores they wait for the network.
"""

from __future__ import annotations

import argparse
import json
import os
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from node.cluster import init_cluster
from tests.bench.cluster_bench import CONSENSUS, post_records
from tests.integration.cluster_util import free_base_port
from tests.wan.bed import ROOT, Bed
from tests.wan.cluster import WanCluster, _env
from tests.wan.load import make_records

SETTINGS: list[tuple[str, float, float, float]] = [  # label, delay ms, jitter ms, loss
    ("0 ms", 0, 1, 0), ("10 ms", 10, 1, 0), ("25 ms", 25, 1, 0), ("50 ms", 50, 1, 0),
    ("25 ms, 1% loss", 25, 1, 0.01)]


def load_argv(args: argparse.Namespace, cluster: Path, urls: list[str], ca: Path,
              nonce_base: int, pids: list[int]) -> list[str]:
    return [sys.executable, "-m", "tests.wan.load", "--cluster", str(cluster),
            "--urls", ",".join(urls), "--ca", str(ca), "--light", str(args.light),
            "--seconds", str(args.seconds), "--clients", str(args.clients),
            "--batch", str(args.batch), "--nonce-base", str(nonce_base),
            "--pids", ",".join(map(str, pids))]


class Loopback:
    """The same cluster (4 validators, TLS, same consensus) on 127.0.0.1 without the bed,
    loaded from the host's namespace; alive beside the bed's so their runs interleave."""

    def __init__(self, tmp: Path) -> None:
        self.dir = tmp / "loopback"
        self.urls = init_cluster(self.dir, 4, free_base_port(4), tls=True)
        genesis = json.loads((self.dir / "genesis.json").read_text())
        genesis["consensus"] = CONSENSUS
        (self.dir / "genesis.json").write_text(json.dumps(genesis, indent=2))
        self.ca = self.dir / "tls" / "ca.pem"
        self.procs: list[subprocess.Popen[bytes]] = []

    def __enter__(self) -> Loopback:
        self.procs = [subprocess.Popen(
            [sys.executable, "-m", "node.cli", "node", "run", str(self.dir / f"node{i}")],
            cwd=ROOT, stdout=open(self.dir / f"node{i}.log", "ab"),  # noqa: SIM115
            stderr=subprocess.STDOUT, env=_env()) for i in range(4)]
        verify = ssl.create_default_context(cafile=str(self.ca))
        for url in self.urls:
            deadline = time.monotonic() + 60
            while True:
                try:
                    httpx.get(f"{url}/healthz", verify=verify, timeout=2).raise_for_status()
                    break
                except httpx.HTTPError:
                    if time.monotonic() > deadline:
                        self.__exit__()
                        raise
                    time.sleep(0.2)
        return self

    def __exit__(self, *exc: object) -> None:
        for p in self.procs:
            p.terminate()
        for p in self.procs:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()

    def measure(self, args: argparse.Namespace, nonce_base: int) -> dict[str, Any]:
        done = subprocess.run(load_argv(args, self.dir, self.urls, self.ca, nonce_base,
                                        [p.pid for p in self.procs]),
                              cwd=ROOT, env=_env(), capture_output=True, text=True,
                              timeout=600)
        if done.returncode != 0:
            raise RuntimeError(done.stderr[-3000:])
        result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
        return result


def on_bed(args: argparse.Namespace, bed: Bed, c: WanCluster, label: str, delay: float,
           jitter: float, loss: float, nonce_base: int) -> dict[str, Any]:
    bed.shape("*", delay_ms=delay, jitter_ms=jitter, loss=loss)
    s0 = bed.stats()
    done = bed.run("client", load_argv(args, c.dir, c.urls(), c.dir / "tls" / "ca.pem",
                                       nonce_base, [p.pid for p in c.procs.values()]),
                   env=_env(), timeout=600)
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-3000:])
    s1 = bed.stats()
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    wall = s1["uptime_s"] - s0["uptime_s"]
    packets = (sum(x["tx"] for x in s1["links"].values())
               - sum(x["tx"] for x in s0["links"].values()))
    result.update(label=label, delay_ms=delay, jitter_ms=jitter, loss=loss,
                  switch_cpu_of_one_core=(s1["cpu_s"] - s0["cpu_s"]) / wall,
                  switch_packets_per_s=packets / wall)
    return result


def median_run(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Of repeated runs of one setting, the one with the median throughput (all kept in
    ``runs``): the machine's other load comes and goes."""
    ordered = sorted(results, key=lambda r: float(r["throughput"]))
    chosen = dict(ordered[len(ordered) // 2])
    chosen["runs"] = [{k: r[k] for k in ("throughput", "light_p50_ms", "machine_busy",
                                         "nodes_cores")} for r in results]
    return chosen


class Trickle:
    """Light background load from the client namespace: one record at a time to the given
    nodes, until stopped; counts commits and failures."""

    def __init__(self, bed: Bed, c: WanCluster, nodes: list[int], nonce_base: int) -> None:
        self.items = make_records(c.dir, 2000, nonce_base)
        self.stop = threading.Event()
        self.committed = self.failed = 0
        self.future = bed.submit("client", self.run, c, nodes)

    def run(self, c: WanCluster, nodes: list[int]) -> None:
        with httpx.Client(verify=c.verify(), timeout=60) as http:
            for k, one in enumerate(self.items):
                if self.stop.is_set():
                    return
                try:
                    resp = post_records(http, c.url(nodes[k % len(nodes)]), [one], 20)
                    resp.raise_for_status()
                except httpx.HTTPError:
                    self.failed += 1
                    continue
                if "height" in resp.json()["results"][0]:
                    self.committed += 1
                else:  # refused (a duplicate, ...): not a commit
                    self.failed += 1

    def finish(self) -> None:
        self.stop.set()
        self.future.result(timeout=120)


def link_down_recovery(bed: Bed, c: WanCluster, seconds: float) -> dict[str, Any]:
    """node3's link down ``seconds`` under light load; then the time to catch up."""
    bed.shape("*", delay_ms=25, jitter_ms=1)
    trickle = Trickle(bed, c, [0, 1, 2], 50_000_000)
    time.sleep(1)
    before = c.height(3)
    bed.down("node3")
    time.sleep(seconds)
    others = max(c.height(i) for i in range(3))
    bed.up("node3")
    catch_up = c.wait_height(3, others, timeout=120)
    trickle.finish()
    return {"down_s": seconds, "blocks_behind": others - before, "catch_up_s": catch_up,
            "trickle_committed": trickle.committed, "trickle_failed": trickle.failed}


def split_recovery(bed: Bed, c: WanCluster, seconds: float) -> dict[str, Any]:
    """A 2/2 split for ``seconds`` (no quorum either side); a record submitted during it
    commits how long after the heal, and when do all four hold the same tip."""
    bed.shape("*", delay_ms=25, jitter_ms=1)
    item = make_records(c.dir, 1, 90_000_000)[0]
    bed.partition(["node0", "node1"], ["node2", "node3"])
    tip = c.height(0)

    def submit() -> float:
        with httpx.Client(verify=c.verify(), timeout=200) as http:
            post_records(http, c.url(0), [item], 120).raise_for_status()
        return time.monotonic()

    pending = bed.submit("client", submit)
    time.sleep(seconds)
    stalled = max(c.height(i) for i in range(4)) == tip
    healed = time.monotonic()
    bed.heal()
    committed = pending.result(timeout=180) - healed
    target = max(c.height(i) for i in range(4))
    start = time.monotonic()
    for i in range(4):
        c.wait_height(i, target, timeout=60)
    return {"split_s": seconds, "stalled_during_split": stalled,
            "commit_after_heal_s": committed,
            "all_at_tip_after_heal_s": committed + time.monotonic() - start}


def table(loop: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    """The markdown table (each setting's median-throughput round); "p50 over 0 ms" is the
    light p50 less the 0 ms one (loopback's without it), in round trips (2 x one-way
    delay): the part the network adds."""
    base = next((r["light_p50_ms"] for r in rows if r["delay_ms"] == 0),
                loop["light_p50_ms"])
    lines = ["| setting | light p50 ms | p50 over 0 ms, in RTTs | light p99 ms "
             "| saturated records/s | of loopback "
             "| saturated batch p50 ms | nodes' cores / machine busy | node CPU ms/record "
             "| switch CPU (one core) | switch packets/s |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
             f"| loopback (127.0.0.1, no bed) | {loop['light_p50_ms']:.0f} | - | "
             f"{loop['light_p99_ms']:.0f} | {loop['throughput']:,.0f} | 1.00 | "
             f"{loop['sat_p50_ms']:.0f} | {loop['nodes_cores']:.2f} / "
             f"{loop['machine_busy']:.0%} | {loop['node_cpu_ms_per_record']:.2f} | - | - |"]
    for r in rows:
        rtts = (f"{(r['light_p50_ms'] - base) / (2 * r['delay_ms']):.1f}" if r["delay_ms"]
                else "-")
        lines.append(f"| {r['label']} | {r['light_p50_ms']:.0f} | {rtts} | "
                     f"{r['light_p99_ms']:.0f} | "
                     f"{r['throughput']:,.0f} | {r['throughput'] / loop['throughput']:.2f} | "
                     f"{r['sat_p50_ms']:.0f} | {r['nodes_cores']:.2f} / "
                     f"{r['machine_busy']:.0%} | {r['node_cpu_ms_per_record']:.2f} | "
                     f"{r['switch_cpu_of_one_core']:.1%} | "
                     f"{r['switch_packets_per_s']:,.0f} |")
    return "\n".join(lines)


def plot(loop: dict[str, Any], rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = ["loopback"] + [r["label"] for r in rows]
    every = [loop, *rows]
    fig, (a, b) = plt.subplots(2, 1, figsize=(8, 7), sharex=True)
    a.bar(labels, [r["throughput"] for r in every])
    a.set_ylabel("saturated records/s")
    a.set_title("4 TLS validators on the WAN bed (one-way delay per host)")
    x = range(len(labels))
    b.plot(x, [r["light_p50_ms"] for r in every], "o-", label="light p50")
    b.plot(x, [r["light_p99_ms"] for r in every], "s--", label="light p99")
    b.set_ylabel("submit->commit (ms)")
    b.legend()
    b.set_xticks(list(x), labels, rotation=15)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=8, help="saturation per setting")
    p.add_argument("--light", type=int, default=24, help="light-load records per setting")
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--batch", type=int, default=250)
    p.add_argument("--down", type=float, default=10, help="link down / split seconds")
    p.add_argument("--out", type=Path, default=ROOT / "bench-results")
    p.add_argument("--rounds", type=int, default=3,
                   help="run every setting (and loopback) this many times, interleaved; "
                        "report each one's median-throughput run")
    p.add_argument("--only", default="",
                   help="comma-separated setting labels to run (e.g. '0 ms,25 ms')")
    p.add_argument("--recovery-only", action="store_true",
                   help="only the link-down and split recovery times")
    args = p.parse_args()
    settings = [x for x in SETTINGS if not args.only or x[0] in args.only.split(",")]
    args.out.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()
    if args.recovery_only:
        with tempfile.TemporaryDirectory() as tmp, Bed(
                ["node0", "node1", "node2", "node3", "client"], seed=1) as bed:
            c = WanCluster(bed, Path(tmp) / "bed", consensus=CONSENSUS)
            c.start_all()
            print(json.dumps(link_down_recovery(bed, c, args.down)), flush=True)
            print(json.dumps(split_recovery(bed, c, args.down)), flush=True)
        return
    with tempfile.TemporaryDirectory() as tmp, Loopback(Path(tmp)) as lo, Bed(
            ["node0", "node1", "node2", "node3", "client"], seed=1) as bed:
        c = WanCluster(bed, Path(tmp) / "bed", consensus=CONSENSUS)
        c.start_all()
        runs: dict[str, list[dict[str, Any]]] = {label: [] for label, *_ in settings}
        loops: list[dict[str, Any]] = []
        for r in range(args.rounds):  # a round: loopback, then every setting on the bed
            print(f"== loopback (round {r + 1} of {args.rounds}) ==", flush=True)
            loops.append(lo.measure(args, r * 1_000_000))
            print(json.dumps(loops[-1]), flush=True)
            for k, (label, delay, jitter, loss) in enumerate(settings):
                print(f"== {label} (round {r + 1} of {args.rounds}) ==", flush=True)
                runs[label].append(on_bed(args, bed, c, label, delay, jitter, loss,
                                          (10 + r * len(settings) + k) * 1_000_000))
                print(json.dumps(runs[label][-1]), flush=True)
        loop = median_run(loops)
        rows = [median_run(runs[label]) for label, *_ in settings]
        print("== node3 link down ==", flush=True)
        down = link_down_recovery(bed, c, args.down)
        print(json.dumps(down), flush=True)
        print("== 2/2 split ==", flush=True)
        split = split_recovery(bed, c, args.down)
        print(json.dumps(split), flush=True)
    at25 = next((r for r in rows if r["label"] == "25 ms"), rows[0])
    report = {"loopback": loop, "settings": rows, "link_down": down, "split": split,
              "cores": os.cpu_count(), "loadavg_before": load_before,
              "loadavg_after": os.getloadavg(),
              "target_light_p50_ms_at_25": 3 * 50 + 20,
              "light_p50_ms_at_25": at25["light_p50_ms"],
              "throughput_of_loopback_at_25": at25["throughput"] / loop["throughput"]}
    (args.out / "wan_bench.json").write_text(json.dumps(report, indent=2))
    plot(loop, rows, args.out / "wan_bench.png")
    print()
    print(table(loop, rows))
    print()
    print(f"node3 link down {down['down_s']:.0f} s ({down['blocks_behind']} blocks behind): "
          f"caught up {down['catch_up_s']:.2f} s after link-up")
    print(f"2/2 split {split['split_s']:.0f} s (stalled: {split['stalled_during_split']}): a "
          f"record submitted during it committed {split['commit_after_heal_s']:.2f} s after "
          f"the heal; all four at one tip after {split['all_at_tip_after_heal_s']:.2f} s")
    ok_p50 = at25["light_p50_ms"] <= 170
    ok_tp = report["throughput_of_loopback_at_25"] >= 0.7
    print(f"targets at 25 ms: light p50 {at25['light_p50_ms']:.0f} ms <= 170 ms: "
          f"{'met' if ok_p50 else 'MISSED'}; throughput "
          f"{report['throughput_of_loopback_at_25']:.2f} of loopback >= 0.70: "
          f"{'met' if ok_tp else 'MISSED'}")
    print(f"load average before/after: {load_before} / {os.getloadavg()}; results: "
          f"{args.out / 'wan_bench.json'}, {args.out / 'wan_bench.png'}")


if __name__ == "__main__":
    main()
