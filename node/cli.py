"""The ``ledger`` command (SPEC section 8).

Each subcommand prints one line per outcome; failures print ``ledger: <reason>`` (or
``height N: <reason>`` for a failed audit) to stderr and exit non-zero:
0 success, 1 the thing checked is invalid, 2 the command could not run.
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys
import time
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from ledger.audit import (
    AuditReport,
    BlockSummary,
    BytesChunk,
    Chunk,
    audit_chunks,
    store_chunks,
)
from ledger.client import LedgerClient
from ledger.crypto import PrivateKey, write_key_file
from ledger.errors import AuditError, LedgerError, ReceiptError
from ledger.genesis import Genesis
from ledger.receipts import verify_receipt
from ledger.store.sqlite import SqliteStore

EXIT_OK, EXIT_INVALID, EXIT_ERROR = 0, 1, 2


class CommandError(Exception):
    """A command cannot run; the message is printed as one line."""


def _progress(total: int, quiet: bool):  # type: ignore[no-untyped-def]
    from tqdm import tqdm

    return tqdm(total=total, unit="block", disable=True if quiet else None,
                file=sys.stderr, dynamic_ncols=True, smoothing=0.1)


# -- keygen -------------------------------------------------------------------------------

def cmd_keygen(args: argparse.Namespace) -> int:
    """Write a new key file; print its public key."""
    passphrase = None
    if args.passphrase_env:
        value = os.environ.get(args.passphrase_env)
        if not value:
            raise CommandError(f"environment variable {args.passphrase_env} is not set")
        passphrase = value.encode()
    elif args.encrypt:
        first = getpass.getpass("passphrase: ")
        if first != getpass.getpass("again: "):
            raise CommandError("passphrases do not match")
        passphrase = first.encode()
    key = PrivateKey.generate()
    write_key_file(args.out, key, passphrase)
    print(key.public.hex())
    return EXIT_OK


# -- audit --------------------------------------------------------------------------------

def _http_chunks(client: LedgerClient, tip: int, blocks_per_chunk: int,
                 fetchers: int) -> Iterator[BytesChunk]:
    """Fetch blocks 1..tip in chunks, several requests in flight, yielding in order."""

    def fetch(start: int) -> BytesChunk:
        blocks: list[bytes | None] = []
        for height in range(start, min(start + blocks_per_chunk, tip + 1)):
            blocks.append(data := client.block_bytes(height))
            if data is None:  # the audit reports the missing block at this height
                break
        return BytesChunk(start, blocks)

    with ThreadPoolExecutor(fetchers) as pool:
        window: deque[Future[BytesChunk]] = deque()
        starts = iter(range(1, tip + 1, blocks_per_chunk))
        for start in starts:
            window.append(pool.submit(fetch, start))
            if len(window) >= fetchers * 2:
                yield window.popleft().result()
        while window:
            yield window.popleft().result()


def cmd_audit(args: argparse.Namespace) -> int:
    """Re-verify a whole chain from genesis."""
    genesis = Genesis.load(args.genesis)
    workers = args.workers or os.cpu_count() or 1
    started = time.monotonic()
    source: str
    if args.db:
        store = SqliteStore(args.db, readonly=True)
        try:
            if store.genesis_hash is not None and store.genesis_hash != genesis.hash:
                raise CommandError(f"{args.db} belongs to another genesis "
                                   f"({store.genesis_hash.hex()})")
            sizes = store.block_sizes()
        finally:
            store.close()
        tip = len(sizes)
        chunks: Iterator[Chunk] = store_chunks(str(args.db), sizes)
        source = str(args.db)
    else:
        client = LedgerClient(args.node)
        status = client.status()
        if status.get("chain") not in (None, genesis.chain_id):
            raise CommandError(f"{args.node} serves chain {status.get('chain')!r}, "
                               f"genesis is {genesis.chain_id!r}")
        tip = status["height"]
        chunks = _http_chunks(client, tip, args.chunk, fetchers=4)
        source = args.node

    bar = _progress(tip, args.quiet)
    records = 0

    def on_block(summary: BlockSummary) -> None:
        nonlocal records
        records += len(summary.ids)
        bar.update(1)
        if summary.height % 64 == 0:
            bar.set_postfix(records=records, refresh=False)

    try:
        report: AuditReport = audit_chunks(genesis, chunks, workers=workers, on_block=on_block)
    except AuditError as exc:
        bar.close()
        print(str(exc), file=sys.stderr)
        return EXIT_INVALID
    bar.close()
    if report.height != tip:
        print(f"height {report.height + 1}: block is missing", file=sys.stderr)
        return EXIT_INVALID
    seconds = time.monotonic() - started
    rate = report.records / seconds if seconds > 0 else 0.0
    print(f"ok: {source} chain {genesis.chain_id!r}: {report.height} blocks, "
          f"{report.records} records verified in {seconds:.2f} s "
          f"({rate:,.0f} records/s, {workers} workers); tip {report.tip_hash.hex()}")
    return EXIT_OK


# -- verify -------------------------------------------------------------------------------

def cmd_verify(args: argparse.Namespace) -> int:
    """Verify a receipt offline against genesis."""
    genesis = Genesis.load(args.genesis)
    try:
        data = Path(args.receipt).read_bytes()
    except OSError as exc:
        raise CommandError(f"{args.receipt}: cannot read ({exc.strerror})") from exc
    try:
        result = verify_receipt(data, genesis)
    except ReceiptError as exc:
        print(f"invalid: {exc}", file=sys.stderr)
        return EXIT_INVALID
    names = ", ".join(genesis.validators[i].name for i in result.signers)
    print(f"valid: record {result.record.id.hex()} is at height {result.header.height}, "
          f"index {result.index}, of chain {genesis.chain_id!r}; certified by {names}")
    return EXIT_OK


# -- parser -------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    """The argument parser for every subcommand."""
    parser = argparse.ArgumentParser(
        prog="ledger",
        description="A permissioned BFT ledger for industrial data: keys, audits, receipts.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("keygen", help="write a new Ed25519 key file and print its public key",
                       description="Write a new Ed25519 private key as PEM PKCS#8 to OUT "
                       "(mode 0600; never overwrites) and print its public key as hex.")
    p.add_argument("out", metavar="OUT.pem", help="where to write the key")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--encrypt", action="store_true", help="ask for a passphrase on the terminal")
    g.add_argument("--passphrase-env", metavar="VAR",
                   help="encrypt with the passphrase in environment variable VAR")
    p.set_defaults(func=cmd_keygen)

    p = sub.add_parser(
        "audit", help="re-verify a whole chain from genesis",
        description="Re-verify every block from height 1: hash links, records roots, log "
        "roots, every record signature and authorisation, duplicates, and every commit "
        "certificate. Exits 0 if all holds; otherwise prints 'height N: <reason>' for the "
        "first bad block and exits 1 (2 if the audit could not run).")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--node", metavar="URL",
                     help="a node's API (reads only GET /v1/status and /v1/blocks/{h})")
    src.add_argument("--db", metavar="PATH", type=Path,
                     help="a node's SQLite store, read offline")
    p.add_argument("--genesis", required=True, metavar="G", type=Path,
                   help="the chain's genesis.json")
    p.add_argument("--workers", type=int, default=0,
                   help="processes checking signatures (default: one per core)")
    p.add_argument("--chunk", type=int, default=32, help=argparse.SUPPRESS)
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_audit)

    p = sub.add_parser(
        "verify", help="verify a record's receipt offline",
        description="Verify a receipt (GET /v1/records/{id}/receipt) with nothing but "
        "genesis.json: the record's id and signature, its authorisation, its audit path to "
        "the block's records_root, and the block's commit certificate. Exit 0 iff valid.")
    p.add_argument("receipt", metavar="RECEIPT.json")
    p.add_argument("--genesis", required=True, metavar="G", type=Path,
                   help="the chain's genesis.json")
    p.set_defaults(func=cmd_verify)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``ledger`` console script."""
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except (CommandError, LedgerError) as exc:
        print(f"ledger: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("ledger: interrupted", file=sys.stderr)
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
