"""The fleet's own record of what the broker acknowledged: one JSON line per PUBACK.

A fault test reconciles what the system acknowledged with what it reads back; this is the
acknowledged half, kept by the vehicles themselves. A line is written only once the broker
has PUBACKed the event (``{"event_id": ..., "vin": ..., "stream": "telemetry", "ts": ...}``,
``ts`` the wall-clock second of the PUBACK, to place a loss in a fault's time); lines are
buffered in memory and written once a second and at the end, so 10,000 vehicles cost one
write a second, not one per event.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import IO

import msgspec
from firmware_sim.errors import SimError


class _Acked(msgspec.Struct):
    event_id: str
    vin: str
    stream: str
    ts: float


_encode = msgspec.json.Encoder().encode


def stream_of(topic: str) -> str:
    """``fleet/{vin}/telemetry`` -> ``telemetry``."""
    return topic.rsplit("/", 1)[-1]


class AckLog:
    """Appends acknowledged events to ``path`` (JSON lines). No I/O until ``start``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.written = 0
        self._pending: list[bytes] = []
        self._fh: IO[bytes] | None = None

    def start(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = open(self.path, "wb")
        except OSError as exc:
            raise SimError(f"cannot write the acknowledged-events log {self.path}: {exc}") from None

    def record(self, vin: str, topic: str, event_id: str) -> None:
        self._pending.append(
            _encode(_Acked(event_id, vin, stream_of(topic), round(time.time(), 3)))
        )

    def flush(self) -> None:
        if self._fh is None or not self._pending:
            return
        lines, self._pending = self._pending, []
        self._fh.write(b"\n".join(lines) + b"\n")
        self._fh.flush()
        self.written += len(lines)

    def close(self) -> None:
        if self._fh is not None:
            self.flush()
            self._fh.close()
            self._fh = None
