"""Node configuration: ``DIR/node{i}/config.json``, written by ``ledger cluster init``.

```json
{"index": 0, "api": "127.0.0.1:8000", "p2p": "127.0.0.1:8100",
 "genesis": "../genesis.json", "key": "node.pem", "store": "chain.db",
 "peers": {"1": "127.0.0.1:8101", ...}}
```
A ``peers`` key is a genesis validator index, or a validator's public key (64 hex
characters: used only while this node is not a validator in the history it holds, see
``peer_keys``); a node made by ``ledger node init`` has no ``index``.
Paths are relative to the node directory. Environment variables override, for containers:
``LEDGER_API_LISTEN``, ``LEDGER_P2P_LISTEN`` (``host:port``), ``LEDGER_PEERS``
(``1=node1:8101,2=node2:8102``), ``LEDGER_FOLLOW`` (``http://node1:8001,...``: the
``follow`` list, API URLs a node that is not a validator follows the chain from, see
node.follow) and ``LEDGER_STORE`` (the SQLite file; the signing state is
kept beside it). Consensus timeouts may be set in genesis under
``"consensus"`` (every validator must use the same values).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ledger.consensus import ConsensusConfig
from ledger.errors import LedgerError
from ledger.genesis import Genesis


class ConfigError(LedgerError):
    """A node directory or its config.json is unusable."""

    code = "bad_config"


def parse_address(text: str, what: str) -> tuple[str, int]:
    """``host:port`` -> (host, port)."""
    host, sep, port = str(text).rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"{what}: expected host:port, got {text!r}")
    return host.strip("[]"), int(port)


@dataclass
class NodeConfig:
    """Everything a node process needs to start."""

    dir: Path
    index: int | None  # the genesis validator this directory was made for (None: a node
    # made by ``ledger node init``, whose key the configuration adds later)
    api: tuple[str, int]
    p2p: tuple[str, int]
    genesis_path: Path
    key_path: Path
    store_path: Path
    peers: dict[int, tuple[str, int]] = field(default_factory=dict)
    # peers named by public key (hex in config.json / LEDGER_PEERS): linked with while this
    # node is not yet a validator in the history it holds (a joining node's way in when
    # the genesis validators it would find by index are gone)
    peer_keys: dict[bytes, tuple[str, int]] = field(default_factory=dict)
    # API URLs to follow the chain from while this node is not a validator and has no peer
    # link (node.follow), tried before the validators' ``api`` of the configuration in force
    follow: list[str] = field(default_factory=list)
    max_body_bytes: int = 16 * 1024 * 1024
    max_batch: int = 10_000
    mempool_records: int = 100_000
    # how far a record's ``ts`` may be from this node's clock at admission (a node-local
    # policy, never a block validity rule: SPEC section 2); raise it for clients that
    # upload readings they buffered offline
    max_clock_skew_ms: int = 10 * 60 * 1000
    # HTTP API limits (docs/api.md#limits): seconds to receive a whole request body, and
    # a request line and headers; connections open, and requests at once, from one client
    # address (/healthz and /metrics are exempt from the request limits);
    # requests at once in all; bytes of request bodies held at once; worker threads that
    # decode bodies and build heavy answers (blocks, receipts, history, event replay), and
    # bytes of block JSON kept for re-serving.
    api_body_timeout: float = 10.0
    api_header_timeout: float = 10.0
    api_connections_per_source: int = 256
    api_requests_per_source: int = 64
    api_max_inflight: int = 512
    api_body_budget: int = 256 * 1024 * 1024
    api_workers: int = 2
    api_block_cache_bytes: int = 32 * 1024 * 1024
    consensus: ConsensusConfig = field(default_factory=ConsensusConfig)
    # Compact proposals on the peer links (node.runtime, docs/protocol.md): on unless
    # ``"compact_proposals": false`` (or LEDGER_COMPACT_PROPOSALS=0); how long a validator
    # waits for records it must fetch to rebuild one, and how recent an admission must be
    # for the proposer to carry the record whole rather than name it.
    compact_proposals: bool = True
    compact_fetch_ms: int = 1000
    compact_inline_ms: int = 5
    tls_ca: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None

    @property
    def signing_state_path(self) -> Path:
        """Kept beside the store (the writable place), not in the config folder."""
        return self.store_path.with_name("signing_state.bin")

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> NodeConfig:
        """Read ``directory/config.json`` (and environment overrides)."""
        d = Path(directory)
        path = d / "config.json"
        try:
            doc: dict[str, Any] = json.loads(path.read_text())
        except FileNotFoundError as exc:
            raise ConfigError(f"{path}: not found (make one with 'ledger cluster init')") from exc
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{path}: cannot read ({exc})") from exc
        try:
            items = [(str(k), str(v)) for k, v in dict(doc.get("peers", {})).items()]
            env_peers = os.environ.get("LEDGER_PEERS")
            if env_peers:
                items = [(k, v) for k, _, v in (i.partition("=") for i in env_peers.split(","))]
            peers: dict[int, tuple[str, int]] = {}
            peer_keys: dict[bytes, tuple[str, int]] = {}
            for k, v in items:
                k = k.strip()
                if len(k) == 64:  # a validator's public key, hex
                    peer_keys[bytes.fromhex(k)] = parse_address(v, f"peers[{k[:12]}…]")
                else:
                    peers[int(k)] = parse_address(v, f"peers[{k}]")
            follow = [str(u) for u in doc.get("follow", [])]
            env_follow = os.environ.get("LEDGER_FOLLOW")
            if env_follow:
                follow = [u.strip() for u in env_follow.split(",") if u.strip()]
            cfg = cls(
                dir=d,
                index=None if doc.get("index") is None else int(doc["index"]),
                api=parse_address(os.environ.get("LEDGER_API_LISTEN", doc["api"]), "api"),
                p2p=parse_address(os.environ.get("LEDGER_P2P_LISTEN", doc["p2p"]), "p2p"),
                genesis_path=d / doc.get("genesis", "../genesis.json"),
                key_path=d / doc.get("key", "node.pem"),
                store_path=Path(os.environ.get("LEDGER_STORE") or d / doc.get("store", "chain.db")),
                peers=peers,
                peer_keys=peer_keys,
                follow=follow,
                max_body_bytes=int(doc.get("max_body_bytes", 16 * 1024 * 1024)),
                max_batch=int(doc.get("max_batch", 10_000)),
                mempool_records=int(doc.get("mempool_records", 100_000)),
                max_clock_skew_ms=int(doc.get("max_clock_skew_ms", 10 * 60 * 1000)),
                api_body_timeout=float(doc.get("api_body_timeout", 10.0)),
                api_header_timeout=float(doc.get("api_header_timeout", 10.0)),
                api_connections_per_source=int(doc.get("api_connections_per_source", 256)),
                api_requests_per_source=int(doc.get("api_requests_per_source", 64)),
                api_max_inflight=int(doc.get("api_max_inflight", 512)),
                api_body_budget=int(doc.get("api_body_budget", 256 * 1024 * 1024)),
                api_workers=int(doc.get("api_workers", 2)),
                api_block_cache_bytes=int(doc.get("api_block_cache_bytes", 32 * 1024 * 1024)),
                compact_proposals=os.environ.get(
                    "LEDGER_COMPACT_PROPOSALS", "1" if doc.get("compact_proposals", True)
                    else "0").strip().lower() not in ("0", "false", "no", "off"),
                compact_fetch_ms=int(doc.get("compact_fetch_ms", 1000)),
                compact_inline_ms=int(doc.get("compact_inline_ms", 5)),
            )
            if not (cfg.api_body_timeout > 0 and cfg.api_header_timeout > 0
                    and cfg.api_connections_per_source >= 1 and cfg.api_requests_per_source >= 1
                    and cfg.api_max_inflight >= 1 and cfg.api_workers >= 1
                    and cfg.api_body_budget >= cfg.max_body_bytes >= 1
                    and cfg.api_block_cache_bytes >= 0 and cfg.max_clock_skew_ms > 0
                    and cfg.compact_fetch_ms >= 0 and cfg.compact_inline_ms >= 0):
                raise ValueError("api_* limits and max_clock_skew_ms must be positive, "
                                 "api_body_budget at least max_body_bytes, compact_*_ms "
                                 "not negative")
            tls = doc.get("tls")
            if tls:
                cfg.tls_ca, cfg.tls_cert, cfg.tls_key = (d / tls["ca"], d / tls["cert"],
                                                         d / tls["key"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"{path}: missing or invalid field ({exc})") from exc
        return cfg

    def consensus_config(self, genesis: Genesis) -> ConsensusConfig:
        """Consensus timeouts from genesis' ``consensus`` section, defaults otherwise."""
        section = genesis.extra.get("consensus", {})
        if not isinstance(section, dict):
            raise ConfigError("genesis 'consensus' must be an object")
        known = set(ConsensusConfig.__dataclass_fields__)
        unknown = set(section) - known
        if unknown:
            raise ConfigError(f"genesis 'consensus' has unknown keys {sorted(unknown)}")
        try:
            return ConsensusConfig(**section)
        except (TypeError, ValueError) as exc:  # e.g. a block too small for a 1 MiB change
            raise ConfigError(f"genesis 'consensus': {exc}") from exc
