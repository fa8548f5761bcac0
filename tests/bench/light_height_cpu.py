"""CPU per node per light-load height: four nodes on 127.0.0.1 (``cluster_bench``'s
consensus settings), records sent one at a time with ``wait=commit`` to node 0.

    python -m tests.bench.light_height_cpu RECORDS OUT [prof]

Prints one JSON line (also OUT/result.json): heights, p50/p90 latency, each node's CPU per
height (``/proc/PID/stat``, all threads), the same less its idle CPU per second (measured
for 3 s before the run, times the run's wall time), the main thread's context switches per
height, and the load average. ``prof``: py-spy (``--gil``, all threads) on nodes 0 and 1
during the run, raw collapsed stacks in OUT/node{0,1}.txt. Compare two trees by running
this from each in turn, interleaved (docs/performance.md, "CPU per light height")."""

from __future__ import annotations

import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from ledger.crypto import read_key_file
from ledger.genesis import Genesis
from tests.bench.cluster_bench import CONSENSUS, cpu_seconds, percentile, post_records, presign
from tests.integration.cluster_util import Cluster

WARM = 50  # records before the measured run (connections up, caches warm)


def switches(pid: int) -> int:
    text = Path(f"/proc/{pid}/status").read_text()
    return sum(int(x) for x in re.findall(r"ctxt_switches:\s+(\d+)", text))


def main() -> None:
    n, out = int(sys.argv[1]), Path(sys.argv[2])
    prof = len(sys.argv) > 3 and sys.argv[3] == "prof"
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        c = Cluster.create(Path(tmp), nodes=4, consensus=CONSENSUS)
        c.start_all()
        try:
            genesis = Genesis.load(c.dir / "genesis.json")
            key = read_key_file(c.dir / "clients" / "demo.pem")
            _, items = presign(key, genesis.chain_id, n + WARM)
            url = c.url(0)
            pids = [p.pid for _, p in sorted(c.procs.items())]
            with httpx.Client(timeout=60) as http:
                for one in items[:WARM]:
                    post_records(http, url, [one], 30).raise_for_status()
                time.sleep(1.0)
                a = [cpu_seconds(p) for p in pids]
                time.sleep(3.0)
                idle = [(y - x) / 3.0 for x, y in zip(a, [cpu_seconds(p) for p in pids],
                                                      strict=True)]
                spies = []
                if prof:
                    spy = str(Path(sys.executable).with_name("py-spy"))
                    spies = [subprocess.Popen(
                        [spy, "record", "--format", "raw", "--rate", "500", "--gil",
                         "--nonblocking", "--threads", "-o", str(out / f"node{i}.txt"),
                         "-p", str(pids[i])],
                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for i in (0, 1)]
                    time.sleep(1.0)
                s0 = [switches(p) for p in pids]
                h0 = c.height(0)
                a = [cpu_seconds(p) for p in pids]
                t0 = time.perf_counter()
                lat = []
                for one in items[WARM:]:
                    s = time.perf_counter()
                    post_records(http, url, [one], 30).raise_for_status()
                    lat.append(time.perf_counter() - s)
                wall = time.perf_counter() - t0
                b = [cpu_seconds(p) for p in pids]
                s1 = [switches(p) for p in pids]
                h1 = c.height(0)
                for spy_proc in spies:
                    spy_proc.send_signal(signal.SIGINT)
                for spy_proc in spies:
                    spy_proc.wait(timeout=60)
        finally:
            c.stop_all()
    hs = max(1, h1 - h0)
    cpu = [y - x for x, y in zip(a, b, strict=True)]
    result = {
        "heights": hs, "records": n, "wall_s": round(wall, 2),
        "load": round(os.getloadavg()[0], 2),
        "p50_ms": round(statistics.median(lat) * 1000, 2),
        "p90_ms": round(percentile(lat, 90) * 1000, 2),
        "cpu_ms_per_height_per_node": [round(1000 * x / hs, 2) for x in cpu],
        "cpu_ms_per_height_minus_idle": [round(1000 * (x - i * wall) / hs, 2)
                                         for x, i in zip(cpu, idle, strict=True)],
        "idle_cpu_frac": [round(x, 4) for x in idle],
        "ctxsw_per_height": [round((y - x) / hs, 1) for x, y in zip(s0, s1, strict=True)],
    }
    print(json.dumps(result))
    (out / "result.json").write_text(json.dumps(result))


if __name__ == "__main__":
    main()
