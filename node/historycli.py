"""``ledger history``: every committed record of one subject, page after page, through the
SDK's ``subject_history`` walk (node/client.py): oldest first (``--order desc``: newest
first), optionally within a block-time range, and with ``--verify --genesis G`` each record's
inclusion in the log proved against a checkpoint verified from genesis alone.

One line per record on stdout (``--json``: one JSON object per line); progress and the
closing summary on stderr. Exit 0; 1 with ``invalid: <reason>`` when a proof or a record
does not check; 2 when the node could not be asked (as every ``ledger`` command).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ledger.encoding import b64decode
from ledger.errors import DecodeError, LedgerError, LogProofError
from ledger.genesis import Genesis
from ledger.jsonview import jsonable
from ledger.records import Record
from node.client import LedgerClient, NodeError, decode_payload, served_pair

EXIT_OK, EXIT_INVALID = 0, 1
PROGRESS_EVERY = 1000  # records between two progress lines on a terminal


def payload_text(item: dict[str, Any]) -> str:
    """A record's payload as one line of JSON: an inline record's, a sealed record's value
    as served (the history walk checked it against its digest), or what kept it from this
    reader: ``<sealed: withheld by read policy>``, ``<sealed: missing>``,
    ``<sealed: redacted at height H>``."""
    if "payload_digest" not in item:
        value = item.get("payload")
    else:
        status = item.get("payload_status")
        if status != "served" or "payload" not in item:
            if status == "redacted":
                return f"<sealed: redacted at height {item.get('redacted', {}).get('height')}>"
            return ("<sealed: withheld by read policy>" if status == "withheld"
                    else f"<sealed: {status or 'not served'}>")
        try:
            pair = served_pair(item)
        except LedgerError as exc:
            return f"<sealed: {exc}>"
        value = jsonable(decode_payload(pair)) if pair is not None else None
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def record_line(item: dict[str, Any]) -> str:
    """``height:index  log L  ts T  type  id  payload``: one record on one line."""
    payload = payload_text(item)
    return (f"{item.get('height')}:{item.get('index')}  log {item.get('log_index')}  "
            f"ts {item.get('ts')}  {item.get('type')}  {item.get('id')}  {payload}")


def cmd_history(args: argparse.Namespace) -> int:
    """Print a subject's committed records; with --verify, each proved in the log."""
    from node.cli import CommandError, _ca, _reader

    if args.verify and args.genesis is None:
        raise CommandError("--verify needs --genesis G (the checkpoint is verified from it)")
    if args.page_size is not None and not 1 <= args.page_size <= 1000:
        raise CommandError("--page-size must be within 1..1000")
    tty = sys.stderr.isatty()
    count = 0
    with LedgerClient(args.node, verify=_ca(args), read_identity=_reader(args)) as client:
        checkpoint = None
        try:
            if args.verify:
                genesis = Genesis.load(args.genesis)
                try:  # the checkpoint itself, not the node's word (its status) for a height
                    checkpoint = client.verified_checkpoint(genesis)
                except NodeError as exc:
                    if (exc.status, exc.problem_code) != (404, "not_found"):
                        raise
            walk: Iterator[dict[str, Any]] = iter(()) if args.verify and checkpoint is None \
                else client.subject_history(
                    args.subject, order=args.order, since=args.since, until=args.until,
                    checkpoint=checkpoint, limit=args.page_size or 100)
            for item in walk:
                if args.json:
                    print(json.dumps({k: v for k, v in item.items() if k != "proof"},
                                     separators=(",", ":"), ensure_ascii=False))
                else:
                    print(record_line(item))
                count += 1
                if tty and count % PROGRESS_EVERY == 0:
                    print(f"\r{count} records…", end="", file=sys.stderr, flush=True)
        except LogProofError as exc:
            print(f"{chr(10) if tty and count >= PROGRESS_EVERY else ''}invalid: {exc}",
                  file=sys.stderr)
            return EXIT_INVALID
        except BrokenPipeError:  # `| head`: the reader has what it wanted
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return EXIT_OK
    if tty and count >= PROGRESS_EVERY:
        print(file=sys.stderr)
    what = f"{count} record{'s' if count != 1 else ''} of {args.subject!r}"
    if checkpoint is not None:
        print(f"valid: {what}, each proved in the log of {checkpoint.log_size} records of "
              f"the checkpoint at height {checkpoint.height} (block "
              f"{checkpoint.block_hash.hex()})", file=sys.stderr)
    elif args.verify:
        print(f"valid: {what}: the chain has no block yet", file=sys.stderr)
    else:
        print(what, file=sys.stderr)
    return EXIT_OK


def add_commands(sub: Any) -> None:
    """Add ``ledger history`` to the ``ledger`` parser's subcommands."""
    p = sub.add_parser(
        "history", help="list a subject's committed records (optionally proved in the log)",
        description="Print every committed record of --subject, one per line, oldest first "
        "(--order desc: newest first), read as of the block of the first page (records "
        "committed meanwhile are not listed). --since/--until keep the records of blocks "
        "whose time is within the range (milliseconds since the epoch, or RFC 3339 with an "
        "offset). With --verify --genesis G, every record's inclusion in the log is proved "
        "against the tip's checkpoint verified from genesis (RFC 9162); the first that "
        "fails prints 'invalid: <reason>' and exits 1.")
    p.add_argument("--node", required=True, metavar="URL", help="the node's API")
    p.add_argument("--subject", required=True, help="e.g. plant-7/line-3/temp")
    p.add_argument("--order", choices=("asc", "desc"), default="asc",
                   help="asc: oldest first (default); desc: newest first")
    p.add_argument("--since", metavar="TIME", help="block time from (ms, or RFC 3339)")
    p.add_argument("--until", metavar="TIME", help="block time to, inclusive")
    p.add_argument("--verify", action="store_true",
                   help="prove every record in the log of a verified checkpoint")
    p.add_argument("--genesis", type=Path, metavar="G", help="genesis.json (for --verify)")
    p.add_argument("--json", action="store_true",
                   help="one JSON object per line (the API's record view)")
    p.add_argument("--page-size", type=int, metavar="N",
                   help="records per request, 1..1000 (default 100; proofs: at most 100)")
    p.add_argument("--identity", type=Path, metavar="PEM", help=IDENTITY_HELP)
    p.add_argument("--ca", type=Path, help="CA file for an https node (or LEDGER_CA)")
    p.set_defaults(func=cmd_history)

    record = sub.add_parser("record", help="read one record",
                            description="Read records by id.")
    rsub = record.add_subparsers(dest="record_command", required=True, metavar="COMMAND")
    p = rsub.add_parser(
        "get", help="print one record (pending or committed) as JSON",
        description="Print GET /v1/records/ID as JSON. A sealed record's payload is served "
        "only to a reader its type's read policy allows: sign the request with --identity. "
        "A served payload is checked against the record's payload_digest first (exit 1 "
        "with 'invalid: <reason>' if it does not match). --payload prints only the "
        "payload's value (exit 1 when the node does not serve it: withheld, missing or "
        "redacted).")
    p.add_argument("id", metavar="ID", help="the record id (64 hex)")
    p.add_argument("--node", required=True, metavar="URL", help="the node's API")
    p.add_argument("--identity", type=Path, metavar="PEM", help=IDENTITY_HELP)
    p.add_argument("--payload", action="store_true", help="print only the payload's value")
    p.add_argument("--ca", type=Path, help="CA file for an https node (or LEDGER_CA)")
    p.set_defaults(func=cmd_record_get)


IDENTITY_HELP = ("sign reads with this member key (RFC 9421), so the node's read policies "
                 "serve it sealed payloads (LEDGER_KEY_PASSPHRASE for an encrypted key)")


def cmd_record_get(args: argparse.Namespace) -> int:
    """Print one record; a served sealed payload checked against its digest first."""
    from node.cli import _ca, _reader

    with LedgerClient(args.node, verify=_ca(args), read_identity=_reader(args)) as client:
        doc = client.record(args.id)
    try:
        record = Record.from_wire(b64decode(doc.get("envelope"), "envelope"))
        if record.id.hex() != args.id:
            raise DecodeError(f"the node served record {record.id.hex()}")
        pair = served_pair(doc, record)
    except LedgerError as exc:
        print(f"invalid: {args.node}: record {args.id}: {exc}", file=sys.stderr)
        return EXIT_INVALID
    if not args.payload:
        print(json.dumps(doc, indent=2, ensure_ascii=False))
        if record.body.sealed:
            print(f"sealed payload: {doc.get('payload_status')}"
                  + (" (matches its digest)" if pair is not None else ""), file=sys.stderr)
        return EXIT_OK
    if record.body.sealed and pair is None:
        print(f"{args.node}: record {args.id}: its sealed payload is not served: "
              f"{payload_text(doc)}", file=sys.stderr)
        return EXIT_INVALID
    print(payload_text(doc))
    return EXIT_OK
