"""``ledger log checkpoint | prove | consistency``: log proofs checked from the command line
(SPEC section 11; docs/protocol.md gives the reading of these commands, which section 8
does not name).

Each verifies what the node serves with nothing but genesis.json, through the SDK's
verifying calls (node/client.py), and exits 0; or prints ``invalid: <reason>`` on one line
and exits 1 (2 when the node could not be asked, as every ``ledger`` command).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from ledger import merkle
from ledger.checkpoint import VerifiedCheckpoint, record_log_index
from ledger.config import Config
from ledger.errors import LogProofError, ReceiptError
from ledger.genesis import Genesis
from node.client import LedgerClient

EXIT_OK, EXIT_INVALID = 0, 1


def _client(args: argparse.Namespace) -> LedgerClient:
    from node.cli import _ca

    return LedgerClient(args.node, verify=_ca(args))


def _describe(point: VerifiedCheckpoint) -> str:
    return (f"height {point.height} (log of {point.log_size} records, root "
            f"{point.log_root.hex()}, block {point.block_hash.hex()})")


def cosigned_by(count: int, config: Config) -> str:
    """``cosigned by N of M witnesses``, M those of ``config`` (governing the height)."""
    listed = len(config.witnesses)
    return (f"cosigned by {count} of {listed} witness{'es' if listed != 1 else ''}"
            f"{'' if listed else ' (the configuration lists none)'}")


def _cosigned(point: VerifiedCheckpoint) -> str:
    return cosigned_by(point.witnesses, point.config)


def _invalid(exc: Exception) -> int:
    print(f"invalid: {exc}", file=sys.stderr)
    return EXIT_INVALID


def cmd_log_checkpoint(args: argparse.Namespace) -> int:
    """Verify a checkpoint and print it as JSON (a summary line goes to stderr)."""
    genesis = Genesis.load(args.genesis)
    with _client(args) as client:
        try:
            point = client.verified_checkpoint(genesis, args.height,
                                               witnesses=args.witnesses)
        except LogProofError as exc:
            return _invalid(exc)
    print(json.dumps(point.doc, indent=2))
    names = ", ".join(point.config.validators[i].name for i in point.signers)
    print(f"valid: checkpoint of chain {genesis.chain_id!r} at {_describe(point)}; "
          f"certified by {names}; {_cosigned(point)}", file=sys.stderr)
    return EXIT_OK


def cmd_log_prove(args: argparse.Namespace) -> int:
    """Prove a record's inclusion in the log of the tip's verified checkpoint."""
    genesis = Genesis.load(args.genesis)
    with _client(args) as client:
        try:
            receipt = client.verified_receipt(args.record, genesis)  # of that record
        except ReceiptError as exc:
            return _invalid(exc)
        seq = record_log_index(receipt.header, receipt.index)
        try:
            tip = client.verified_checkpoint(genesis, args.height, witnesses=args.witnesses)
            if tip.height < receipt.header.height:
                raise LogProofError(f"--height {tip.height} is below the record's height "
                                    f"{receipt.header.height}")
            client.verify_inclusion(tip, seq, merkle.leaf_hash(receipt.record.envelope))
        except LogProofError as exc:
            return _invalid(exc)
    print(f"valid: record {receipt.record.id.hex()} (height {receipt.header.height}, index "
          f"{receipt.index}) is log leaf {seq} of the checkpoint at {_describe(tip)}; "
          f"the checkpoint is {_cosigned(tip)}")
    return EXIT_OK


def cmd_log_consistency(args: argparse.Namespace) -> int:
    """Prove that the log at --to-height (default: the tip) extends the log at
    --from-height, both checkpoints verified."""
    genesis = Genesis.load(args.genesis)
    with _client(args) as client:
        try:
            old = client.verified_checkpoint(genesis, args.from_height,
                                             witnesses=args.witnesses)
            new = client.verified_checkpoint(genesis, args.to_height, witnesses=args.witnesses)
            if new.height < old.height:
                raise LogProofError(f"--to-height {new.height} is below --from-height "
                                    f"{old.height}")
            client.verify_consistency(old, new)
        except LogProofError as exc:
            return _invalid(exc)
    print(f"valid: the log at {_describe(new)} extends the log at {_describe(old)}; "
          f"{_cosigned(new)} and {_cosigned(old)} respectively")
    return EXIT_OK


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--node", required=True, metavar="URL", help="the node's API")
    p.add_argument("--genesis", required=True, metavar="G", type=Path,
                   help="the chain's genesis.json (the only thing trusted)")
    p.add_argument("--ca", type=Path, help="CA file for an https node (or LEDGER_CA)")
    p.add_argument("--witnesses", type=_count, default=0, metavar="K",
                   help="require at least K distinct witnesses of the configuration governing "
                   "the checkpoint's height to have cosigned it (SPEC section 11); a listed "
                   "cosignature that does not verify fails whatever K")


def _height(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("heights start at 1")
    return value


def _count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must not be negative")
    return value


def add_commands(sub: Any) -> None:
    """Add ``ledger log ...`` to the ``ledger`` parser's subcommands."""
    log = sub.add_parser("log", help="log proofs and checkpoints (SPEC section 11)",
                         description="Check the chain's transparency log with nothing but "
                         "genesis.json: checkpoints (a certified header), the inclusion of a "
                         "record, and that a later log extends an earlier one. Each exits 0 "
                         "if all verifies, else prints 'invalid: <reason>' and exits 1.")
    lsub = log.add_subparsers(dest="log_command", required=True, metavar="COMMAND")
    p = lsub.add_parser("checkpoint", help="verify a checkpoint and print it",
                        description="Fetch the checkpoint at --height (default: the tip), "
                        "verify its certificate under the configuration of its height "
                        "(following GET /v1/config/proof from genesis) and print it as JSON.")
    _common(p)
    p.add_argument("--height", type=_height, metavar="H", help="a height (default: the tip)")
    p.set_defaults(func=cmd_log_checkpoint)
    p = lsub.add_parser("prove", help="prove a record is in the log of the tip's checkpoint",
                        description="Verify the record's receipt, then its inclusion (RFC "
                        "9162 audit path) in the log of the verified checkpoint at --height "
                        "(default: the tip; with --witnesses, pick a height witnesses have "
                        "cosigned already).")
    _common(p)
    p.add_argument("--record", required=True, metavar="ID", help="the record id (hex)")
    p.add_argument("--height", type=_height, metavar="H",
                   help="the checkpoint's height, at or above the record's (default: the tip)")
    p.set_defaults(func=cmd_log_prove)
    p = lsub.add_parser("consistency", help="prove a later log extends an earlier one",
                        description="Verify the checkpoints at --from-height and --to-height "
                        "(default: the tip) and the RFC 9162 consistency proof between their "
                        "logs: the later history contains the earlier one unchanged.")
    _common(p)
    p.add_argument("--from-height", required=True, type=_height, metavar="A")
    p.add_argument("--to-height", type=_height, metavar="B", help="default: the tip")
    p.set_defaults(func=cmd_log_consistency)
