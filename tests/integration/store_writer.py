"""A writer process for the crash test: appends blocks to an SQLite store forever.

Prints ``begin H`` just before the transaction of block H and ``committed H`` after it,
so the test can SIGKILL it in the middle of a write. With a third argument ``group``, each
block's transaction also writes a signing state naming its height (group commit).
"""

from __future__ import annotations

import sys

from ledger.store import SqliteStore
from tests.factory import ChainBuilder, make_fixture

SIGNER = b"\x07" * 32  # the pubkey the group-commit writer's signing state is kept under


def main(path: str, records_per_block: int, group: bool = False) -> None:
    fx = make_fixture()
    store = SqliteStore(path, genesis_hash=fx.genesis.hash)
    builder = ChainBuilder(fx, store, nonce=store.log.size,
                           time_ms=1_700_000_000_000 + 1000 * store.height)
    while True:
        block = builder.block([builder.record(subject=f"s{i % 7}")
                               for i in range(records_per_block)])
        print(f"begin {block.height}", flush=True)
        state = b"state after block %d" % block.height
        store.append(block, signing_state=(SIGNER, state) if group else None)
        print(f"committed {block.height}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3:] == ["group"])
