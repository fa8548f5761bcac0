"""The pure library ``ledger`` imports no HTTP library, server or event loop: importing every
one of its modules in a fresh interpreter loads none of them (the SDK lives in node/client.py
for that reason)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# Top-level packages ``ledger`` must never load: HTTP clients and servers, their protocol
# stacks, async frameworks and the event loop, TLS and the stdlib HTTP modules.
FORBIDDEN = {"httpx", "h11", "h2", "httpcore", "httptools", "starlette", "fastapi",
             "fastapi_offline", "uvicorn", "uvloop", "anyio", "sniffio", "asyncio", "requests",
             "urllib3", "aiohttp", "websockets", "ssl", "http", "node"}

SCRIPT = """
import importlib, json, pkgutil, sys
import ledger
names = [m.name for m in pkgutil.walk_packages(ledger.__path__, "ledger.")]
for name in names:
    importlib.import_module(name)
print(json.dumps({"modules": names, "loaded": sorted(sys.modules)}))
"""


def test_importing_all_of_ledger_loads_no_http_library_nor_event_loop() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, env=env, check=True,
                         capture_output=True, text=True, timeout=120).stdout
    doc = json.loads(out)
    # every module was imported: the walk found the whole package, not an empty one
    assert {"ledger.audit", "ledger.receipts", "ledger.store.sqlite",
            "ledger.consensus.core", "ledger.validation"} <= set(doc["modules"])
    assert not any(m.startswith("ledger.client") for m in doc["modules"])
    loaded = {name.split(".")[0] for name in doc["loaded"]}
    assert loaded & FORBIDDEN == set(), sorted(loaded & FORBIDDEN)


def test_no_module_of_ledger_names_an_http_library() -> None:
    """The same, read in the source: an import inside a function would escape the test
    above until that function ran."""
    offenders = []
    for path in sorted((ROOT / "ledger").rglob("*.py")):
        for n, line in enumerate(path.read_text().splitlines(), 1):
            words = line.strip().split()
            if len(words) >= 2 and words[0] in ("import", "from") and \
                    words[1].split(".")[0].rstrip(",") in FORBIDDEN:
                offenders.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert offenders == []
