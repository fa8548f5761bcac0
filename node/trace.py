"""Latency tracing (debug only): with ``LEDGER_LATENCY_TRACE=DIR`` in its environment, a
node process writes one line per step of a record's path to ``DIR/trace-<pid>.log``:
wall-clock seconds, a tag, a height and an optional detail, so the lines of several
processes on one host can be merged into one timeline (docs/performance.md, "Light-load
latency, hop by hop"). Without the variable nothing is written, and callers on hot paths
test ``TRACE_DIR is not None`` before building a line's arguments."""

from __future__ import annotations

import os
import time
from typing import Any

TRACE_DIR = os.environ.get("LEDGER_LATENCY_TRACE")
_trace_file: Any = None


def trace(tag: str, height: int, extra: object = "") -> None:
    """One trace line (from the event loop or a worker thread); nothing when not tracing."""
    global _trace_file
    if TRACE_DIR is None:
        return
    if _trace_file is None:
        _trace_file = open(  # noqa: SIM115 (held open for the process)
            os.path.join(TRACE_DIR, f"trace-{os.getpid()}.log"), "a", buffering=1)
    _trace_file.write(f"{time.time():.6f} {tag} {height} {extra}\n")
