"""The ledger node process: CLI, and later the runtime, transport and HTTP API."""

import sys as _sys

# httpx imports its own command-line tool (rich, click, pygments: ~45 ms of CPU) whenever
# they are installed; nothing here uses it, and every `ledger` command pays start-up (an
# audit of a short chain is mostly start-up: docs/performance.md). Left out.
_sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]
