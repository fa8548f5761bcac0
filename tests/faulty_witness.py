"""Test-only entry point for ``ledger witness`` with a crash point (the witness's twin of
``tests/faulty_node.py``; the shipped witness only has the no-op ``node.witnesscli.Hooks``).

``python -m tests.faulty_witness <ledger witness arguments>`` with
``LEDGER_WITNESS_CRASH=after_save`` kills the process with SIGKILL (no cleanup, no flush)
right after the first durable save of its state, before any cosignature of that batch is
posted: the crash that ordering is for.
"""

from __future__ import annotations

import os
import signal
import sys

from node import witnesscli
from node.cli import main

CRASH_POINTS = ("after_save",)


class CrashHooks(witnesscli.Hooks):
    def after_save(self) -> None:
        os.kill(os.getpid(), signal.SIGKILL)


if __name__ == "__main__":
    point = os.environ.get("LEDGER_WITNESS_CRASH", "").replace("-", "_")
    if point:
        if point not in CRASH_POINTS:
            raise SystemExit(f"LEDGER_WITNESS_CRASH={point!r}: expected one of {CRASH_POINTS}")
        witnesscli.HOOKS = CrashHooks()
    sys.exit(main(["witness", *sys.argv[1:]]))
