"""A bounded on-disk outbox: events a vehicle could not send while its broker was away.

One SQLite file holds every vehicle of the process (one file per vehicle would cost 10,000
file descriptors). Each vehicle's events keep their order; when a vehicle's share is full
the oldest events are dropped and counted, as vehicle firmware with a ring buffer would.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from firmware_sim.errors import BufferError_


class Outbox:
    def __init__(self, path: Path, max_per_vehicle: int = 50_000) -> None:
        self.path = path
        self.max_per_vehicle = max_per_vehicle
        self.counts: dict[int, int] = {}
        self.dropped = 0
        self._next_seq: dict[int, int] = {}
        self._db: sqlite3.Connection | None = None

    def start(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS outbox (vehicle INTEGER, seq INTEGER, topic TEXT,"
                " payload BLOB, PRIMARY KEY (vehicle, seq)) WITHOUT ROWID"
            )
            # A previous run's leftovers belong to that run's vehicles; start clean.
            self._db.execute("DELETE FROM outbox")
            self._db.execute("BEGIN")
        except sqlite3.Error as exc:
            raise BufferError_(f"cannot open the outbox at {self.path}: {exc}") from exc

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            raise BufferError_("outbox used before start()")
        return self._db

    def total(self) -> int:
        return sum(self.counts.values())

    def append(self, vehicle: int, topic: str, payload: bytes) -> None:
        seq = self._next_seq.get(vehicle, 0)
        self._next_seq[vehicle] = seq + 1
        self.db.execute("INSERT INTO outbox VALUES (?, ?, ?, ?)", (vehicle, seq, topic, payload))
        n = self.counts.get(vehicle, 0) + 1
        if n > self.max_per_vehicle:
            self.db.execute(
                "DELETE FROM outbox WHERE vehicle = ? AND seq = "
                "(SELECT MIN(seq) FROM outbox WHERE vehicle = ?)",
                (vehicle, vehicle),
            )
            self.dropped += 1
            n -= 1
        self.counts[vehicle] = n

    def take(self, vehicle: int, limit: int) -> list[tuple[str, bytes]]:
        """Remove and return up to ``limit`` of the vehicle's oldest events, in order."""
        if not self.counts.get(vehicle):
            return []
        rows = self.db.execute(
            "SELECT seq, topic, payload FROM outbox WHERE vehicle = ? ORDER BY seq LIMIT ?",
            (vehicle, limit),
        ).fetchall()
        if rows:
            self.db.execute(
                "DELETE FROM outbox WHERE vehicle = ? AND seq <= ?", (vehicle, rows[-1][0])
            )
        self.counts[vehicle] -= len(rows)
        return [(topic, bytes(payload)) for _, topic, payload in rows]

    def commit(self) -> None:
        """Make what was appended durable; called once per tick, not per event."""
        self.db.execute("COMMIT")
        self.db.execute("BEGIN")

    def close(self) -> None:
        if self._db is not None:
            try:
                self._db.execute("COMMIT")
            except sqlite3.Error:
                pass
            self._db.close()
            self._db = None
