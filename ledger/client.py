"""HTTP client for a ledger node (SPEC section 7): what the audit needs, the seed of the SDK."""

from __future__ import annotations

from typing import Any

import httpx

from ledger.errors import LedgerError

MSGPACK = "application/msgpack"


class NodeError(LedgerError):
    """A node could not be reached or answered outside the SPEC."""

    code = "node_error"


class LedgerClient:
    """A synchronous client for one node; safe to share between threads."""

    def __init__(self, base_url: str, *, timeout: float = 30.0) -> None:
        self.base_url = base_url.rstrip("/")
        self._http = httpx.Client(base_url=self.base_url, timeout=timeout,
                                  limits=httpx.Limits(max_connections=16))

    def _get(self, path: str, accept: str = "application/json") -> httpx.Response:
        try:
            return self._http.get(path, headers={"Accept": accept})
        except httpx.HTTPError as exc:
            raise NodeError(f"{self.base_url}{path}: {exc or type(exc).__name__}") from exc

    def status(self) -> dict[str, Any]:
        """``GET /v1/status``."""
        resp = self._get("/v1/status")
        if resp.status_code != 200:
            raise NodeError(f"{self.base_url}/v1/status answered {resp.status_code}")
        try:
            doc = resp.json()
        except ValueError as exc:
            raise NodeError(f"{self.base_url}/v1/status did not answer JSON") from exc
        if not isinstance(doc, dict) or type(doc.get("height")) is not int:
            raise NodeError(f"{self.base_url}/v1/status has no integer 'height'")
        return doc

    def block_bytes(self, height: int) -> bytes | None:
        """``GET /v1/blocks/{height}`` as msgpack: the exact block bytes, None on 404."""
        resp = self._get(f"/v1/blocks/{height}", accept=MSGPACK)
        if resp.status_code == 404:
            return None
        if resp.status_code != 200:
            raise NodeError(f"{self.base_url}/v1/blocks/{height} answered {resp.status_code}")
        return resp.content

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def __enter__(self) -> LedgerClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
