"""A live auditor: verify every block of a chain as it commits, with nothing but genesis.json.

It first catches up from height 1 (fetching each block's exact bytes, SPEC section 4), then
follows the node's event stream (``GET /v1/events``) and verifies each new block the moment it
is announced. Every rule of ``ledger audit`` applies to every block — the commit certificate,
the hash link to the previous block (height 1 links to the genesis hash), the records root,
the chain-wide log root, every record's signature and authorisation, no replayed record or
nonce — through ``ledger.audit.ChainVerifier``. One line per verified block; on the first bad
block it prints ``height N: <reason>`` to stderr and exits 1 (2 if it cannot run at all).

    python examples/auditor.py --node http://127.0.0.1:8000 --genesis .cluster/genesis.json
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from pathlib import Path

import httpx

from ledger.audit import BlockSummary, ChainVerifier
from ledger.errors import AuditError, LedgerError
from ledger.genesis import Genesis
from node.client import LedgerClient, NodeError

RECONNECT_TRIES = 10


class Stop(Exception):
    """``--until`` reached."""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Follow a node's committed blocks and verify each one against genesis.json "
        "(certificate, hash link, records root, log root, every record's signature and "
        "authorisation). Prints one line per verified block; exits 1 with 'height N: <reason>' "
        "at the first bad block, 2 if it cannot run.")
    parser.add_argument("--node", default="http://127.0.0.1:8000", metavar="URL",
                        help="the node to follow (default %(default)s)")
    parser.add_argument("--genesis", default=".cluster/genesis.json", type=Path, metavar="PATH",
                        help="the chain's genesis.json, the trust anchor (default %(default)s)")
    parser.add_argument("--until", type=int, metavar="HEIGHT",
                        help="exit 0 once this height is verified (default: follow forever)")
    parser.add_argument("--ca", metavar="PEM", help="CA file for an https node")
    return parser.parse_args(argv)


class Follower:
    """Fetches blocks in height order and feeds them to one ChainVerifier."""

    def __init__(self, client: LedgerClient, genesis: Genesis, until: int | None) -> None:
        self.client = client
        self.genesis = genesis
        self.verifier = ChainVerifier(genesis)
        self.until = until

    def verify(self, height: int, data: bytes, announced_hash: str | None = None) -> None:
        summary = self.verifier.verify_next(data)
        if announced_hash is not None and announced_hash != summary.hash.hex():
            raise AuditError(height, f"the event stream announced hash {announced_hash}, "
                             f"the block's is {summary.hash.hex()}")
        self.report(summary)
        if self.until is not None and summary.height >= self.until:
            raise Stop

    def report(self, s: BlockSummary) -> None:
        print(f"height {s.height}: ok  {len(s.ids):5d} records  log {s.log_size:8d}  "
              f"hash {s.hash.hex()[:16]}", flush=True)

    def catch_up(self) -> None:
        """Verify blocks from the next height until the node has no more."""
        while (data := self.client.block_bytes(self.verifier.height + 1)) is not None:
            self.verify(self.verifier.height + 1, data)

    def follow(self) -> None:
        """Verify each block the event stream announces; resume when the stream ends."""
        failures = 0
        while True:
            try:
                for event in self.client.events(from_height=self.verifier.height + 1):
                    failures = 0
                    height = int(event["height"])
                    while self.verifier.height < height:  # fill any gap, then this block
                        nxt = self.verifier.height + 1
                        data = self.client.block_bytes(nxt)
                        if data is None:
                            raise AuditError(nxt, "announced, but the node does not serve it")
                        self.verify(nxt, data, event["hash"] if nxt == height else None)
            except (NodeError, httpx.HTTPError) as exc:
                if getattr(exc, "status", None) is not None or failures >= RECONNECT_TRIES:
                    raise NodeError(f"{self.client.base_url}: {exc}") from exc
                failures += 1
                print(f"auditor: {exc}; reconnecting ({failures}/{RECONNECT_TRIES})",
                      file=sys.stderr, flush=True)
                time.sleep(min(2.0 ** failures, 30.0) / 4)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # stop as on Ctrl-C
    try:
        genesis = Genesis.load(args.genesis)
    except LedgerError as exc:
        print(f"auditor: {exc}", file=sys.stderr)
        return 2
    client = LedgerClient(args.node, verify=args.ca or True)
    follower = Follower(client, genesis, args.until)
    try:
        chain = client.status().get("chain")
        if chain != genesis.chain_id:
            print(f"auditor: {args.node} serves chain {chain!r}, genesis is "
                  f"{genesis.chain_id!r}", file=sys.stderr)
            return 2
        print(f"auditing chain {genesis.chain_id!r} at {args.node} from genesis "
              f"{genesis.hash.hex()[:16]}", flush=True)
        follower.catch_up()
        print(f"caught up at height {follower.verifier.height}; following new blocks",
              flush=True)
        follower.follow()
    except Stop:
        return 0
    except AuditError as exc:
        print(str(exc), file=sys.stderr)
        return 1
    except LedgerError as exc:
        print(f"auditor: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"auditor: stopped; heights 1..{follower.verifier.height} verified",
              file=sys.stderr)
        return 130
    finally:
        client.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
