"""Remembering recent events per raw partition, to drop the bridge's redeliveries.

The bridge is at-least-once: a redelivered MQTT message lands in the same raw partition (same
VIN key) shortly after the first copy. Each partition keeps the keys of its last ``limit``
events, grouped in deltas (one per committed batch) that are also written to the changelog; a
delta leaves memory and the changelog (as a tombstone) together once it falls out of the window.

An event is known by its vehicle *and* its id (:func:`event_key`): event ids are chosen by
vehicles, so another vehicle reusing them (in the same partition) must not make them vanish.
Windows written before the vehicle was part of the key hold bare ids; they load, match
nothing new, and leave with their deltas.
"""

from __future__ import annotations

from collections import deque


def event_key(vin: str, event_id: str) -> str:
    """What identifies an event (unambiguous: the contract's VIN pattern has no ``/``)."""
    return f"{vin}/{event_id}"


class DedupWindow:
    """Event keys of one raw partition's recent events (held as hashes in memory)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._ids: set[int] = set()
        self._deltas: deque[tuple[int, list[int]]] = deque()
        self._total = 0
        self._pending: list[int] = []
        self._pending_ids: list[str] = []
        self.next_seq = 0

    def __len__(self) -> int:
        return len(self._ids)

    def check_and_add(self, event_id: str) -> bool:
        """True when ``event_id`` (an :func:`event_key`) is new (and remember it)."""
        h = hash(event_id)
        if h in self._ids:
            return False
        self._ids.add(h)
        self._pending.append(h)
        self._pending_ids.append(event_id)
        return True

    def load(self, seq: int, event_ids: list[str]) -> None:
        """Restore a delta read back from the changelog (in sequence order)."""
        hashes = [hash(e) for e in event_ids]
        self._ids.update(hashes)
        self._deltas.append((seq, hashes))
        self._total += len(hashes)
        self.next_seq = max(self.next_seq, seq + 1)

    def seal(self) -> tuple[int | None, list[str], list[int]]:
        """Close the batch: (its delta's seq or None, its ids, seqs of deltas now expired)."""
        if not self._pending:
            return None, [], []
        seq = self.next_seq
        self.next_seq += 1
        self._deltas.append((seq, self._pending))
        self._total += len(self._pending)
        ids = self._pending_ids
        self._pending, self._pending_ids = [], []
        expired: list[int] = []
        while self._total > self.limit and len(self._deltas) > 1:
            old_seq, hashes = self._deltas.popleft()
            self._ids.difference_update(hashes)
            self._total -= len(hashes)
            expired.append(old_seq)
        return seq, ids, expired
