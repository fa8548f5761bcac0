"""Benchmark: `ledger audit` (--db, --file, --node) against C x v, start-up included.

Builds (once, cached by size) an SQLite chain of N signed records and its export bundle,
starts one node serving the chain (a genesis validator's key, no peers: it only serves its
API), measures v — one core's libsodium verify rate via PyNaCl, the same call the audit
makes — and runs the real `ledger audit` command against each source, ``--repeat`` times,
interleaved. Each run's figure is the records over the *whole* command's wall time (Python
start-up, imports, genesis, opening the source, the audit, exit), beside C x v; the CPU
seconds of the command's process tree (workers included) give records per CPU-second, which
a machine shared with other work distorts far less than wall time.

``--baseline DIR`` runs the same commands, interleaved, from another checkout (e.g. ``git
archive <commit> | tar -x -C DIR``): before/after ratios measured in the same run.

Each checkout's ``ledger`` and ``node`` packages are byte-compiled first (``compileall``), as
an installed package is (pip compiles at install; the container image too): a checkout
installed in editable mode under ``PYTHONDONTWRITEBYTECODE=1``, as here, would otherwise
compile them from source in every command, ~0.1 CPU-s of each audit's start-up.
``--no-compile`` leaves the checkouts as they are.

    python -m tests.bench.audit_bench [--records 40000] [--per-block 500] [--repeat 3]
        [--sources db,file,node] [--workers 1,0] [--baseline DIR] [--out DIR] [--no-compile]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tqdm import tqdm

from ledger.crypto import RECORD_TAG, is_valid_signature
from ledger.store import SqliteStore
from ledger.store.sqlite import SCHEMA_VERSION
from tests.factory import ChainBuilder, make_fixture

ROOT = Path(__file__).resolve().parents[2]
TICK = os.sysconf("SC_CLK_TCK")


def build_store(path: Path, records: int, per_block: int) -> None:
    """Write a valid chain of ``records`` records to a new store at ``path``."""
    fx = make_fixture()
    tmp = path.with_suffix(".partial")
    for p in (tmp, Path(f"{tmp}-wal"), Path(f"{tmp}-shm")):
        p.unlink(missing_ok=True)
    with SqliteStore(tmp, genesis_hash=fx.genesis.hash, synchronous="OFF") as store:
        builder = ChainBuilder(fx, store)
        with tqdm(total=records, unit="rec", desc="building chain", file=sys.stderr) as bar:
            done = 0
            while done < records:
                n = min(per_block, records - done)
                builder.add(n, subject=f"plant-{done % 13}/line-{done % 5}/temp")
                done += n
                bar.update(n)
    tmp.rename(path)


def verify_rate(seconds: float = 2.0) -> float:
    """One core's PyNaCl verify rate for a typical record (signatures/s)."""
    return verify_rates(seconds)[0]


def verify_rates(seconds: float = 2.0) -> tuple[float, float]:
    """One core's PyNaCl verify rate for a typical record: signatures per second of wall
    time, and per CPU-second of the verifying thread (what a busy machine distorts less)."""
    fx = make_fixture()
    builder = ChainBuilder(fx, SqliteStore(":memory:"))
    rec = builder.record(payload={"v": 21.5, "unit": "C", "line": "x" * 100})
    msg, sig, pub = RECORD_TAG + rec.body_bytes, rec.sig, rec.body.signer
    n, start, cpu = 0, time.perf_counter(), time.thread_time()
    while time.perf_counter() - start < seconds:
        for _ in range(500):
            is_valid_signature(pub, msg, sig)
        n += 500
    return n / (time.perf_counter() - start), n / (time.thread_time() - cpu)


# -- CPU of a process tree ------------------------------------------------------------------

def _cpu(pid: int) -> float:
    """CPU seconds (user + system) a process has used so far; 0 if it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICK


def _children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            out += [int(c) for c in (task / "children").read_text().split()]
    return out


class TreeCpu:
    """CPU seconds of a process and its descendants (worker processes under a forkserver
    included, which the parent's rusage never counts), sampled every 0.1 s: on a machine
    shared with other work, records per CPU-second compare fairly where wall time does not.
    (bundle_bench uses it too.)"""

    def __init__(self, pid: int) -> None:
        self.root, self.seen = pid, {}  # type: ignore[var-annotated]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            self.sample()

    def sample(self) -> None:
        todo = [self.root]
        while todo:
            pid = todo.pop()
            cpu = _cpu(pid)
            if cpu:
                self.seen[pid] = max(self.seen.get(pid, 0.0), cpu)
            todo += _children(pid)

    def stop(self, rusage_children: float = 0.0) -> float:
        """The tree's CPU: the larger of the samples and the waited-for children's rusage
        (a short command may exit between two samples)."""
        self._stop.set()
        self._thread.join()
        return max(float(sum(self.seen.values())), rusage_children)


def _children_cpu() -> float:
    import resource

    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def run_audit(source: list[str], genesis: Path, workers: int, cwd: Path) -> dict[str, Any]:
    """Run the real command from checkout ``cwd``; its wall time (start-up included), the
    records it verified, and its process tree's CPU seconds."""
    before = _children_cpu()
    start = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "node.cli", "audit", *source, "--genesis", str(genesis),
         "--workers", str(workers), "-q"],
        cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    tree = TreeCpu(proc.pid)
    out, err = proc.communicate()
    wall = time.perf_counter() - start
    cpu = tree.stop(_children_cpu() - before)
    if proc.returncode != 0:
        raise SystemExit(f"audit {' '.join(source)} failed: {err.strip()[-2000:]}")
    m = re.search(r"(\d+) records verified in ([\d.]+) s", out)
    if m is None:
        raise SystemExit(f"unexpected audit output: {out!r}")
    records, inner = int(m.group(1)), float(m.group(2))
    return {"workers": workers, "records": records, "wall_s": wall, "inner_s": inner,
            "cpu_s": cpu, "records_per_s": records / wall,
            "records_per_cpu_s": records / cpu if cpu else 0.0}


def compile_tree(cwd: Path) -> None:
    """Byte-compile a checkout's packages into their ``__pycache__`` (what ``pip install``
    does for an installed package), so that no command compiles them from source."""
    subprocess.run([sys.executable, "-m", "compileall", "-q", "ledger", "node"], cwd=cwd,
                   check=True, stdout=subprocess.DEVNULL)


def startup(cwd: Path) -> dict[str, float]:
    """Wall and CPU seconds of ``python -c 'import node.cli'`` (the command's imports)."""
    before = _children_cpu()
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import node.cli"], cwd=cwd, check=True)
    return {"wall_s": time.perf_counter() - start, "cpu_s": _children_cpu() - before}


# -- sources --------------------------------------------------------------------------------

def make_bundle(db: Path, genesis: Path, out: Path) -> None:
    if out.exists():
        return
    tmp = out.with_suffix(".partial")
    subprocess.run([sys.executable, "-m", "node.cli", "export", "--db", str(db), "--genesis",
                    str(genesis), "--out", str(tmp), "-q"], cwd=ROOT, check=True,
                   stdout=subprocess.DEVNULL)
    tmp.rename(out)


@contextlib.contextmanager
def serving_node(db: Path, genesis: Path, work: Path) -> Iterator[str]:
    """A node serving a copy of ``db`` (validator 0's key, no peers); its API URL."""
    import httpx

    from ledger.crypto import write_key_file
    from node.join import init_node
    from tests.integration.cluster_util import free_base_port

    fx = make_fixture()
    base = free_base_port(1)
    server = work / "serve"
    shutil.rmtree(server, ignore_errors=True)
    key = work / "v0.pem"
    key.unlink(missing_ok=True)
    write_key_file(key, fx.validator_keys[0])
    init_node(server, genesis, f"127.0.0.1:{base}", f"127.0.0.1:{base + 100}", key)
    shutil.copy(db, server / "chain.db")
    log = open(work / "serve.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([sys.executable, "-m", "node.cli", "node", "run", str(server)],
                            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{base}"
    try:
        deadline = time.monotonic() + 120
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/v1/status", timeout=5).json()["height"] > 0:
                    break
            if time.monotonic() > deadline or proc.poll() is not None:
                raise SystemExit(f"the serving node did not start: see {work}/serve.log")
            time.sleep(0.2)
        yield url
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=40_000)
    parser.add_argument("--per-block", type=int, default=500)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--sources", default="db,file,node",
                        help="comma-separated: db, file, node")
    parser.add_argument("--workers", default="0",
                        help="comma-separated worker counts (0: the command's default)")
    parser.add_argument("--baseline", type=Path, default=None,
                        help="another checkout to run the same commands from, interleaved")
    parser.add_argument("--out", type=Path, default=ROOT / "bench-results")
    parser.add_argument("--no-compile", action="store_true",
                        help="do not byte-compile the checkouts first (an editable install "
                        "under PYTHONDONTWRITEBYTECODE then compiles them in every command)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    fx = make_fixture()
    genesis = fx.write_genesis(args.out)
    name = f"audit-{args.records}-{args.per_block}-schema{SCHEMA_VERSION}"
    db = args.out / f"{name}.db"
    if not db.exists():
        started = time.perf_counter()
        build_store(db, args.records, args.per_block)
        print(f"chain of {args.records:,} records built in {time.perf_counter() - started:.0f} s")
    sources = [s.strip() for s in args.sources.split(",") if s.strip()]
    bundle = args.out / f"{name}.bundle"
    if "file" in sources:
        make_bundle(db, genesis, bundle)
    cores = os.cpu_count() or 1
    trees = {"this": ROOT} | ({"baseline": args.baseline.resolve()} if args.baseline else {})
    counts = [int(w) for w in args.workers.split(",")]
    if not args.no_compile:
        for cwd in trees.values():
            compile_tree(cwd)
    runs: list[dict[str, Any]] = []
    rates: list[float] = []
    cpu_rates: list[float] = []
    with contextlib.ExitStack() as stack:
        url = (stack.enter_context(serving_node(db, genesis, args.out))
               if "node" in sources else "")
        argv = {"db": ["--db", str(db)], "file": ["--file", str(bundle)],
                "node": ["--node", url]}
        for rep in range(args.repeat):
            wall_rate, cpu_rate = verify_rates()
            rates.append(wall_rate)
            cpu_rates.append(cpu_rate)
            for source in sources:
                for workers in counts:
                    for tree, cwd in trees.items():
                        r = run_audit(argv[source], genesis, workers, cwd)
                        r |= {"source": source, "tree": tree, "repeat": rep,
                              "load_avg": os.getloadavg()[0]}
                        runs.append(r)
                        print(f"  {tree:8s} --{source:4s} workers={workers or cores}: "
                              f"{r['records_per_s']:8,.0f}/s wall ({r['wall_s']:.2f} s, inner "
                              f"{r['inner_s']:.2f} s), {r['records_per_cpu_s']:8,.0f}/CPU-s",
                              file=sys.stderr)
        starts = {tree: startup(cwd) for tree, cwd in trees.items()}
    v = statistics.median(rates)
    v_cpu = statistics.median(cpu_rates)
    print(f"load average now {os.getloadavg()[0]:.1f} on {cores} cores; v (PyNaCl verify, one "
          f"core) {v:,.0f}/s (median of {', '.join(f'{r:,.0f}' for r in rates)}); "
          f"C x v = {cores * v:,.0f}/s; per CPU-second of the verifying thread {v_cpu:,.0f}")
    summary = []
    for tree in trees:
        print(f"{tree}: `import node.cli` {starts[tree]['wall_s']:.2f} s wall, "
              f"{starts[tree]['cpu_s']:.2f} CPU-s")
        for source in sources:
            for workers in counts:
                mine = [r for r in runs if (r["tree"], r["source"], r["workers"]) ==
                        (tree, source, workers)]
                best = max(r["records_per_s"] for r in mine)
                per_cpu = statistics.median(r["records_per_cpu_s"] for r in mine)
                bound = (workers or cores) * v
                row = {"tree": tree, "source": source, "workers": workers or cores,
                       "best_records_per_s": best, "of_bound": best / (cores * v),
                       "of_workers_bound": best / bound,
                       "median_of_bound": statistics.median(r["records_per_s"] for r in mine)
                       / (cores * v),
                       "records_per_cpu_s": per_cpu, "per_cpu_of_v": per_cpu / v_cpu}
                summary.append(row)
                print(f"  ledger audit --{source:4s} {workers or cores} worker(s): best "
                      f"{best:8,.0f} records/s = {row['of_bound']:.2f} of C x v (median "
                      f"{row['median_of_bound']:.2f}); {per_cpu:,.0f} records/CPU-s = "
                      f"{row['per_cpu_of_v']:.2f} of v per CPU-s")
    report = {"cores": cores, "records": args.records, "per_block": args.per_block,
              "verify_rate_one_core": v, "verify_rates": rates, "bound_all_cores": cores * v,
              "verify_rate_per_cpu_s": v_cpu, "verify_rates_per_cpu_s": cpu_rates,
              "startup": starts, "summary": summary, "runs": runs}
    (args.out / "audit_bench.json").write_text(json.dumps(report, indent=2))
    print(f"results written to {args.out / 'audit_bench.json'}")


if __name__ == "__main__":
    main()
