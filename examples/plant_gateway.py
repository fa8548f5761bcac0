"""A simulated plant gateway: stream sensor readings and quality certificates to a ledger.

Three production lines of plant 7, each with temperature, pressure, vibration and flow
sensors that drift slowly and jitter around their set points, send ``sensor.reading`` records
(subject ``plant-7/line-3/temp``, payload ``{"value": 71.93, "unit": "C", "seq": 412}``); now
and then a finished batch gets a ``quality.certificate``. Records are signed with the
gateway's client key (``node.client``) and submitted in batches at a steady rate, several
batches in flight, each waiting until its records are committed. A progress bar shows
records submitted and committed and the commit rate.

    python examples/plant_gateway.py --count 2000 --rate 200 --batch 50
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from ledger.crypto import read_key_file
from ledger.errors import LedgerError
from ledger.records import Record
from node.client import LedgerClient, NodeError

PLANT = "plant-7"
LINES = ("line-1", "line-2", "line-3")
# sensor: (unit, set point, noise, drift per reading)
SENSORS = {
    "temp": ("C", 72.0, 0.4, 0.02),
    "pressure": ("bar", 4.2, 0.05, 0.002),
    "vibration": ("mm/s", 2.8, 0.3, 0.01),
    "flow": ("l/min", 118.0, 1.5, 0.05),
}
CERTIFICATE_EVERY = 250  # readings per finished batch, on average
IN_FLIGHT = 8  # batches waiting for commit at once


@dataclass
class Sensor:
    """One sensor: a value that random-walks around its set point, plus measurement noise."""

    subject: str
    unit: str
    set_point: float
    noise: float
    drift: float
    offset: float = 0.0
    seq: int = 0

    def read(self, rng: random.Random) -> dict[str, Any]:
        self.offset += rng.gauss(0, self.drift) - 0.01 * self.offset  # drift, pulled back
        self.seq += 1
        value = self.set_point + self.offset + rng.gauss(0, self.noise)
        return {"value": round(value, 3), "unit": self.unit, "seq": self.seq}


def plant_records(rng: random.Random) -> Iterator[tuple[str, str, dict[str, Any]]]:
    """An endless stream of (type, subject, payload): readings, and now and then a certificate."""
    sensors = [Sensor(f"{PLANT}/{line}/{name}", *spec)
               for line in LINES for name, spec in SENSORS.items()]
    batch_no = {line: 1000 for line in LINES}
    while True:
        sensor = rng.choice(sensors)
        yield "sensor.reading", sensor.subject, sensor.read(rng)
        if rng.random() < 1 / CERTIFICATE_EVERY:
            line = rng.choice(LINES)
            batch_no[line] += 1
            temps = [s for s in sensors if s.subject == f"{PLANT}/{line}/temp"]
            mean = temps[0].set_point + temps[0].offset
            passed = abs(temps[0].offset) < 1.0
            yield "quality.certificate", f"{PLANT}/{line}/batch-{batch_no[line]}", {
                "batch": f"{line}-{batch_no[line]}",
                "result": "pass" if passed else "hold",
                "spec": "QS-7.3 rev 4",
                "mean_temp_c": round(mean, 2),
                "inspector": "qa-gateway-7",
            }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Simulate plant 7: stream signed sensor readings (3 lines x 4 sensors, "
        "with drift and noise) and occasional quality certificates to a ledger node, in "
        "batches, waiting for each batch to commit. Shows submitted/committed and the rate.")
    parser.add_argument("--node", default="http://127.0.0.1:8000", metavar="URL",
                        help="node API (default %(default)s)")
    parser.add_argument("--identity", default=".cluster/clients/demo.pem", type=Path,
                        metavar="PEM", help="the gateway's client key, authorised in genesis "
                        "(default %(default)s; LEDGER_KEY_PASSPHRASE if encrypted)")
    parser.add_argument("--rate", type=float, default=200.0,
                        help="records per second to submit (default %(default)s)")
    stop = parser.add_mutually_exclusive_group()
    stop.add_argument("--count", type=int, help="stop after this many records (default 1000)")
    stop.add_argument("--seconds", type=float, help="stop after this many seconds")
    parser.add_argument("--batch", type=int, default=50,
                        help="records per request (default %(default)s)")
    parser.add_argument("--seed", type=int, help="random seed for the simulation")
    parser.add_argument("--ca", metavar="PEM", help="CA file for an https node")
    args = parser.parse_args(argv)
    if args.count is None and args.seconds is None:
        args.count = 1000
    if args.rate <= 0 or args.batch < 1 or (args.count is not None and args.count < 1):
        parser.error("--rate, --batch and --count must be positive")
    return args


class Gateway:
    """Signs, paces and submits batches; counts what was committed."""

    def __init__(self, client: LedgerClient, chain: str) -> None:
        self.client = client
        self.chain = chain
        self.lock = threading.Lock()
        self.committed = 0
        self.heights: set[int] = set()
        self.rejected: list[str] = []

    def sign(self, kind: str, subject: str, payload: dict[str, Any]) -> Record:
        return self.client.make_record(type=kind, subject=subject, payload=payload,
                                       chain=self.chain)

    def send(self, batch: list[Record]) -> int:
        """Submit one batch and wait for it to commit; retry while the node pushes back."""
        for _ in range(20):
            try:
                results = self.client.submit(batch, wait=True, timeout=30)
                break
            except NodeError as exc:
                if exc.status not in (503, 504):  # mempool full, commit timeout: retry
                    raise
                time.sleep(1)  # resubmitting is safe: duplicates are awaited, not re-added
        else:
            raise NodeError(f"{self.client.base_url}: batch not committed after 20 tries")
        with self.lock:
            for r in results:
                if "height" in r:
                    self.committed += 1
                    self.heights.add(r["height"])
                elif r["status"] == "rejected":
                    self.rejected.append(f"{r.get('error')}: {r.get('detail')}")
        return len(batch)


def run(args: argparse.Namespace, gateway: Gateway) -> int:
    rng = random.Random(args.seed)
    source = plant_records(rng)
    started = time.monotonic()
    deadline = started + args.seconds if args.seconds is not None else None
    submitted = certificates = 0
    window: deque[Future[int]] = deque()
    bar = tqdm(total=args.count, unit="rec", dynamic_ncols=True, file=sys.stderr,
               disable=None)
    with ThreadPoolExecutor(IN_FLIGHT) as pool:
        try:
            while args.count is None or submitted < args.count:
                if deadline is not None and time.monotonic() >= deadline:
                    break
                size = args.batch if args.count is None else min(args.batch,
                                                                 args.count - submitted)
                batch = []
                for kind, subject, payload in (next(source) for _ in range(size)):
                    certificates += kind == "quality.certificate"
                    batch.append(gateway.sign(kind, subject, payload))
                # pace: batch k leaves at started + (records before it) / rate
                time.sleep(max(0.0, started + submitted / args.rate - time.monotonic()))
                while len(window) >= IN_FLIGHT:
                    window.popleft().result()
                window.append(pool.submit(gateway.send, batch))
                submitted += size
                update(bar, gateway, submitted)
            while window:
                window.popleft().result()
                update(bar, gateway, submitted)
        finally:
            for future in window:
                future.cancel()
            bar.close()
    seconds = time.monotonic() - started
    span = (f", heights {min(gateway.heights)}..{max(gateway.heights)}"
            if gateway.heights else "")
    print(f"submitted {submitted} records ({certificates} quality certificates) in "
          f"{seconds:.1f} s; committed {gateway.committed} "
          f"({gateway.committed / seconds:,.0f} records/s){span}")
    if gateway.rejected:
        print(f"plant_gateway: {len(gateway.rejected)} records rejected, first: "
              f"{gateway.rejected[0]}", file=sys.stderr)
        return 1
    return 0


def update(bar: tqdm[Any], gateway: Gateway, submitted: int) -> None:
    with gateway.lock:
        committed = gateway.committed
    bar.n = committed  # the bar and its rate count committed records
    bar.set_postfix({"submitted": submitted, "committed": committed}, refresh=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # stop as on Ctrl-C
    passphrase = os.environ.get("LEDGER_KEY_PASSPHRASE")
    try:
        key = read_key_file(args.identity, passphrase.encode() if passphrase else None)
    except LedgerError as exc:
        print(f"plant_gateway: {exc}", file=sys.stderr)
        return 2
    client = LedgerClient(args.node, identity=key, verify=args.ca or True)
    try:
        gateway = Gateway(client, client.chain_id())
        return run(args, gateway)
    except LedgerError as exc:
        print(f"plant_gateway: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("plant_gateway: interrupted", file=sys.stderr)
        return 130
    finally:
        client.close()


if __name__ == "__main__":
    sys.exit(main())
