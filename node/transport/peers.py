"""Which validator keys a node links with, and the stable peer id of each.

The transport names a peer by a small int (``on_message(peer, ...)``, ``send(peer, ...)``;
the consensus core's ``sender``, ``SendTo.peer`` and ``Misbehaviour.peer``). Validator
indexes shift when a set changes (a validator removed at index 0 moves every other one), so
the peer id is not the index of any set: it is the **rank** of the key in the configuration
history, the order in which keys first appear as validators — genesis's in index order
(so a genesis validator's peer id is its genesis index, as before), then each later
version's new keys in index order. A key keeps its rank for the life of the chain (removed
and re-added alike). Every node that holds the history agrees on the ranks of the keys it
knows, so the rank also decides who dials whom: the lower rank dials.

``accepted_peers(history, tip)`` is the rule for which keys may link with a node whose
chain ends at ``tip``: the validators of the configuration in force at ``tip`` and of the
one governing the next height (``history.latest``, which differs once a change is committed
at the tip). So an added validator is accepted as soon as the change that adds it is
committed, and a removed (or re-keyed) one is refused — its link closed — once the first
height after the change is committed (it still takes part in that height's commit
certificate of the change's block, which it must see).
"""

from __future__ import annotations

from collections.abc import Iterable

from ledger.config import ConfigHistory


class PeerDirectory:
    """Stable peer ids for keys, their ranks in the history, and names for logs.

    A key's id is given when it is first seen and never changes; its rank when it is first
    seen in the history (``learn``). Keys are learnt before anything else is added, so a
    validator's id is its rank; a key the node config names as a peer before the history
    lists it (``bootstrap``: a joining node's way in when genesis's validators are gone)
    has an id but no rank until then."""

    def __init__(self, keys: Iterable[bytes] = ()) -> None:
        self._ids: dict[bytes, int] = {}
        self._keys: list[bytes] = []
        self._names: dict[bytes, str] = {}
        self._ranks: dict[bytes, int] = {}
        for key in keys:
            self.add(key)
            self._ranks.setdefault(key, len(self._ranks))

    @classmethod
    def from_history(cls, history: ConfigHistory) -> PeerDirectory:
        """Every validator key of ``history``, ranked by first appearance."""
        directory = cls()
        directory.learn(history)
        return directory

    def learn(self, history: ConfigHistory) -> None:
        """Add the keys of versions not seen yet (call after each change; idempotent)."""
        for _start, config in history:
            for v in config.validators:
                self.add(v.pubkey, v.name)
                self._ranks.setdefault(v.pubkey, len(self._ranks))

    def add(self, pubkey: bytes, name: str | None = None) -> int:
        """The id of ``pubkey``, giving it the next one if it is new."""
        if name:
            self._names[pubkey] = name
        peer = self._ids.get(pubkey)
        if peer is None:
            peer = self._ids[pubkey] = len(self._keys)
            self._keys.append(pubkey)
        return peer

    def rank(self, pubkey: bytes) -> int | None:
        """The order in which ``pubkey`` first appears as a validator in the history, None
        if it does not (yet): the lower rank dials."""
        return self._ranks.get(pubkey)

    def get(self, pubkey: bytes) -> int | None:
        """The id of ``pubkey``, None if it is unknown."""
        return self._ids.get(pubkey)

    def key(self, peer: int) -> bytes | None:
        """The key of peer id ``peer``, None if there is no such id."""
        return self._keys[peer] if 0 <= peer < len(self._keys) else None

    def name(self, peer: int) -> str:
        """``validator N (name)`` for logs."""
        key = self.key(peer)
        label = self._names.get(key, key.hex()[:12] + "…") if key is not None else "?"
        return f"validator {peer} ({label})"

    def __len__(self) -> int:
        return len(self._keys)

    def __contains__(self, pubkey: object) -> bool:
        return pubkey in self._ids


def accepted_peers(history: ConfigHistory, tip: int) -> dict[bytes, str]:
    """The validator keys a node at height ``tip`` links with (see the module docstring),
    each with its ``p2p`` address as the newest configuration listing it gives it ("" if
    none): the validators governing ``tip`` and the next height."""
    keys: dict[bytes, str] = {}
    for config in (history.at(tip), history.latest):
        for v in config.validators:
            keys.setdefault(v.pubkey, "")
    for _start, config in history:  # the newest address of each key wins
        for v in config.validators:
            if v.pubkey in keys and v.p2p:
                keys[v.pubkey] = v.p2p
    return keys

