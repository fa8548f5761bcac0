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

from ledger.errors import LogProofError
from ledger.genesis import Genesis
from node.client import LedgerClient, NodeError

EXIT_OK, EXIT_INVALID = 0, 1
PROGRESS_EVERY = 1000  # records between two progress lines on a terminal


def record_line(item: dict[str, Any]) -> str:
    """``height:index  log L  ts T  type  id  payload``: one record on one line."""
    payload = json.dumps(item.get("payload"), separators=(",", ":"), ensure_ascii=False)
    return (f"{item.get('height')}:{item.get('index')}  log {item.get('log_index')}  "
            f"ts {item.get('ts')}  {item.get('type')}  {item.get('id')}  {payload}")


def cmd_history(args: argparse.Namespace) -> int:
    """Print a subject's committed records; with --verify, each proved in the log."""
    from node.cli import CommandError, _ca

    if args.verify and args.genesis is None:
        raise CommandError("--verify needs --genesis G (the checkpoint is verified from it)")
    if args.page_size is not None and not 1 <= args.page_size <= 1000:
        raise CommandError("--page-size must be within 1..1000")
    tty = sys.stderr.isatty()
    count = 0
    with LedgerClient(args.node, verify=_ca(args)) as client:
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
    p.add_argument("--ca", type=Path, help="CA file for an https node (or LEDGER_CA)")
    p.set_defaults(func=cmd_history)
