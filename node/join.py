"""``ledger node init``: a node directory for a validator that joins a running chain.

The directory holds a copy of genesis.json (the same bytes, so the same genesis hash), the
node's key (new, or a copy of ``--key``'s file as it is, encrypted or not) and a
config.json without an ``index``: the node is not a validator of genesis. Run it with
``ledger node run DIR``: it follows the chain (a follower: it votes on nothing) until a
configuration change adds its key — with its join signature (``ledger config approve
--identity DIR/node.pem``) — is committed; the validators then accept its key and link to
it, it syncs every block from genesis through every change, and it votes from the first
height whose configuration lists its key.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

from ledger.crypto import PrivateKey, read_key_file, write_key_file
from ledger.errors import LedgerError
from ledger.genesis import Genesis
from node.config import ConfigError, parse_address


class NodeInitError(LedgerError):
    """A node directory cannot be made."""

    code = "node_init"


#: what ``init_node`` writes in the directory
FILES = ("config.json", "genesis.json", "node.pem")


def init_node(directory: Path, genesis_path: Path, api: str, p2p: str,
              key_path: Path | None = None) -> dict[str, Any]:
    """Write ``directory`` (config.json, genesis.json, node.pem) and return the validator
    entry a configuration change adding this node would list (name, pubkey, power 1, p2p,
    api). Refuses a directory that already holds a node, an unreadable genesis or key,
    and addresses that are not ``host:port``."""
    for name in (*FILES, "chain.db"):
        if (directory / name).exists():
            raise NodeInitError(f"{directory} already holds a node ({name} exists); "
                                "refusing to overwrite it")
    try:
        parse_address(api, "--api")
        parse_address(p2p, "--p2p")
    except ConfigError as exc:
        raise NodeInitError(str(exc)) from None
    try:
        raw = genesis_path.read_bytes()
    except OSError as exc:
        raise NodeInitError(f"{genesis_path}: cannot read ({exc.strerror or exc})") from None
    genesis = Genesis.from_bytes(raw, str(genesis_path))  # GenesisError: its own message
    if key_path is not None:
        try:
            key_bytes = key_path.read_bytes()
        except OSError as exc:
            raise NodeInitError(f"{key_path}: cannot read ({exc.strerror or exc})") from None
        passphrase = os.environ.get("LEDGER_KEY_PASSPHRASE")
        key = read_key_file(key_path, passphrase.encode() if passphrase else None)
    else:
        key = PrivateKey.generate()
    config: dict[str, Any] = {"api": api, "p2p": p2p, "genesis": "genesis.json",
                              "key": "node.pem", "store": "chain.db"}
    slot = genesis.validators.by_key(key.public)
    if slot is not None:  # a genesis validator's key (a replaced machine): keep its slot
        config = {"index": slot.index, **config}
    made: list[Path] = []  # removed again if a later write fails: no half-made node
    try:
        directory.mkdir(parents=True, exist_ok=True)
        made.append(directory / "genesis.json")
        (directory / "genesis.json").write_bytes(raw)
        made.append(directory / "node.pem")
        if key_path is not None:
            fd = os.open(directory / "node.pem", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(key_bytes)
        else:
            write_key_file(directory / "node.pem", key)
        made.append(directory / "config.json")
        (directory / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    except OSError as exc:
        for path in made:
            with contextlib.suppress(OSError):
                path.unlink()
        raise NodeInitError(f"{directory}: cannot write the node directory "
                            f"({exc.strerror or exc}: {exc.filename or directory})") from None
    return {"name": directory.resolve().name, "pubkey": key.public.hex(), "power": 1,
            "p2p": p2p, "api": f"http://{api}"}
