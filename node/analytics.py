"""Analytics export: the committed records as Parquet files (``ledger export --format
parquet --out DIR``), for DuckDB, Spark, Trino or pandas (docs/analytics.md).

One row per committed record, ``ledger.config`` and ``ledger.redact`` records included.
Files are Hive-partitioned by the UTC day of the block time, with heights in their names:
``DIR/date=YYYY-MM-DD/part-<first height>-<last height>.parquet`` (12 digits each, so names
sort by height). A part holds whole blocks of one day, at most ``PART_ROWS`` records
(a block is never split). ``DIR/_ledger_export.json`` (the manifest; names starting with
``_`` or ``.`` are skipped by Spark, Trino and a ``*.parquet`` glob) says up to which height
and block hash the folder holds the chain; a later run checks the source still has that
block there (else ``height N: ...``) and appends only new heights, as new part files.

Crash safety: rows stream to a hidden NDJSON file, DuckDB turns it into a hidden
``.part-*.tmp``, which is fsynced and renamed into place, and only then the manifest is
replaced (``write_durably``), after every part. A crash leaves the folder readable: whole part
files only, and at most one part above the manifest's height, which the next run deletes
before it writes that range again.

Library: DuckDB (``pip install 'ledger[analytics]'``), imported only here and only when a
Parquet export runs: a validator node never loads it. One library writes the files and reads
them back (tests, docs examples); its wheel is about half pyarrow's and needs no numpy; its
``read_json`` → ``COPY ... (FORMAT parquet)`` streams, so memory stays bounded by DuckDB's
own buffers, not by the chain or by a part's size.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ledger.blocks import Block
from ledger.config import ConfigHistory
from ledger.encoding import b64decode, b64encode
from ledger.errors import AuditError, LedgerError
from ledger.genesis import Genesis
from ledger.jsonview import jsonable
from ledger.records import Record
from ledger.store.base import ConfigChange, block_change, next_config, rebuild_history
from node.files import write_durably

INSTALL_HINT = "parquet export needs the analytics extra: pip install 'ledger[analytics]'"
MANIFEST = "_ledger_export.json"
FORMAT, VERSION = "ledger-parquet", 1
#: Records one part file holds at most, and bytes of rows (as NDJSON, the payload JSON
#: included) it is made from: whole blocks, so one block may take a part beyond either.
#: With DuckDB's memory limit these bound the export's memory (docs/analytics.md).
PART_ROWS = 500_000
PART_BYTES = 128 << 20
#: DuckDB's memory limit while it writes a part (a 1M-record export peaks at ~0.3 GB RSS).
DUCKDB_MEMORY = "256MB"
#: The longest row DuckDB's JSON reader takes: a 1 MiB ``ledger.config`` payload is
#: about 1.4 MB of base64 in its row (the reader's buffers grow with this).
MAX_ROW_JSON = 16 << 20
#: A payload map's top-level key becomes column ``p_<key>`` iff it matches this: lowercase
#: ASCII, so no two keys of one file map to columns that differ only in case (DuckDB, Spark
#: and Trino match column names case-insensitively).
NUMERIC_KEY = re.compile(r"[a-z0-9_]{1,64}")
NUMERIC_PREFIX = "p_"
#: ``p_`` columns one part file holds at most (the first keys met); the rest stay in
#: ``payload`` only, so a chain of ever-new keys cannot make files of thousands of columns.
MAX_NUMERIC_COLUMNS = 256
#: The columns every file has, in order, with their DuckDB (and so Parquet) types.
COLUMNS: tuple[tuple[str, str], ...] = (
    ("id", "VARCHAR"),            # record id, lowercase hex
    ("height", "BIGINT"),
    ("index", "INTEGER"),         # position in the block
    ("block_time", "TIMESTAMP"),  # the block header's time, UTC
    ("type", "VARCHAR"),
    ("subject", "VARCHAR"),
    ("signer", "VARCHAR"),        # public key, lowercase hex
    ("organization", "VARCHAR"),  # the signer's, by the configuration governing the height
    ("member", "VARCHAR"),        # its member name there (NULL if it is no member)
    ("ts", "BIGINT"),             # the client's clock, ms since the epoch
    ("nonce", "UBIGINT"),         # 0..2^64-1
    ("payload", "VARCHAR"),       # JSON text (the API's view); NULL if sealed
    ("payload_digest", "VARCHAR"),  # hex, sealed records only
)
_PART_NAME = re.compile(r"part-(\d{12})-(\d{12})\.parquet")


class AnalyticsUnavailable(LedgerError):
    """DuckDB (the ``analytics`` extra) is not installed."""

    code = "analytics_unavailable"


class ExportFolderError(LedgerError):
    """The output folder cannot take this export (another chain, a bad manifest)."""

    code = "bad_export_folder"


def load_duckdb() -> Any:
    """The ``duckdb`` module, or AnalyticsUnavailable with the one-line install hint."""
    try:
        import duckdb
    except ImportError:
        raise AnalyticsUnavailable(INSTALL_HINT) from None
    return duckdb


# -- rows ----------------------------------------------------------------------------------

def numeric_fields(payload: Any) -> dict[str, float]:
    """The ``p_<key>`` columns of a payload: each top-level str key of a map payload that
    matches NUMERIC_KEY and holds an int or a finite float (not a bool), as a double."""
    out: dict[str, float] = {}
    if type(payload) is not dict:
        return out
    for key, value in payload.items():
        t = type(value)
        if (t is int or (t is float and math.isfinite(value))) and type(key) is str \
                and NUMERIC_KEY.fullmatch(key):
            out[NUMERIC_PREFIX + key] = float(value)
    return out


def record_row(record: Record, height: int, index: int, block_time_ms: int,
               history: ConfigHistory) -> dict[str, Any]:
    """One record as a row (block_time still in ms; the COPY makes it a TIMESTAMP)."""
    body = record.body
    member = history.at(height).members.get(body.signer)
    row: dict[str, Any] = {
        "id": record.id.hex(), "height": height, "index": index, "block_time": block_time_ms,
        "type": body.type, "subject": body.subject, "signer": body.signer.hex(),
        "organization": member.organization if member else None,
        "member": member.name if member else None, "ts": body.ts, "nonce": body.nonce,
        "payload": None, "payload_digest": None,
    }
    if body.sealed:
        assert body.payload_digest is not None
        row["payload_digest"] = body.payload_digest.hex()
    else:
        row["payload"] = json.dumps(jsonable(body.payload), ensure_ascii=False,
                                    separators=(",", ":"), allow_nan=False)
        row.update(numeric_fields(body.payload))
    return row


def day_of(height: int, time_ms: int) -> str:
    """The partition (UTC day, ``YYYY-MM-DD``) of a block time."""
    try:
        return datetime.fromtimestamp(time_ms // 1000, UTC).strftime("%Y-%m-%d")
    except (OverflowError, OSError, ValueError) as exc:
        raise AuditError(height, f"block time {time_ms} ms is out of range ({exc})") from exc


# -- the manifest ----------------------------------------------------------------------------

@dataclass
class Manifest:
    """What an export folder holds: the chain up to ``height`` (block ``block_hash``),
    ``records`` rows, and the configuration changes met on the way (to name members of
    later heights without re-reading the chain)."""

    chain_id: str
    genesis_hash: bytes
    height: int = 0
    block_hash: bytes = b""
    records: int = 0
    changes: list[ConfigChange] = field(default_factory=list)

    def to_bytes(self) -> bytes:
        doc = {"format": FORMAT, "version": VERSION, "chain_id": self.chain_id,
               "genesis_hash": self.genesis_hash.hex(), "height": self.height,
               "block_hash": self.block_hash.hex(), "records": self.records,
               "partitioning": "date=YYYY-MM-DD (UTC day of the block time)",
               "config_changes": [{"height": c.height, "index": c.index,
                                   "change": b64encode(c.change)} for c in self.changes]}
        return json.dumps(doc, indent=1).encode() + b"\n"

    @classmethod
    def from_bytes(cls, data: bytes, where: Path) -> Manifest:
        try:
            doc = json.loads(data)
            if doc.get("format") != FORMAT or doc.get("version") != VERSION:
                raise ValueError(f"not a {FORMAT} v{VERSION} manifest")
            changes = [ConfigChange(int(c["height"]), int(c["index"]),
                                    b64decode(c["change"], "config_changes.change"))
                       for c in doc["config_changes"]]
            return cls(str(doc["chain_id"]), bytes.fromhex(doc["genesis_hash"]),
                       int(doc["height"]), bytes.fromhex(doc["block_hash"]),
                       int(doc["records"]), changes)
        except (ValueError, KeyError, TypeError, AttributeError, LedgerError) as exc:
            raise ExportFolderError(f"{where}: unreadable export manifest ({exc})") from exc


# -- the export ------------------------------------------------------------------------------

@dataclass
class ExportResult:
    """What one run added: heights ``first..height``, ``records`` rows in ``files``."""

    first: int
    height: int
    block_hash: bytes
    records: int
    total_records: int
    files: list[Path]


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sql_str(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


class ParquetExport:
    """An export folder opened for one run: ``height`` is what it already holds (0 if new);
    ``check_source`` then ``run`` append the source's blocks ``height+1..tip``."""

    def __init__(self, out: Path, genesis: Genesis, part_rows: int | None = None) -> None:
        self.duckdb = load_duckdb()
        self.out, self.genesis = Path(out), genesis
        self.part_rows = PART_ROWS if part_rows is None else part_rows
        self.part_bytes = PART_BYTES
        self.manifest_path = self.out / MANIFEST
        if self.out.exists() and not self.out.is_dir():
            raise ExportFolderError(f"{self.out}: not a folder")
        self.out.mkdir(parents=True, exist_ok=True)
        # One run at a time per folder, held until close() (or the process ends).
        self._lock = open(self.out / ".lock", "a")  # noqa: SIM115
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            self.manifest = self._load()
        except BlockingIOError:
            self._lock.close()
            raise ExportFolderError(f"{self.out}: another export is writing into this "
                                    f"folder") from None
        except BaseException:
            self._lock.close()
            raise

    def close(self) -> None:
        """Release the folder (the lock)."""
        self._lock.close()

    def __enter__(self) -> ParquetExport:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def height(self) -> int:
        """The last height the folder holds (0: none)."""
        return self.manifest.height

    def _load(self) -> Manifest:
        try:
            data = self.manifest_path.read_bytes()
        except FileNotFoundError:
            if self.out.is_dir() and any(self._parts()):
                raise ExportFolderError(
                    f"{self.out}: holds part files but no {MANIFEST}; export into an empty "
                    f"or new folder") from None
            return Manifest(self.genesis.chain_id, self.genesis.hash)
        except OSError as exc:
            raise ExportFolderError(f"{self.manifest_path}: cannot read ({exc.strerror})") \
                from exc
        manifest = Manifest.from_bytes(data, self.manifest_path)
        if manifest.genesis_hash != self.genesis.hash:
            raise ExportFolderError(
                f"{self.out}: holds an export of another chain (genesis "
                f"{manifest.genesis_hash.hex()}, this one's is {self.genesis.hash.hex()})")
        return manifest

    def _parts(self) -> Iterable[tuple[Path, int, int]]:
        for path in self.out.glob("date=*/part-*.parquet"):
            m = _PART_NAME.fullmatch(path.name)
            if m:
                yield path, int(m.group(1)), int(m.group(2))

    def check_source(self, tip: int, block_at: Callable[[int], bytes | None]) -> None:
        """AuditError (``height N: ...``) unless the source still holds the exported chain:
        at least ``height`` blocks, block ``height`` with the saved hash."""
        saved = self.manifest.height
        if saved == 0:
            return
        if tip < saved:
            raise AuditError(tip + 1, f"the source has {tip} blocks; {self.out} already holds "
                             f"the chain up to height {saved}")
        data = block_at(saved)
        try:
            served = None if data is None else Block.from_wire(data).hash
        except LedgerError as exc:
            raise AuditError(saved, f"the source's block does not decode ({exc})") from exc
        if served != self.manifest.block_hash:
            raise AuditError(saved, f"the source's block is not the one exported to {self.out} "
                             f"(hash {served.hex() if served else 'missing'}, exported "
                             f"{self.manifest.block_hash.hex()}): the source serves another "
                             f"history; export it to a new folder")

    def _clean(self) -> None:
        """Remove what a crashed run left: hidden temporary files, and parts above the
        manifest's height (written, renamed, but not yet recorded)."""
        for path in [*self.out.glob(".rows-*.ndjson"), *self.out.glob("date=*/.part-*.tmp")]:
            path.unlink(missing_ok=True)
        for path, first, _ in list(self._parts()):
            if first > self.manifest.height:
                path.unlink()

    def run(self, blocks: Iterable[bytes | None], tip: int,
            on_block: Callable[[], None] | None = None) -> ExportResult:
        """Export blocks ``height+1..tip`` (``blocks`` yields their bytes in order)."""
        self._clean()
        m = self.manifest
        first = m.height + 1
        history = rebuild_history(self.genesis.config, m.changes)
        prev_hash = m.block_hash if m.height else self.genesis.hash
        part = _Part(self, history)
        added, files = 0, []
        height = m.height
        try:
            for data in blocks:
                if height >= tip:
                    break
                height += 1
                block = self._decode(height, data, prev_hash)
                day = day_of(height, block.header.time_ms)
                if part.rows and (day != part.day
                                  or part.rows + len(block.records) > self.part_rows
                                  or part.bytes + len(data or b"") > self.part_bytes):
                    files.append(part.flush(height - 1, prev_hash))
                    added += part.rows
                    part = _Part(self, history)
                part.add(block, day)
                change = block_change(block)
                if change is not None:
                    new = next_config(history, change)
                    assert new is not None
                    history.append(change.height, new)
                    m.changes.append(change)
                prev_hash = block.hash
                if on_block is not None:
                    on_block()
            if height < tip:
                raise AuditError(height + 1, "the source ended before its tip: block missing")
            if part.rows:
                files.append(part.flush(height, prev_hash))
                added += part.rows
            elif height > m.height:
                self._commit(height, prev_hash, 0)
        finally:
            part.discard()
        return ExportResult(first, height, prev_hash, added, m.records, files)

    def _decode(self, height: int, data: bytes | None, prev_hash: bytes) -> Block:
        if data is None:
            raise AuditError(height, "block is missing at the source")
        try:
            block = Block.from_wire(data)
        except LedgerError as exc:
            raise AuditError(height, f"block does not decode ({exc})") from exc
        if block.height != height:
            raise AuditError(height, f"the source served block {block.height} here")
        if block.header.prev_hash != prev_hash:
            raise AuditError(height, "the block does not link to the one before it "
                             "(prev_hash differs): the source serves another history")
        return block

    def _commit(self, height: int, block_hash: bytes, rows: int) -> None:
        """Record durably that the folder holds the chain up to ``height``."""
        m = self.manifest
        m.height, m.block_hash, m.records = height, block_hash, m.records + rows
        write_durably(self.manifest_path, m.to_bytes())


class _Part:
    """The rows of one part file being gathered: streamed to a hidden NDJSON file, then
    turned into Parquet by DuckDB, renamed into place, and the manifest advanced."""

    def __init__(self, export: ParquetExport, history: ConfigHistory) -> None:
        self.export, self.history = export, history
        self.rows, self.bytes, self.day, self.first = 0, 0, "", 0
        self.numeric: dict[str, None] = {}
        self.path = export.out / f".rows-{os.getpid()}.ndjson"
        self.file = open(self.path, "w", encoding="utf-8")  # noqa: SIM115 (closed by flush)

    def add(self, block: Block, day: str) -> None:
        if not block.records:
            return
        if not self.rows:
            self.day, self.first = day, block.height
        write, time_ms, height = self.file.write, block.header.time_ms, block.height
        numeric = self.numeric
        for index, record in enumerate(block.records):
            row = record_row(record, height, index, time_ms, self.history)
            for key in [k for k in row if k.startswith(NUMERIC_PREFIX)]:
                if key not in numeric:
                    if len(numeric) >= MAX_NUMERIC_COLUMNS:
                        del row[key]
                        continue
                    numeric[key] = None
            line = json.dumps(row, ensure_ascii=False, separators=(",", ":"))
            write(line)
            write("\n")
            self.bytes += len(line) + 1
        self.rows += len(block.records)

    def flush(self, last: int, block_hash: bytes) -> Path:
        """Write the part for heights ``first..last`` and advance the manifest to ``last``."""
        self.file.close()
        export = self.export
        folder = export.out / f"date={self.day}"
        new_folder = not folder.exists()
        folder.mkdir(exist_ok=True)
        name = f"part-{self.first:012d}-{last:012d}.parquet"
        final, tmp = folder / name, folder / f".{name}.{os.getpid()}.tmp"
        types = dict(COLUMNS) | {"block_time": "BIGINT"}  # ms in the rows; see select
        types |= {k: "DOUBLE" for k in sorted(self.numeric)}
        columns = "{" + ", ".join(f"{_sql_str(k)}: {_sql_str(t)}" for k, t in types.items()) + "}"
        select = ", ".join(
            "epoch_ms(block_time) AS block_time" if k == "block_time" else f'"{k}"'
            for k in types)
        con = export.duckdb.connect()
        try:
            # One thread and a small limit: the COPY is a small share of the run (the
            # rows are made in Python), and the part bounds what it reads.
            con.execute("SET threads = 1")
            con.execute(f"SET memory_limit = '{DUCKDB_MEMORY}'")
            con.execute("SET preserve_insertion_order = true")
            con.execute(
                f"COPY (SELECT {select} FROM read_json({_sql_str(str(self.path))}, "
                f"format = 'newline_delimited', columns = {columns}, "
                f"maximum_object_size = {MAX_ROW_JSON})) "
                f"TO {_sql_str(str(tmp))} (FORMAT parquet, COMPRESSION zstd)")
        except export.duckdb.Error as exc:
            tmp.unlink(missing_ok=True)
            raise LedgerError(f"DuckDB could not write {final} ({exc})") from exc
        finally:
            con.close()
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, final)
        _fsync_dir(folder)
        if new_folder:
            _fsync_dir(export.out)
        self.path.unlink(missing_ok=True)
        export._commit(last, block_hash, self.rows)
        return final

    def discard(self) -> None:
        if not self.file.closed:
            self.file.close()
        self.path.unlink(missing_ok=True)
