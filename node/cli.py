"""The ``ledger`` command (SPEC section 8).

Each subcommand prints one line per outcome; failures print ``ledger: <reason>`` (or
``height N: <reason>`` for a failed audit) to stderr and exit non-zero:
0 success, 1 the thing checked is invalid, 2 the command could not run.
"""

from __future__ import annotations

import argparse
import getpass
import itertools
import json
import os
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

from ledger import merkle
from ledger.audit import (
    AuditPool,
    AuditReport,
    BlockSummary,
    BytesChunk,
    ChainVerifier,
    Chunk,
    audit_chunks,
    store_chunks,
)
from ledger.auditstate import AuditStateError, state_from_bytes, state_to_bytes
from ledger.blocks import Block, Certificate, Header
from ledger.crypto import PrivateKey, write_key_file
from ledger.encoding import b64decode, hex_decode
from ledger.errors import AuditError, LedgerError, ReceiptError
from ledger.genesis import Genesis
from ledger.records import Record
from ledger.store.sqlite import SqliteStore
from node.export import (
    Bundle,
    BundleError,
    PayloadTally,
    check_payloads,
    check_witnesses,
    write_bundle_counted,
)
from node.files import write_durably

# Imported where they are used, not here: `ledger audit --db` or `--file` (what `main` builds
# a parser of its own for) then loads neither httpx (node.client) nor cryptography's x509
# (node.cluster), nor the receipt verifier: an audit of a short chain is mostly start-up
# (docs/performance.md).
if TYPE_CHECKING:
    from ledger.receipts import TrustedCheckpoint, VerifiedReceipt
    from ledger.records import SealedPayload
    from node.client import LedgerClient


def _ledger_client() -> type[LedgerClient]:
    """``node.client.LedgerClient``, imported when a command first needs it, and kept as
    this module's ``LedgerClient`` (which a test may replace, e.g. with a client on a mock
    transport: every command makes its clients through here)."""
    found: type[LedgerClient] | None = globals().get("LedgerClient")
    if found is None:
        from node.client import LedgerClient as imported

        globals()["LedgerClient"] = found = imported
    return found


def __getattr__(name: str) -> object:
    """``node.cli.LedgerClient``, imported on first use (see ``_ledger_client``)."""
    if name == "LedgerClient":
        return _ledger_client()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

EXIT_OK, EXIT_INVALID, EXIT_ERROR = 0, 1, 2


class CommandError(Exception):
    """A command cannot run; the message is printed as one line."""


class _NoBar:
    """The progress bar of a ``--quiet`` command: nothing shown. (tqdm's own disabled bar
    still costs its import, ~10 ms of start-up, and starts its monitor thread.)"""

    def update(self, n: int = 1) -> None:
        """Nothing to show."""

    def set_postfix(self, **kwargs: object) -> None:
        """Nothing to show."""

    def close(self) -> None:
        """Nothing to close."""


def _progress(total: int | None, quiet: bool):  # type: ignore[no-untyped-def]
    if quiet:
        return _NoBar()
    from tqdm import tqdm

    return tqdm(total=total, unit="block", disable=None,
                file=sys.stderr, dynamic_ncols=True, smoothing=0.1)


def _ca(args: argparse.Namespace) -> str | bool:
    """--ca, or LEDGER_CA, or the system's trust store."""
    ca = getattr(args, "ca", None) or os.environ.get("LEDGER_CA")
    return str(ca) if ca else True


_PROXY_VARS = ("http_proxy", "https_proxy", "all_proxy")


def _node_verify(args: argparse.Namespace) -> str | bool:
    """``_ca`` for a ``--node URL`` whose connections may use TLS; False for a plain
    ``http://`` URL reached directly, where no connection uses TLS and httpx would load the
    system trust store for nothing (20-40 ms of CPU: a tenth of a short audit's start-up).
    Not when a proxy is configured: the proxy itself may be reached over https."""
    url = str(args.node)
    proxied = any(os.environ.get(v) or os.environ.get(v.upper()) for v in _PROXY_VARS)
    if url.lower().startswith("http://") and "," not in url and not proxied:
        return False
    return _ca(args)


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


# -- genesis mismatch ----------------------------------------------------------------------

def _mismatch(theirs: str, genesis: Genesis) -> str:
    return f"this chain was started from genesis {theirs}; yours is {genesis.hash.hex()}"


def _mismatch_unknown(why: str, genesis: Genesis) -> str:
    return f"this chain was started from another genesis ({why}); yours is {genesis.hash.hex()}"


def _certified_by_ours(header: Header, cert: Certificate, genesis: Genesis) -> bool:
    """True iff a quorum of *this* genesis's validators signed ``header``."""
    if cert.height != header.height or cert.block_hash != header.hash:
        return False
    try:
        cert.verify(genesis.chain_id, genesis.validators)
    except LedgerError:
        return False
    return True


def block1_genesis_mismatch(data: bytes | None, genesis: Genesis) -> str | None:
    """The one-line "started from another genesis" message for block 1's bytes, or None.

    Block 1's ``prev_hash`` is the hash of the genesis the chain was started from. When it
    is not ours, the chain is from another genesis (exit 2, nothing was audited) if the block
    carries another validator set (its ``validators_hash`` is not ours: two independent
    fields both say "another genesis"), or if our own validators certified it (they signed a
    block linked to another genesis: same validators, other organisations or policies).
    Otherwise — our validator set named, but the certificate does not verify — block 1 was
    altered after it was committed, and the audit reports ``height 1: ...`` (exit 1).
    """
    if data is None:
        return None
    try:
        block = Block.from_wire(data)
    except LedgerError:
        return None  # undecodable: the audit names height 1
    header = block.header
    if header.height != 1 or header.prev_hash == genesis.hash:
        return None
    if (header.validators_hash != genesis.validators.hash
            or _certified_by_ours(header, block.cert, genesis)):
        return _mismatch(header.prev_hash.hex(), genesis)
    return None


def receipt_genesis_mismatch(data: bytes, genesis: Genesis) -> str | None:
    """Why a receipt that failed to verify comes from another genesis, or None.

    A receipt shows only its own block's header, so: the header's ``validators_hash`` is not
    our validator set's; or its block is block 1 and links to another genesis; or our own
    validators certified the block and the record is in it, yet our genesis refuses the
    record (its signer or type): the validators ran with another genesis.
    """
    from ledger.receipts import parse_receipt

    try:
        doc = parse_receipt(data)
        header = Header.from_wire(b64decode(doc["header"], "receipt.header"))
        record = Record.from_wire(b64decode(doc["envelope"], "receipt.envelope"))
        cert_doc = doc["cert"]
        sigs = tuple((int(e["validator"]), b64decode(e["sig"], "sig"))
                     for e in cert_doc["signatures"])
        cert = Certificate(header.height, int(cert_doc["round"]), header.hash, sigs)
        proof = [hex_decode(h, "audit_path", 32) for h in doc["audit_path"]]
        merkle.verify_inclusion(int(doc["index"]), header.record_count,
                                merkle.leaf_hash(record.envelope), proof, header.records_root)
    except (LedgerError, KeyError, TypeError, ValueError):
        return None
    if header.chain != genesis.chain_id:
        return None  # the chain id differs: verify's own message says so
    first = header.height == 1 and header.prev_hash != genesis.hash
    if doc.get("config_proof") and not first:
        # SPEC 9: after configuration changes another validator set, other members and
        # policies are in force; only the verifier's own reason can be trusted.
        return None
    if header.validators_hash != genesis.validators.hash:
        if first:
            return _mismatch(header.prev_hash.hex(), genesis)
        if "config_proof" in doc:
            # A v1.1 receipt whose block is certified by another set than genesis's: a
            # change missing from its config_proof (invalid, exit 1) as much as another
            # genesis; the verifier's reason says which set it expected.
            return None
        return _mismatch_unknown(f"its validator set hashes to {header.validators_hash.hex()}, "
                                 f"yours to {genesis.validators.hash.hex()}", genesis)
    if not _certified_by_ours(header, cert, genesis):
        return None
    if first:
        return _mismatch(header.prev_hash.hex(), genesis)
    if not genesis.may_submit(record.body.signer, record.body.type):
        return _mismatch_unknown("your validators certified a record your genesis does not "
                                 "authorise", genesis)
    return None


# -- audit --------------------------------------------------------------------------------

def _http_chunks(client: LedgerClient, tip: int, blocks_per_chunk: int,
                 fetchers: int, first: int = 1) -> Iterator[BytesChunk]:
    """Fetch blocks first..tip in chunks, several requests in flight, yielding in order."""

    def fetch(start: int, size: int) -> BytesChunk:
        blocks: list[bytes | None] = []
        for height in range(start, min(start + size, tip + 1)):
            blocks.append(data := client.block_bytes(height))
            if data is None:  # the audit reports the missing block at this height
                break
        return BytesChunk(start, blocks)

    def starts() -> Iterator[tuple[int, int]]:
        # The first requests are for one block, then 2, 4, ... up to blocks_per_chunk: the
        # audit's workers get their first blocks after one round trip, not after a chunk's.
        start, size = first, 1
        while start <= tip:
            yield start, size
            start, size = start + size, min(2 * size, blocks_per_chunk)

    with ThreadPoolExecutor(fetchers, thread_name_prefix="audit-fetch") as pool:
        window: deque[Future[BytesChunk]] = deque()
        try:
            for start, size in starts():
                window.append(pool.submit(fetch, start, size))
                if len(window) >= fetchers * 2:
                    yield window.popleft().result()
            while window:
                yield window.popleft().result()
        finally:  # stopped early (a bad block, an error): fetch nothing more
            for future in window:
                future.cancel()


def _file_chunks(blocks: Iterator[bytes], blocks_per_chunk: int) -> Iterator[BytesChunk]:
    """A bundle's blocks (heights 1.. in order) in chunks, read as the audit asks."""
    start, chunk = 1, []
    for data in blocks:
        chunk.append(data)
        if len(chunk) == blocks_per_chunk:
            yield BytesChunk(start, list(chunk))
            start, chunk = start + len(chunk), []
    if chunk:
        yield BytesChunk(start, list(chunk))


def _open_export_db(args: argparse.Namespace) -> tuple[Genesis, SqliteStore]:
    """``ledger export --db PATH --genesis G``: G and the store opened read-only, after
    checking the store is of G's chain (it keeps only the genesis hash)."""
    if args.genesis is None:
        raise CommandError("--db needs --genesis G (the store keeps only its hash)")
    genesis = Genesis.load(args.genesis)
    store = SqliteStore(args.db, readonly=True)
    if store.genesis_hash is not None and store.genesis_hash != genesis.hash:
        store.close()
        raise CommandError(f"{args.db}: " + _mismatch(store.genesis_hash.hex(), genesis))
    return genesis, store


def cmd_export(args: argparse.Namespace) -> int:
    """Write a chain as an export bundle (SPEC section 12), streamed, renamed into place;
    with ``--format parquet``, its records as Parquet files (``_export_parquet``)."""
    if args.format == "parquet":
        if args.identity is not None:
            raise CommandError("--identity reads sealed payloads for a bundle's payloads "
                               "section; Parquet files hold none (only payload_digest)")
        return _export_parquet(args)
    blocks: Iterator[bytes | None]
    payloads: Iterator[tuple[bytes, bytes, bytes]]
    if args.identity is not None and args.db:
        raise CommandError("--identity signs a node's reads; with --db the store's pairs "
                           "are exported as held")
    if args.db:
        genesis, store = _open_export_db(args)
        raw, tip = genesis.raw, store.height
        blocks = (store.block_bytes(height) for height in range(1, tip + 1))
        # the witnesses section: the cosignatures the store holds (a generator: read after
        # the blocks); the payloads section likewise: the pairs it holds
        witnesses: Iterator[tuple[int, bytes, bytes]] | tuple[()] = (
            store.cosignatures_between(1, tip))
        payloads = _store_payloads(store)
    else:
        client = _ledger_client()(args.node, verify=_ca(args), read_identity=_reader(args))
        raw, tip = client.genesis(), client.status()["height"]
        blocks = (data for chunk in _http_chunks(client, tip, 32, fetchers=4)
                  for data in chunk.blocks)
        store, witnesses = None, _http_cosignatures(client, tip)
        payloads = ((rid, salt, payload) for _, rid, salt, payload, _ in
                    _http_payloads(client, None) if salt is not None and payload is not None)
    bar = _progress(tip, args.quiet)
    try:
        written = write_bundle_counted(args.out, raw, blocks, on_block=lambda: bar.update(1),
                                       witnesses=witnesses, payloads=payloads)
    except BundleError as exc:
        raise CommandError(f"{args.out}: nothing written: {exc}") from exc
    finally:
        bar.close()
        if store is not None:
            store.close()
    n = written.payloads
    print(f"ok: {written.count} blocks and {n} sealed payload{'s' if n != 1 else ''} "
          f"written to {args.out}; tip {written.tip.hex()}")
    return EXIT_OK


PAYLOAD_WINDOW = 4096  # log indices read from a store at a time for its payloads
PAYLOAD_SLICE = 64  # pairs read from a store at a time


def _store_payloads(store: SqliteStore, log_size: int | None = None,
                    ) -> Iterator[tuple[bytes, bytes, bytes]]:
    """``(id, salt, payload_bytes)`` of every pair ``store`` holds, in log order (below
    ``log_size``, default the tip's)."""
    if log_size is None:
        tip = store.block(store.height) if store.height else None
        log_size = tip.header.log_size if tip is not None else 0
    first = 0
    while first < log_size:  # at most PAYLOAD_SLICE pairs (of up to 64 KiB) read at a time
        rows = store.payloads_between(first, min(PAYLOAD_WINDOW, log_size - first),
                                      PAYLOAD_SLICE)
        for _, rid, pair in rows:
            yield rid, pair.salt, pair.payload
        first = rows[-1][0] + 1 if len(rows) == PAYLOAD_SLICE else first + PAYLOAD_WINDOW


def _http_payloads(client: LedgerClient, log_size: int | None,
                   ) -> Iterator[tuple[int, bytes, bytes | None, bytes | None, str]]:
    """``(index, id, salt, payload_bytes, where)`` of every pair a node lists (``GET
    /v1/payloads``, signed with the client's read identity), below ``log_size`` when given;
    salt and payload are None for a pair the read policy withheld. Shape-checked only."""
    cursor: int | None = 0
    while cursor is not None:
        page = client.payloads(cursor, 1000)
        for i, item in enumerate(page["payloads"]):
            where = f"{client.base_url}/v1/payloads?from_index={cursor} payloads[{i}]"
            index = item.get("index")
            if type(index) is not int or index < cursor:
                raise CommandError(f"{where}: 'index' is not a log index from {cursor} on")
            if log_size is not None and index >= log_size:
                return
            try:
                rid = hex_decode(item.get("id"), f"{where}.id", 32)
                if item.get("payload_status") == "withheld":
                    yield index, rid, None, None, where
                    continue
                yield (index, rid, b64decode(item.get("salt"), f"{where}.salt"),
                       b64decode(item.get("payload"), f"{where}.payload"), where)
            except LedgerError as exc:
                raise CommandError(str(exc)) from exc
        cursor = _next_page(client, page, "payloads", "log index", cursor)


def _http_cosignatures(client: LedgerClient, tip: int) -> Iterator[tuple[int, bytes, bytes]]:
    """The cosignatures a node holds for heights ``1..tip`` (``GET /v1/log/cosignatures``,
    page by page; read after the blocks), shape-checked: ``ledger audit --file`` verifies
    them."""
    height: int | None = 1
    while height is not None and height <= tip:
        page = client.cosignatures(height, None)
        for i, row in enumerate(page["cosignatures"]):
            where = f"{client.base_url} cosignatures[{i}] from height {height}"
            if not isinstance(row, dict) or type(row.get("height")) is not int:
                raise CommandError(f"{where}: not {{height, pubkey, sig}}")
            try:
                yield (row["height"], hex_decode(row.get("pubkey"), f"{where}.pubkey", 32),
                       b64decode(row.get("sig"), f"{where}.sig"))
            except LedgerError as exc:
                raise CommandError(str(exc)) from exc
        height = _next_page(client, page, "cosignatures", "height", height)


def _next_page(client: LedgerClient, page: dict[str, object], what: str, unit: str,
               after: int) -> int | None:
    """A listing page's ``next``: None (the end) or an int past ``after`` (else a node
    would have the reader loop forever)."""
    nxt = page["next"]
    if nxt is not None and (type(nxt) is not int or nxt <= after):
        raise CommandError(f"{client.base_url}: {what} page 'next' {nxt!r} does not "
                           f"advance past {unit} {after}")
    return nxt


def _export_parquet(args: argparse.Namespace) -> int:
    """``ledger export --format parquet --out DIR``: the committed records as Parquet files
    (node/analytics.py, imported here only: a node never loads it or DuckDB). A later run
    into the same DIR appends only the new heights."""
    from node.analytics import ParquetExport, load_duckdb

    load_duckdb()  # the one-line install hint before any other work
    block_at: Callable[[int], bytes | None]
    blocks_from: Callable[[int], Iterator[bytes | None]]
    close: Callable[[], None] = lambda: None  # noqa: E731
    if args.db:
        genesis, store = _open_export_db(args)
        tip, block_at, close = store.height, store.block_bytes, store.close

        def from_store(first: int) -> Iterator[bytes | None]:
            return (store.block_bytes(h) for h in range(first, tip + 1))
        blocks_from = from_store
    else:
        client = _ledger_client()(args.node, verify=_ca(args))
        genesis = Genesis.from_bytes(client.genesis(), f"{args.node} genesis")
        if args.genesis is not None and Genesis.load(args.genesis).hash != genesis.hash:
            raise CommandError(f"{args.node}: " + _mismatch(genesis.hash.hex(),
                                                             Genesis.load(args.genesis)))
        tip, block_at = client.status()["height"], client.block_bytes

        def from_node(first: int) -> Iterator[bytes | None]:
            return (data for chunk in _http_chunks(client, tip, 32, fetchers=4, first=first)
                    for data in chunk.blocks)
        blocks_from = from_node
    try:
        with ParquetExport(args.out, genesis) as export:
            try:
                export.check_source(tip, block_at)
            except AuditError as exc:
                print(str(exc), file=sys.stderr)
                return EXIT_INVALID
            bar = _progress(tip - export.height, args.quiet)
            try:
                result = export.run(blocks_from(export.height + 1), tip,
                                    on_block=lambda: bar.update(1))
            except AuditError as exc:
                print(str(exc), file=sys.stderr)
                return EXIT_INVALID
            finally:
                bar.close()
    finally:
        close()
    if result.first > result.height:
        print(f"ok: nothing new; {args.out} holds the chain up to height {result.height} "
              f"({result.total_records} records)")
    else:
        print(f"ok: heights {result.first}..{result.height}: {result.records} records in "
              f"{len(result.files)} new Parquet files under {args.out}; it holds "
              f"{result.total_records} records up to height {result.height} "
              f"(block {result.block_hash.hex()})")
    return EXIT_OK


def _checkpoint(text: str) -> tuple[int, bytes]:
    """Parse ``HEIGHT:BLOCK_HASH`` (argparse type; the one parser is
    ``TrustedCheckpoint.parse``, as for ``ledger verify --checkpoint``)."""
    point = _trusted_checkpoint(text)
    return point.height, point.block_hash


def _versions(report: AuditReport) -> str:
    """``3 configuration versions followed (from heights 1, 3, 5)``."""
    if report.history is None or len(report.history) == 1:
        return "1 configuration version (genesis)"
    starts = ", ".join(str(start) for start, _ in report.history)
    return f"{len(report.history)} configuration versions followed (from heights {starts})"


def _load_state(path: Path, genesis: Genesis) -> tuple[ChainVerifier, bytearray] | None:
    """The saved audit state at ``path`` (None if there is no file yet); CommandError, one
    line, if it is unreadable, truncated, corrupt or of another chain."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise CommandError(f"{path}: cannot read the audit state ({exc.strerror})") from exc
    try:
        verifier, hashes = state_from_bytes(data, genesis)
    except AuditStateError as exc:
        raise CommandError(f"{path}: {exc}") from exc
    return verifier, bytearray(hashes)


def _first_difference(saved: bytes | bytearray, upto: int,
                      served_hash: Callable[[int], bytes | None]) -> int | None:
    """The first height in 1..upto whose served block hash is not the saved one (None if
    block ``upto`` matches). Blocks link by hash, so a history that differs at N differs
    at every height after it: a binary search finds N in O(log upto) reads."""
    def same(height: int) -> bool:
        return served_hash(height) == bytes(saved[(height - 1) * 32:height * 32])

    if upto == 0 or same(upto):
        return None
    lo, hi = 1, upto  # the answer is in [lo, hi]; block hi differs
    while lo < hi:
        mid = (lo + hi) // 2
        if same(mid):
            lo = mid + 1
        else:
            hi = mid
    return lo


def _hash_of(data: bytes | None) -> bytes | None:
    if data is None:
        return None
    try:
        return Block.from_wire(data).header.hash
    except LedgerError:
        return None


def _cross_check_log(client: LedgerClient, saved: tuple[int, bytes],
                     verifier: ChainVerifier) -> tuple[str | None, str]:
    """Ask the node for the consistency proof (``GET /v1/log/consistency``, RFC 9162) from
    the saved log to the one just verified, and check it. The audit already recomputed
    the log over every new block from the saved compact range, so this cross-checks the
    node's proof service: (error, "") if its proof fails, (None, note) otherwise."""
    from node.client import NodeError

    (n, old_root), m = saved, verifier.log.size
    if n == 0 or n == m:
        return None, ""
    try:
        doc = client.log_consistency(n, m)
    except NodeError as exc:
        if exc.status == 404:  # a node from before the log proofs (SPEC v1.0)
            return None, "; the node serves no consistency proofs"
        raise
    try:
        if (doc.get("first"), doc.get("second")) != (n, m):
            raise LedgerError(f"the answer is for sizes {doc.get('first')}, {doc.get('second')}")
        proof = [hex_decode(h, "proof", 32) for h in doc["proof"]]
        merkle.verify_consistency(n, m, old_root, verifier.log.root(), proof)
    except (LedgerError, TypeError, KeyError) as exc:
        return (f"the log consistency proof from the saved {n} records to {m} does not "
                f"verify ({exc})"), ""
    return None, f"; log consistency {n} -> {m} proved"


def cmd_audit(args: argparse.Namespace) -> int:
    """Re-verify a whole chain from genesis (with --state: only what was added since the
    saved audit, after checking the served chain holds the saved blocks)."""
    if args.node:
        # The HTTP client's modules, imported with the command's other modules: before the
        # time the command reports ("verified in N s") starts, as when node.cli imported
        # them; --db and --file never load them.
        import node.client  # noqa: F401
    started = time.monotonic()
    genesis = Genesis.load(args.genesis)
    workers = args.workers or os.cpu_count() or 1
    # The workers first, before this process starts a thread (HTTP fetchers, the progress
    # bar's monitor): forked from here, they hold every module already (ledger.audit).
    with AuditPool(genesis, workers) as pool:
        return _audit(args, genesis, pool, started)


def _audit(args: argparse.Namespace, genesis: Genesis, pool: AuditPool,
           started: float) -> int:
    workers = pool.workers
    state_path: Path | None = args.state
    loaded = _load_state(state_path, genesis) if state_path is not None else None
    load_seconds = time.monotonic() - started
    verifier, hashes = loaded if loaded is not None else (ChainVerifier(genesis), bytearray())
    saved = verifier.height
    saved_log = (verifier.log.size, verifier.log.root())
    if args.payloads and state_path is not None:
        raise CommandError("--payloads checks every pair against the whole chain: it does "
                           "not combine with --state")
    if args.identity is not None and not args.node:
        raise CommandError("--identity signs a node's reads: it goes with --node")
    tally = PayloadTally() if args.payloads else None
    client: LedgerClient | None = None
    source: str
    store: SqliteStore | None = None
    if args.db:
        store = SqliteStore(args.db, readonly=True)
        try:
            if store.genesis_hash is not None and store.genesis_hash != genesis.hash:
                raise CommandError(f"{args.db}: " + _mismatch(store.genesis_hash.hex(), genesis))
            sizes = store.block_sizes()
            tip = len(sizes)
            block1 = store.block_bytes(1) if tip else None
            differs = _first_difference(hashes, min(saved, tip),
                                        lambda h: _hash_of(store.block_bytes(h)
                                                           if store is not None else None))
            mismatch = block1_genesis_mismatch(block1, genesis)
            if mismatch:
                raise CommandError(f"{args.db}: {mismatch}")
        except BaseException:
            store.close()
            raise
        store.close()
        store = None
        # Each worker reads its pieces from the store itself: only (start, end) goes through
        # the pipes (reading here and sending the bytes made this process the bottleneck of
        # a 1M-record audit, docs/performance.md).
        chunks: Iterator[Chunk] = store_chunks(str(args.db), sizes[saved:])
        source = str(args.db)
    elif args.file:
        if state_path is not None:
            raise CommandError("--state does not apply to --file (audit the bundle whole)")
        bundle = Bundle(args.file)
        if bundle.genesis_raw != genesis.raw:
            raise CommandError(f"{args.file}: the bundle's genesis.json is not the bytes of "
                               f"{args.genesis} (another chain or an edited genesis)")
        try:
            tip, bundle_tip = bundle.scan()
        except AuditError as exc:
            print(str(exc), file=sys.stderr)
            return EXIT_INVALID
        differs = None
        chunks = _file_chunks(bundle.blocks(), args.chunk)
        source = str(args.file)
    else:
        client = _ledger_client()(args.node, verify=_node_verify(args),
                                  read_identity=_reader(args))
        status = client.status()
        if status.get("chain") not in (None, genesis.chain_id):
            raise CommandError(f"{args.node} serves chain {status.get('chain')!r}, "
                               f"genesis is {genesis.chain_id!r}")
        served = status.get("genesis_hash")
        if isinstance(served, str) and served != genesis.hash.hex():
            raise CommandError(f"{args.node}: " + _mismatch(served, genesis))
        tip = status["height"]
        block1 = client.block_bytes(1) if tip else None
        mismatch = block1_genesis_mismatch(block1, genesis)
        if mismatch:
            raise CommandError(f"{args.node}: {mismatch}")
        differs = _first_difference(hashes, min(saved, tip),
                                    lambda h: _hash_of(client.block_bytes(h)))
        if saved == 0 and block1 is not None:
            # Block 1 is in hand: the workers start on it while the rest downloads (it is
            # not fetched twice).
            chunks = itertools.chain([BytesChunk(1, [block1])],
                                     _http_chunks(client, tip, args.chunk, fetchers=4, first=2))
        else:
            chunks = _http_chunks(client, tip, args.chunk, fetchers=4, first=saved + 1)
        source = args.node

    if differs is not None:
        print(f"height {differs}: {source} serves a block that is not the one audited before "
              f"(saved hash {bytes(hashes[(differs - 1) * 32:differs * 32]).hex()}): "
              f"a different history", file=sys.stderr)
        return EXIT_INVALID
    if tip < saved:
        print(f"height {tip + 1}: {source} serves a chain of {tip} blocks, shorter than the "
              f"{saved} audited before (truncated or rolled back)", file=sys.stderr)
        return EXIT_INVALID
    if tip < args.min_height:
        print(f"height {tip + 1}: {source} serves a chain of {tip} blocks, shorter than "
              f"--min-height {args.min_height} (truncated or behind)", file=sys.stderr)
        return EXIT_INVALID
    checkpoint = args.checkpoint
    if checkpoint is not None and checkpoint[0] > tip:
        print(f"height {tip + 1}: {source} serves a chain of {tip} blocks, shorter than "
              f"the --checkpoint height {checkpoint[0]} (truncated or behind)", file=sys.stderr)
        return EXIT_INVALID
    checkpoint_error: str | None = None
    if checkpoint is not None and checkpoint[0] <= saved:
        known = bytes(hashes[(checkpoint[0] - 1) * 32:checkpoint[0] * 32])
        if known != checkpoint[1]:
            checkpoint_error = (f"height {checkpoint[0]}: block hash {known.hex()} is not the "
                                f"--checkpoint hash {checkpoint[1].hex()} (another history)")

    bar = _progress(tip - saved, args.quiet)
    records = 0

    def on_block(summary: BlockSummary) -> None:
        nonlocal records, checkpoint_error
        if (checkpoint is not None and summary.height == checkpoint[0]
                and summary.hash != checkpoint[1] and checkpoint_error is None):
            checkpoint_error = (f"height {summary.height}: block hash {summary.hash.hex()} is "
                                f"not the --checkpoint hash {checkpoint[1].hex()} (another "
                                f"history)")
        hashes.extend(summary.hash)
        records += len(summary.ids)
        if tally is not None:
            tally.add(summary)
        bar.update(1)
        if summary.height % 64 == 0:
            bar.set_postfix(records=records, refresh=False)

    try:
        report: AuditReport = audit_chunks(genesis, chunks, on_block=on_block,
                                           verifier=verifier, pool=pool)
    except AuditError as exc:
        print(str(exc), file=sys.stderr)
        return EXIT_INVALID
    finally:
        bar.close()
        if store is not None:
            store.close()
    if report.height != tip:
        print(f"height {report.height + 1}: block is missing", file=sys.stderr)
        return EXIT_INVALID
    if checkpoint_error is not None:
        print(checkpoint_error, file=sys.stderr)
        return EXIT_INVALID
    if args.file and report.tip_hash != bundle_tip:
        print(f"height {tip}: the bundle's end marker names tip {bundle_tip.hex()}, the "
              f"last block's hash is {report.tip_hash.hex()}", file=sys.stderr)
        return EXIT_INVALID
    witness_note = ""
    if args.file and bundle.witnesses:
        try:
            cosigned = check_witnesses(bundle, genesis, report.history)
        except AuditError as exc:
            print(str(exc), file=sys.stderr)
            return EXIT_INVALID
        heights = len(bundle.witnesses)
        witness_note = (f", {cosigned} witness cosignature{'s' if cosigned != 1 else ''} of "
                        f"{heights} height{'s' if heights != 1 else ''} verified")
    if args.file and bundle.payloads:
        try:
            checked = check_payloads(bundle)
        except AuditError as exc:
            print(str(exc), file=sys.stderr)
            return EXIT_INVALID
        witness_note += (f", {checked} sealed payload{'s' if checked != 1 else ''} matched "
                         f"{'their digests' if checked != 1 else 'its digest'}")
    if tally is not None:
        try:
            _audit_payloads(args, tally, client, verifier.log.size, report.height + 1,
                            bundle if args.file else None)
        except AuditError as exc:
            print(str(exc), file=sys.stderr)
            return EXIT_INVALID
        witness_note += f"; {tally.note()}"
    proof_note = ""
    if client is not None and loaded is not None:
        proof_error, proof_note = _cross_check_log(client, saved_log, verifier)
        if proof_error is not None:
            print(f"height {tip}: {source}: {proof_error}", file=sys.stderr)
            return EXIT_INVALID
    seconds = time.monotonic() - started
    rate = records / seconds if seconds > 0 else 0.0
    if state_path is None:
        print(f"ok: {source} chain {genesis.chain_id!r}: {report.height} blocks, "
              f"{report.records} records verified in {seconds:.2f} s "
              f"({rate:,.0f} records/s, {workers} workers), {_versions(report)}"
              f"{witness_note}; tip {report.tip_hash.hex()}")
        return EXIT_OK
    saved_note = f"state {state_path} unchanged"
    if loaded is None or report.height > saved:  # nothing new: the saved state stands
        saved_note = f"state saved to {state_path}"
        try:
            write_durably(state_path, state_to_bytes(verifier, bytes(hashes)))
        except OSError as exc:
            raise CommandError(f"{state_path}: cannot write the audit state ({exc})") from exc
    since = (f"since the saved audit at height {saved} (state loaded in {load_seconds:.2f} s)"
             if loaded is not None else "from genesis")
    new = report.height - saved
    print(f"ok: {source} chain {genesis.chain_id!r}: {report.height} blocks; "
          f"{new} new block{'' if new == 1 else 's'}, {records} new records verified {since} in "
          f"{seconds:.2f} s ({rate:,.0f} records/s, {workers} workers), {_versions(report)}; "
          f"tip {report.tip_hash.hex()}{proof_note}; {saved_note}")
    return EXIT_OK


def _audit_payloads(args: argparse.Namespace, tally: PayloadTally,
                    client: LedgerClient | None, log_size: int, after: int,
                    bundle: Bundle | None) -> None:
    """``ledger audit --payloads``: every pair the source holds (a bundle's payloads
    section, a store's pairs, or a node's listing as served to ``--identity``), below the
    audited log size, checked against its sealed record's digest (``PayloadTally``)."""
    if bundle is not None:
        for i, (rid, salt, payload) in enumerate(bundle.payloads):
            tally.pair(rid, salt, payload,
                       f"{bundle.path}: payloads entry {i} (record {rid.hex()})", after)
    elif client is None:
        store = SqliteStore(args.db, readonly=True)
        try:
            for rid, salt, payload in _store_payloads(store, log_size):
                tally.pair(rid, salt, payload, f"{args.db}: record {rid.hex()}", after)
        finally:
            store.close()
    else:
        for _, rid, served_salt, served, listed in _http_payloads(client, log_size):
            where = f"{listed} (record {rid.hex()})"
            if served_salt is None or served is None:
                tally.withhold(rid, where, after)
            else:
                tally.pair(rid, served_salt, served, where, after)


def _reader(args: argparse.Namespace) -> PrivateKey | None:
    """The key reads are signed with (``--identity PEM``; SPEC 10 read policies)."""
    return _read_identity(args) if getattr(args, "identity", None) is not None else None


# -- verify -------------------------------------------------------------------------------

def cmd_verify(args: argparse.Namespace) -> int:
    """Verify a receipt offline against genesis (and, when asked, its witnesses' cosignatures
    and the checkpoints the verifier trusts)."""
    from ledger.receipts import verify_receipt

    genesis = Genesis.load(args.genesis)
    try:
        data = Path(args.receipt).read_bytes()
    except OSError as exc:
        raise CommandError(f"{args.receipt}: cannot read ({exc.strerror})") from exc
    try:
        result = verify_receipt(data, genesis, witnesses=args.witnesses,
                                checkpoints=tuple(args.checkpoint or ()))
    except ReceiptError as exc:
        mismatch = receipt_genesis_mismatch(data, genesis) if exc.code == "bad_receipt" else None
        if mismatch:
            raise CommandError(f"{args.receipt}: {mismatch}") from exc
        print(f"invalid: {exc}", file=sys.stderr)
        return EXIT_INVALID
    names = ", ".join(result.signer_names)
    version = result.config.version if result.config is not None else 0
    followed = (f"; followed {version} configuration change{'s' if version != 1 else ''} "
                f"to version {version}" if version else "")
    print(f"valid: record {result.record.id.hex()} is at height {result.header.height}, "
          f"index {result.index}, of chain {genesis.chain_id!r}; certified by {names}"
          f"{followed}{_cosigned(result)}")
    for point, where in result.checkpoints:
        print(f"  trusted checkpoint {point.height}:{point.block_hash.hex()[:16]}… is "
              + ("the receipt's own block: the record is in the trusted history"
                 if where == "receipt" else
                 f"{where}'s block: the configuration changes up to height {point.height} "
                 f"are the trusted history's (later ones rest on the certificates)"))
    return EXIT_OK


def _cosigned(result: VerifiedReceipt) -> str:
    """``; cosigned by N of M witnesses`` (nothing for a receipt without a witnesses list)."""
    from node.logcli import cosigned_by

    if result.witnesses is None or result.config is None:
        return ""
    return f"; {cosigned_by(result.witnesses, result.config)}"


def _witness_count(text: str) -> int:
    """``--witnesses K``: a count >= 0."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError("must not be negative")
    return value


def _trusted_checkpoint(text: str) -> TrustedCheckpoint:
    """``--checkpoint HEIGHT:BLOCK_HASH``."""
    from ledger.receipts import TrustedCheckpoint

    try:
        return TrustedCheckpoint.parse(text)
    except LedgerError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


# -- cluster, node, submit -------------------------------------------------------------

def _type_list(text: str) -> tuple[str, ...]:
    """``--types``: comma-separated record types, or ``example`` for DEMO_TYPES."""
    from ledger.records import TYPE_PATTERN
    from node.cluster import DEMO_TYPES

    if text.strip() == "example":
        return DEMO_TYPES
    types = tuple(t.strip() for t in text.split(",") if t.strip())
    bad = [t for t in types if not TYPE_PATTERN.fullmatch(t)]
    if not types or bad:
        raise argparse.ArgumentTypeError(
            f"not a record type: {bad[0]!r}" if bad else "no record type given")
    return types


def cmd_cluster_init(args: argparse.Namespace) -> int:
    """Write a new local cluster's folder (and, with --k8s, its Kubernetes manifests)."""
    from node.cluster import init_cluster, load_inventory, parse_hosts, write_k8s

    hosts = None
    if args.hosts is not None and args.inventory is not None:
        raise CommandError("give --hosts or --inventory, not both")
    if args.hosts is not None:
        hosts = parse_hosts(args.hosts)
    elif args.inventory is not None:
        hosts = load_inventory(args.inventory)
    if hosts is not None and args.nodes is not None and args.nodes != len(hosts):
        raise CommandError(f"--nodes {args.nodes} but {len(hosts)} hosts: one validator per "
                           "host (leave --nodes out)")
    if args.no_tls and args.tls:
        raise CommandError("--tls and --no-tls contradict each other")
    if args.bind is not None and hosts is None:
        raise CommandError("--bind goes with --hosts or --inventory")
    tls = args.tls or (hosts is not None and not args.no_tls)
    if hosts is not None and not tls:
        print("warning: --no-tls: peer links and the API of this multi-host cluster are "
              "plain TCP and HTTP, readable and forgeable by anyone on the network between "
              "the hosts", file=sys.stderr)
    nodes = 4 if args.nodes is None else args.nodes
    urls = init_cluster(args.dir, nodes, args.base_port, args.chain_id, tls,
                        args.genesis_template, types=args.types, witnesses=args.witnesses,
                        k8s_name=args.k8s_name if args.k8s else None, hosts=hosts,
                        bind=args.bind)
    clients = ", ".join(sorted(str(p) for p in (args.dir / "clients").glob("*.pem")))
    print(f"wrote {args.dir}/genesis.json, {len(urls)} node folders and {clients}")
    if hosts is not None:
        folders = sorted(p.name for p in args.dir.glob("node*-*") if p.is_dir())
        how = (f"TLS on: clients trust {args.dir / 'tls' / 'ca.pem'}; the CA's key "
               "tls/ca.key stays here" if tls else "no TLS")
        print(f"  one folder per host, to copy to it: {', '.join(folders)} ({how}; "
              "docs/deploy.md)")
    if args.k8s:
        paths = write_k8s(args.dir, args.k8s_name, args.k8s_image, args.k8s_storage)
        print(f"  Kubernetes manifests: {', '.join(str(p) for p in paths)} (node*.yaml hold "
              "PRIVATE KEYS; genesis advertises the pods' DNS names; docs/deploy.md)")
    if args.witnesses:
        print(f"  witness keys (listed in genesis): {args.dir}/witnesses/witness0.pem .. "
              f"witness{args.witnesses - 1}.pem")
    for url in urls:
        print(f"  {url}")
    return EXIT_OK


SERVER_MODULES = ("fastapi", "uvicorn", "fastapi_offline")


def _need_server() -> None:
    """Running a node needs the ``node`` extra (FastAPI, uvicorn); the auditor's install
    (audit, verify, submit, the SDK) does not have it. Say so in one line."""
    import importlib.util

    if any(importlib.util.find_spec(name) is None for name in SERVER_MODULES):
        raise CommandError("running a node needs the server extra: pip install 'ledger[node]'")


def cmd_cluster_up(args: argparse.Namespace) -> int:
    """Run every node of a cluster folder in the foreground."""
    _need_server()
    from node.cluster import run_cluster

    return run_cluster(args.dir, stop_on_exit=args.stop_on_exit)


def cmd_node_run(args: argparse.Namespace) -> int:
    """Run one node until SIGINT/SIGTERM."""
    _need_server()
    import logging

    from node.config import NodeConfig
    from node.runtime import serve_forever

    logging.basicConfig(level=getattr(logging, args.log_level.upper()), stream=sys.stdout,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # httpx logs every request at INFO: a follower's poll each second would fill the log
    logging.getLogger("httpx").setLevel(max(logging.WARNING, logging.root.level))
    serve_forever(NodeConfig.load(args.dir))
    return EXIT_OK


def cmd_node_init(args: argparse.Namespace) -> int:
    """Make a node directory for a validator joining a running chain (SPEC section 8)."""
    from node.join import init_node

    if args.bundle is not None:  # refuse another chain's bundle before making anything
        from node.restore import check_genesis

        check_genesis(Bundle(args.bundle), Genesis.load(args.genesis), args.genesis)
    entry = init_node(args.dir, args.genesis, args.api, args.p2p, args.key)
    print(entry["pubkey"])
    if any(v.pubkey.hex() == entry["pubkey"]
           for v in Genesis.load(args.genesis).config.validators):
        print(f"ledger: warning: {entry['pubkey']} is a genesis validator's key, and "
              f"{args.dir} has no signing state: never run it while another node holds this "
              f"key, and copy that node's signing_state.bin here first (two nodes with one "
              f"key sign twice, which peers record as equivocation)", file=sys.stderr)
    print(f"wrote {args.dir}/config.json, genesis.json and node.pem; to join, a "
          f"configuration change lists this validator (and carries its join signature):\n"
          f"  {json.dumps(entry)}", file=sys.stderr)
    if args.bundle is not None:
        return _import_bundle(args.dir, args.bundle, args.workers, args.quiet)
    return EXIT_OK


def _import_bundle(directory: Path, bundle: Path, workers: int, quiet: bool) -> int:
    """Verify ``bundle`` and write its blocks into the store of the node in ``directory``
    (``node.restore.import_bundle``); print one line."""
    from node.config import NodeConfig
    from node.restore import count_hint, import_bundle

    config = NodeConfig.load(directory)
    genesis = Genesis.load(config.genesis_path)
    bar = _progress(count_hint(bundle), quiet)
    try:
        report = import_bundle(bundle, config.store_path, genesis, config.genesis_path,
                               workers=workers or None, on_blocks=bar.update)
    except AuditError as exc:
        bar.close()
        print(str(exc), file=sys.stderr)
        print(f"ledger: the store {config.store_path} keeps the blocks before it; "
              f"`ledger node run {directory}` syncs the rest from peers", file=sys.stderr)
        return EXIT_INVALID
    bar.close()
    seconds = max(report.seconds, 1e-9)
    kept = f" ({report.kept} already in the store, verified again)" if report.kept else ""
    if report.cosignatures:
        kept += f", {report.cosignatures} witness cosignatures verified and kept"
    if report.payloads:
        kept += f", {report.payloads} sealed payloads checked and kept"
    print(f"ok: {report.written} blocks written{kept} from {bundle} to {config.store_path}: "
          f"height {report.height}, {report.records} records verified in "
          f"{report.seconds:.2f} s ({(report.kept + report.written) / seconds:,.0f} blocks/s, "
          f"{report.records / seconds:,.0f} records/s); tip {report.tip_hash.hex()}; "
          f"start the node with `ledger node run {directory}`")
    return EXIT_OK


def _node_listening(api: tuple[str, int]) -> bool:
    """Whether something answers on a node's API address (the node seems to run)."""
    import socket

    host, port = api
    host = "127.0.0.1" if host in ("", "0.0.0.0") else "::1" if host == "::" else host
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def cmd_node_restore(args: argparse.Namespace) -> int:
    """Fill the store of an existing (stopped) node directory from an export bundle."""
    from node.config import NodeConfig

    config = NodeConfig.load(args.dir)
    if _node_listening(config.api):
        raise CommandError(f"something answers on {config.api[0]}:{config.api[1]}, the API "
                           f"address of {args.dir}: stop the node before restoring its store")
    return _import_bundle(args.dir, args.bundle, args.workers, args.quiet)


def cmd_node_check(args: argparse.Namespace) -> int:
    """Check a node's store offline: links, tip certificate, indexes, then a full audit."""
    from ledger.store.check import check_indexes, check_recent
    from node.config import NodeConfig

    config = NodeConfig.load(args.dir)
    genesis = Genesis.load(config.genesis_path)
    started = time.monotonic()
    with SqliteStore(config.store_path, readonly=True) as store:
        sizes = store.block_sizes()
    # The full audit first: it follows every configuration change from genesis, so the tip's
    # certificate is then checked against the validator set in force at the tip (SPEC 9).
    try:
        report = audit_chunks(genesis, store_chunks(str(config.store_path), sizes),
                              workers=args.workers or None)
    except AuditError as exc:
        print(str(exc), file=sys.stderr)
        return EXIT_INVALID
    history = report.history or genesis.history()
    with SqliteStore(config.store_path, readonly=True) as store:
        try:
            check_recent(store, genesis, validators=history.validators_at(store.height))
            check_indexes(store)
        except LedgerError as exc:
            print(str(exc), file=sys.stderr)
            return EXIT_INVALID
    print(f"ok: {config.store_path}: {report.height} blocks, {report.records} records, "
          f"indexes and links consistent, chain audited in {time.monotonic() - started:.2f} s"
          f", {_versions(report)}")
    return EXIT_OK


def _read_identity(args: argparse.Namespace) -> PrivateKey:
    from ledger.crypto import read_key_file

    passphrase = os.environ.get("LEDGER_KEY_PASSPHRASE")
    return read_key_file(args.identity, passphrase.encode() if passphrase else None)


def cmd_config_show(args: argparse.Namespace) -> int:
    """Print the configuration in force (or ``--version V``) as JSON, genesis.json's shapes
    without ``chain_id`` (SPEC section 8)."""
    import json as jsonlib

    with _ledger_client()(args.node, verify=_ca(args)) as client:
        doc = client.config(args.version)
    config = doc["config"]
    if not isinstance(config, dict):
        raise CommandError(f"{args.node}/v1/config: 'config' is not an object")
    config.pop("chain_id", None)
    print(jsonlib.dumps(config, indent=2))
    print(f"version {doc['version']}, governing from height {doc.get('height')}",
          file=sys.stderr)
    return EXIT_OK


def cmd_submit(args: argparse.Namespace) -> int:
    """Sign one record and submit it (or, with --print-envelope, only print it), through
    the SDK (node/client.py): the same requests, checks and error messages as Python code."""
    import json as jsonlib

    from node.client import sign_record, sign_sealed

    try:
        payload = jsonlib.loads(args.payload)
    except ValueError as exc:
        raise CommandError(f"--payload is not JSON ({exc})") from exc
    key = _read_identity(args)
    what = {"type": args.type, "subject": args.subject, "payload": payload,
            "nonce": args.nonce}
    if args.print_envelope:
        from ledger.encoding import b64encode

        pair: SealedPayload | None = None
        if args.chain is not None:  # no request needed: sign offline
            record, pair = (sign_sealed(key, chain=args.chain, **what) if args.sealed
                            else (sign_record(key, chain=args.chain, **what), None))
        elif args.node:
            with _ledger_client()(args.node, identity=key, verify=_ca(args)) as client:
                record, pair = (client.seal(**what) if args.sealed
                                else (client.sign(**what), None))
        else:
            raise CommandError("--print-envelope without --node needs --chain")
        print(f"id {record.id.hex()}")
        print(f"envelope {b64encode(record.envelope)}")
        if pair is not None:  # the JSON submission's item: {"envelope", "salt", "payload"}
            print(f"salt {b64encode(pair.salt)}")
            print(f"payload {b64encode(pair.payload)}")
        return EXIT_OK
    if not args.node:
        raise CommandError("--node URL is required (or --print-envelope to sign only)")
    with _ledger_client()(args.node, identity=key, chain=args.chain, verify=_ca(args),
                      timeout=args.timeout + 10) as client:
        result = client.write(**what, wait=args.wait, timeout=args.timeout,
                              seal=args.sealed)
    if result.get("status") == "rejected":
        print(f"rejected: {result.get('error')}: {result.get('detail')}", file=sys.stderr)
        return EXIT_INVALID
    line = str(result.get("id")) + (f" height {result['height']}" if "height" in result else "")
    print(line if result.get("status") == "accepted" else f"{line} (duplicate)")
    return EXIT_OK


# -- parser -------------------------------------------------------------------------------

def _add_audit(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
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
    src.add_argument("--file", metavar="FILE", type=Path,
                     help="an export bundle (ledger export); its genesis must be G's bytes")
    p.add_argument("--genesis", required=True, metavar="G", type=Path,
                   help="the chain's genesis.json")
    p.add_argument("--workers", type=int, default=0,
                   help="processes checking signatures (default: one per core)")
    p.add_argument("--min-height", type=int, default=0, metavar="N",
                   help="fail unless the chain has at least N blocks: a node can serve a "
                   "truncated chain, which audits clean up to where it stops")
    p.add_argument("--checkpoint", type=_checkpoint, metavar="HEIGHT:BLOCK_HASH",
                   help="fail unless block HEIGHT has this hash (hex), e.g. one you noted "
                   "from an earlier audit or got from another organisation")
    p.add_argument("--state", type=Path, metavar="FILE",
                   help="incremental audit: if FILE exists, check the chain still holds the "
                   "blocks it records and verify only the new ones; then save what was "
                   "verified to FILE (written atomically)")
    p.add_argument("--payloads", action="store_true",
                   help="also check every sealed payload the source holds against its "
                   "record's digest (a node's as served to --identity) and count them: "
                   "served, withheld, missing, redacted")
    p.add_argument("--identity", type=Path, metavar="PEM",
                   help="with --node: sign reads with this member key (RFC 9421), so the "
                   "node's read policies serve it sealed payloads")
    p.add_argument("--chunk", type=int, default=32, help=argparse.SUPPRESS)
    p.add_argument("--ca", type=Path, help="CA file for an https node (or LEDGER_CA)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_audit)


#: Subcommands ``main`` parses with a parser of that subcommand alone (``build_parser``), so
#: that the other commands' modules (the SDK and httpx, TLS and x509 for ``cluster init``,
#: governance, witness, log, history) are not imported: ``ledger audit`` of a short chain is
#: mostly start-up (docs/performance.md). Its usage, help and errors are the same.
ALONE = {"audit": _add_audit}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The argument parser for every subcommand (given ``command``, one of ``ALONE``: a
    parser of that subcommand only, the same as the full parser for its arguments)."""
    parser = argparse.ArgumentParser(
        prog="ledger",
        description="A permissioned BFT ledger for industrial data: keys, audits, receipts.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    if command is not None:
        ALONE[command](sub)
        return parser
    from node.cluster import DEMO_TYPES  # `cluster init --types`' help lists them

    p = sub.add_parser("keygen", help="write a new Ed25519 key file and print its public key",
                       description="Write a new Ed25519 private key as PEM PKCS#8 to OUT "
                       "(mode 0600; never overwrites) and print its public key as hex.")
    p.add_argument("out", metavar="OUT.pem", help="where to write the key")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--encrypt", action="store_true", help="ask for a passphrase on the terminal")
    g.add_argument("--passphrase-env", metavar="VAR",
                   help="encrypt with the passphrase in environment variable VAR")
    p.set_defaults(func=cmd_keygen)

    _add_audit(sub)

    p = sub.add_parser(
        "export", help="write a whole chain to one bundle file, or its records as Parquet",
        description="Write genesis.json and every block's exact bytes as one export bundle "
        "(SPEC section 12), streamed to OUT.tmp and renamed to OUT when complete. Check "
        "it with `ledger audit --file OUT --genesis G`. With --format parquet, write the "
        "committed records as Parquet files under the folder OUT, partitioned by day "
        "(OUT/date=YYYY-MM-DD/part-FIRST-LAST.parquet) for DuckDB, Spark or Trino; a later "
        "run into the same folder appends only new heights (docs/analytics.md). Needs the "
        "analytics extra: pip install 'ledger[analytics]'.")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--node", metavar="URL", help="a node's API")
    src.add_argument("--db", metavar="PATH", type=Path, help="a node's SQLite store")
    p.add_argument("--genesis", metavar="G", type=Path,
                   help="the chain's genesis.json (required with --db)")
    p.add_argument("--out", required=True, metavar="OUT", type=Path,
                   help="the bundle file (--format parquet: the folder)")
    p.add_argument("--format", choices=("bundle", "parquet"), default="bundle",
                   help="bundle: one file, the chain for the long term (default); parquet: "
                   "the records for analytics engines, appended incrementally")
    p.add_argument("--identity", type=Path, metavar="PEM",
                   help="with --node: sign reads with this member key (RFC 9421); the "
                   "bundle's payloads section holds the sealed payloads the node's read "
                   "policies serve it (with --db: every pair the store holds)")
    p.add_argument("--ca", type=Path, help="CA file for an https node (or LEDGER_CA)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser(
        "verify", help="verify a record's receipt offline",
        description="Verify a receipt (GET /v1/records/{id}/receipt) with nothing but "
        "genesis.json: the record's id and signature, its authorisation, its audit path to "
        "the block's records_root, the configuration changes below it (config_proof), the "
        "block's commit certificate, and any witness cosignatures it lists. Exit 0 iff "
        "valid. docs/audit.md says what --witnesses and --checkpoint guard against.")
    p.add_argument("receipt", metavar="RECEIPT.json", type=Path)
    p.add_argument("--genesis", required=True, metavar="G", type=Path,
                   help="the chain's genesis.json")
    p.add_argument("--witnesses", type=_witness_count, default=0, metavar="K",
                   help="require at least K distinct witnesses of the configuration governing "
                   "the receipt's height to have cosigned its block (SPEC section 11); any "
                   "bad cosignature listed fails whatever K")
    p.add_argument("--checkpoint", type=_trusted_checkpoint, action="append",
                   metavar="HEIGHT:BLOCK_HASH",
                   help="a block you already trust (repeatable): the receipt's block, or a "
                   "config_proof step's, at HEIGHT must be that block; a HEIGHT the receipt "
                   "shows no header for cannot be checked offline and fails")
    p.set_defaults(func=cmd_verify)

    cluster = sub.add_parser("cluster", help="make and run a local cluster",
                             description="Make and run a local cluster of validator nodes.")
    csub = cluster.add_subparsers(dest="cluster_command", required=True, metavar="COMMAND")
    p = csub.add_parser("init", help="write genesis, node folders and a client key",
                        description="Write DIR/genesis.json, DIR/node{i}/ (config.json and "
                        "node.pem of node i: API on 127.0.0.1:P+i, peers on P+100+i) and a "
                        "client key DIR/clients/demo.pem authorised for every record type "
                        "(SPEC section 8), or, with --types, for the listed types only (a "
                        "mistyped type is then refused, listing them; make run uses --types "
                        "example). Three organisations (demo-org, supplier, carrier) each have "
                        "an admin key DIR/clients/ORG-admin.pem; two of them approve a "
                        "configuration change (docs/governance.md). --genesis-template takes "
                        "organisations and policies from a file instead.")
    p.add_argument("dir", metavar="DIR", type=Path)
    p.add_argument("--nodes", type=int, default=None,
                   help="validators (default 4; with --hosts, one per host)")
    p.add_argument("--base-port", type=int, default=8000, help="first API port (default 8000)")
    p.add_argument("--chain-id", default="demo", help="chain id (default demo)")
    p.add_argument("--tls", action="store_true",
                   help="make a cluster CA and node certificates: TLS on peer links and API "
                   "(on by default with --hosts/--inventory)")
    p.add_argument("--hosts", metavar="HOST1,HOST2,...",
                   help="a multi-host cluster: one validator per host (name or IP), each "
                   "in a self-contained folder DIR/node{i}-HOST to copy to that host, "
                   "binding HOST:P (API) and HOST:P+100 (peers) and advertised there; TLS "
                   "on (the CA key stays in DIR/tls); docs/deploy.md")
    p.add_argument("--inventory", metavar="FILE", type=Path,
                   help="as --hosts, from a JSON file: [{\"address\", \"name\"?, "
                   "\"api_port\"?, \"p2p_port\"?, \"bind\"?}, ...] (docs/deploy.md)")
    p.add_argument("--bind", metavar="ADDRESS",
                   help="with --hosts/--inventory: the address every node binds instead of "
                   "its host's (0.0.0.0: every interface)")
    p.add_argument("--no-tls", action="store_true",
                   help="with --hosts/--inventory: no TLS (a warning; not for a real network)")
    p.add_argument("--types", metavar="T1,T2,...", type=_type_list,
                   help="authorise the demo key for these record types only, instead of "
                   "every type; 'example' names the six of examples/genesis.example.json ("
                   + ", ".join(DEMO_TYPES) + ")")
    p.add_argument("--genesis-template", metavar="FILE", type=Path,
                   help="take the chain id, organisations, policies, read policies, "
                   "governance and consensus section from FILE (e.g. "
                   "examples/genesis.example.json; see docs/genesis.md); "
                   "each member gets a new key in DIR/clients/ORG.MEMBER.pem")
    p.add_argument("--witnesses", type=int, default=0, metavar="N",
                   help="also write N witness keys DIR/witnesses/witness{i}.pem, listed in "
                   "genesis 'witnesses' (run them with `ledger witness`; docs/witness.md)")
    p.add_argument("--k8s", action="store_true",
                   help="also write DIR/k8s/: Kubernetes manifests (a StatefulSet, key Secret "
                   "and config per validator, genesis ConfigMap, Services, a quorum-keeping "
                   "PodDisruptionBudget); genesis then advertises each validator at its pod's "
                   "DNS name NAME-nodeI-0.NAME-p2p (docs/deploy.md)")
    p.add_argument("--k8s-name", default="ledger", metavar="NAME",
                   help="with --k8s: prefix of every object's name (default ledger)")
    p.add_argument("--k8s-image", default="ledger:0.1.0", metavar="IMAGE",
                   help="with --k8s: the container image (default ledger:0.1.0, built from "
                   "the Dockerfile)")
    p.add_argument("--k8s-storage", default="10Gi", metavar="SIZE",
                   help="with --k8s: each validator's volume claim (default 10Gi)")
    p.set_defaults(func=cmd_cluster_init)
    p = csub.add_parser("up", help="run every node of DIR in the foreground",
                        description="Run every node of DIR, prefixing each node's log lines; "
                        "Ctrl-C or SIGTERM stops them all cleanly. Every API and peer port is "
                        "checked first: one taken is an error (exit 2). A node that exits is "
                        "reported and the others keep running, unless --stop-on-exit.")
    p.add_argument("dir", metavar="DIR", type=Path)
    p.add_argument("--stop-on-exit", action="store_true",
                   help="stop every node (exit 1) when one exits, instead of keeping the "
                   "others running")
    p.set_defaults(func=cmd_cluster_up)

    node = sub.add_parser("node", help="run one node", description="Run one validator node.")
    nsub = node.add_subparsers(dest="node_command", required=True, metavar="COMMAND")
    p = nsub.add_parser("run", help="run the node in DIR (its config.json and key)",
                        description="Run the node whose config.json and key are in DIR, "
                        "until SIGINT or SIGTERM. LEDGER_KEY_PASSPHRASE decrypts its key.")
    p.add_argument("dir", metavar="DIR", type=Path)
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning"])
    p.set_defaults(func=cmd_node_run)

    p = nsub.add_parser("init", help="make a node directory to join a running chain",
                        description="Make DIR for a validator that joins a running chain: "
                        "a copy of genesis, config.json and a key (new, its public key "
                        "printed, unless --key). Run it with 'ledger node run DIR': it "
                        "syncs from genesis and votes from the height whose configuration "
                        "lists its key. Refuses a DIR that already holds a node.")
    p.add_argument("dir", metavar="DIR", type=Path)
    p.add_argument("--genesis", type=Path, required=True, metavar="G",
                   help="the chain's genesis.json")
    p.add_argument("--api", required=True, metavar="HOST:PORT",
                   help="where this node serves its HTTP API")
    p.add_argument("--p2p", required=True, metavar="HOST:PORT",
                   help="where this node listens for its peers")
    p.add_argument("--key", type=Path, metavar="PEM",
                   help="an existing key file to use (copied as it is)")
    p.add_argument("--bundle", type=Path, metavar="FILE",
                   help="start from this export bundle (ledger export): its genesis must be "
                   "G's bytes; every block is verified as by `ledger audit --file` and "
                   "written to the node's store, so the node syncs only what is newer")
    p.add_argument("--workers", type=int, default=0,
                   help="with --bundle: processes checking signatures (default: cores)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_node_init)

    p = nsub.add_parser("restore", help="fill a stopped node's store from an export bundle",
                        description="Verify an export bundle as `ledger audit --file` does and "
                        "write its blocks into the store of the node in DIR (a node whose "
                        "store was lost, or an import that was interrupted: the blocks the "
                        "store holds must be the bundle's, and only the others are written). "
                        "The node must be stopped. Prints 'height N: <reason>' and exits 1 "
                        "at a bad block, keeping the good ones before it.")
    p.add_argument("dir", metavar="DIR", type=Path)
    p.add_argument("--bundle", type=Path, required=True, metavar="FILE",
                   help="the export bundle; its genesis must be DIR/genesis.json's bytes")
    p.add_argument("--workers", type=int, default=0,
                   help="processes checking signatures (default: one per core)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_node_restore)

    p = nsub.add_parser("check", help="check a node's store offline",
                        description="Check the store of the node in DIR without running it: "
                        "tip certificate, hash links, every index row against its record, "
                        "then a full audit. Prints 'height N: <reason>' and exits 1 on the "
                        "first problem.")
    p.add_argument("dir", metavar="DIR", type=Path)
    p.add_argument("--workers", type=int, default=0, help="audit processes (default: cores)")
    p.set_defaults(func=cmd_node_check)

    config = sub.add_parser("config", help="the chain's configuration (SPEC section 9)",
                            description="Read and change the configuration that governs the chain: "
                            "show, then propose, approve, submit (docs/governance.md).")
    cfsub = config.add_subparsers(dest="config_command", required=True, metavar="COMMAND")
    p = cfsub.add_parser("show", help="print the configuration in force as JSON",
                         description="Print the configuration that governs the next height "
                         "(or --version V) as JSON in genesis.json's shapes, without chain_id; "
                         "its version and first height go to stderr.")
    p.add_argument("--node", required=True, metavar="URL", help="the node's API")
    p.add_argument("--version", type=int, metavar="V", help="a past version (0 is genesis)")
    p.add_argument("--ca", type=Path, help="CA file for an https node (or LEDGER_CA)")
    p.set_defaults(func=cmd_config_show)
    from node.governance import add_commands  # propose, approve, submit; redact (SPEC 8)

    add_commands(sub, cfsub)
    from node.logcli import add_commands as add_log_commands  # log checkpoint|prove|...

    add_log_commands(sub)
    from node.historycli import add_commands as add_history_command  # ledger history

    add_history_command(sub)

    from node.witnesscli import add_commands as add_witness_commands  # witness (SPEC 8, 11)

    add_witness_commands(sub)

    p = sub.add_parser("submit", help="sign and submit one record",
                       description="Sign one record with --identity and submit it; print its "
                       "id (and, with --wait, the height it was committed at).")
    p.add_argument("--node", metavar="URL[,URL...]", help="the node's API (required unless "
                   "--print-envelope is given with --chain); several, comma-separated: "
                   "when one is down, times out or answers 5xx, the same signed records go "
                   "to the next (a record it already holds counts as accepted, once)")
    p.add_argument("--identity", required=True, metavar="PEM", type=Path,
                   help="the client's key file")
    p.add_argument("--type", required=True, help="record type, e.g. sensor.reading")
    p.add_argument("--subject", required=True, help="e.g. plant-7/line-3/temp")
    p.add_argument("--payload", required=True, metavar="JSON", help="the payload, as JSON")
    p.add_argument("--wait", action="store_true", help="wait until the record is committed")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds to wait (default 30)")
    p.add_argument("--nonce", type=int, help="nonce (default: random)")
    p.add_argument("--chain", help="chain id (default: ask the node)")
    p.add_argument("--ca", type=Path, help="CA file for an https node (or LEDGER_CA)")
    p.add_argument("--sealed", action="store_true",
                   help="seal the payload (SPEC section 10): only its salted digest goes on "
                   "the chain; the payload is sent beside it, served under the read "
                   "policies, and can be redacted")
    p.add_argument("--print-envelope", action="store_true",
                   help="sign only: print 'id HEX' and 'envelope BASE64' and submit nothing "
                   "(POST it yourself, e.g. with curl: see docs/api.md)")
    p.set_defaults(func=cmd_submit)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``ledger`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    alone = argv[0] if argv and argv[0] in ALONE else None
    args = build_parser(alone).parse_args(argv)
    try:
        code: int = args.func(args)
    except (CommandError, LedgerError) as exc:  # NodeError included: its message has the hint
        print(f"ledger: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("ledger: interrupted", file=sys.stderr)
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
