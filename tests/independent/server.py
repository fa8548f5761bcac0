"""A tiny stdlib HTTP server that serves a fixed chain the way SPEC section 7 says.

Only what an auditor needs: ``GET /v1/status`` and ``GET /v1/blocks/{h}`` with
``Accept: application/msgpack`` (the exact block bytes). Independent of ``ledger`` and ``node``.

    with serve_chain(blocks) as base_url:
        ...  # e.g. run `ledger audit --node base_url --genesis genesis.json`

Run ``python -m tests.independent.server OUT_DIR [--fault F]`` to write ``OUT_DIR/genesis.json``
and serve a chain from :mod:`tests.independent.writer` until Ctrl-C.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import msgpack

MSGPACK = "application/msgpack"
PROBLEM_JSON = "application/problem+json"
_BLOCK_PATH = re.compile(r"^/v1/blocks/(-?\d+)$")


class ChainServer:
    """Serves ``blocks`` (wire bytes, height 1 first) on 127.0.0.1 at an ephemeral port."""

    def __init__(self, blocks: Sequence[bytes], chain: str = "indep", node: str = "indep-0"):
        self.blocks = list(blocks)
        self.chain = chain
        self.node = node
        self.requests: list[tuple[str, str]] = []  # (path, Accept header), in arrival order
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, name="independent-chain-server", daemon=True
        )

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_port}"

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def requested_heights(self) -> list[int]:
        """The block heights requested so far, in order."""
        with self._lock:
            paths = [p for p, _ in self.requests]
        return [int(m.group(1)) for p in paths if (m := _BLOCK_PATH.match(p))]

    def status(self) -> dict[str, Any]:
        last_hash = ""
        if self.blocks:
            header = msgpack.unpackb(self.blocks[-1], raw=False)[0]
            last_hash = hashlib.sha256(msgpack.packb(header, use_bin_type=True)).hexdigest()
        return {
            "chain": self.chain,
            "node": self.node,
            "height": len(self.blocks),
            "last_block_hash": last_hash,
            "validators": [],
            "peers": [],
        }

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass  # keep test output clean

            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                accept = self.headers.get("Accept", "")
                with server._lock:
                    server.requests.append((path, accept))
                if path == "/v1/status":
                    self._send_json(200, server.status())
                elif path == "/healthz":
                    self._send_json(200, {"status": "ok"})
                elif m := _BLOCK_PATH.match(path):
                    self._send_block(int(m.group(1)), accept)
                else:
                    self._send_problem(404, "Not Found", f"no route for {path}")

            def _send_block(self, height: int, accept: str) -> None:
                if not 1 <= height <= len(server.blocks):
                    tip = len(server.blocks)
                    self._send_problem(404, "Not Found", f"no block at height {height}; tip {tip}")
                elif MSGPACK not in accept:
                    # The JSON view's shape is not in the SPEC; an auditor must not depend on it.
                    self._send_problem(
                        406, "Not Acceptable", f"this server only serves blocks as {MSGPACK}"
                    )
                else:
                    self._send(200, MSGPACK, server.blocks[height - 1])

            def _send_json(self, status: int, doc: Any) -> None:
                self._send(status, "application/json", json.dumps(doc).encode())

            def _send_problem(self, status: int, title: str, detail: str) -> None:
                doc = {"type": "about:blank", "title": title, "status": status, "detail": detail}
                self._send(status, PROBLEM_JSON, json.dumps(doc).encode())

            def _send(self, status: int, content_type: str, data: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        return Handler


@contextmanager
def running(blocks: Sequence[bytes], **kwargs: Any) -> Iterator[ChainServer]:
    """A started :class:`ChainServer`, stopped on exit."""
    server = ChainServer(blocks, **kwargs)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@contextmanager
def serve_chain(blocks: Sequence[bytes], **kwargs: Any) -> Iterator[str]:
    """Serve ``blocks`` in a background thread; yields the base URL (``http://127.0.0.1:P``)."""
    with running(blocks, **kwargs) as server:
        yield server.base_url


def _main(argv: list[str] | None = None) -> None:
    import argparse
    import time
    from pathlib import Path

    from tests.independent.writer import FAULTS, build_chain

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--fault", choices=FAULTS)
    parser.add_argument("--blocks", type=int, default=6)
    args = parser.parse_args(argv)
    genesis, wires = build_chain(args.blocks, fault=args.fault)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "genesis.json").write_bytes(genesis)
    with serve_chain(wires) as url:
        print(f"ledger audit --node {url} --genesis {args.out_dir / 'genesis.json'}", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    _main()
