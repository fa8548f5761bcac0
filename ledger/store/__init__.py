"""Block storage behind one Protocol: SQLite (the default) and in-memory (tests).

A store holds committed blocks only. ``append`` writes a block, its certificate, its
records, every index and the new Merkle-log nodes in one transaction, after checking the
block extends the tip (height, ``prev_hash``, ``log_size`` and ``log_root``). It does not
check signatures or policy: that is the caller's job (consensus, or the audit).
"""

from ledger.store.base import BlockStore, RecordLocation
from ledger.store.memory import MemoryStore
from ledger.store.sqlite import SqliteStore

__all__ = ["BlockStore", "MemoryStore", "RecordLocation", "SqliteStore"]
