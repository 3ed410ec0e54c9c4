"""Replaying a :class:`~firmware_sim.replay.Recording` as live devices, or to a file.

Live, each device of the recording is one MQTT 5 session of the simulator's
(:class:`~firmware_sim.session.VehicleSession`: QoS 1, persistent session, last will on
``fleet/<id>/status``, the in-flight window and the on-disk outbox), all driven by the
simulator's selector loop (:class:`~firmware_sim.live.LiveRunner`). :class:`ReplayFleet` is
what that loop ticks instead of a simulated fleet: at ``speed`` it hands out every event whose
time (relative to the recording's first) divided by ``speed`` has passed since the clock
started, each device's events in order; at full speed (``speed=None``) it keeps every
device's queue topped up to its in-flight window plus the memory backlog, so events leave as
fast as the broker acknowledges them and none wait on disk.
"""

from __future__ import annotations

import heapq
import random
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from firmware_sim.fleet import Emitted, FleetStats
from firmware_sim.live import Device, LiveRunner
from firmware_sim.replay import Recording
from firmware_sim.session import MEMORY_BACKLOG, VehicleSession

from shared.contracts import Label

FIRMWARE = "replay"
TICK_S = 0.01


@dataclass(frozen=True)
class ReplayDevice:
    index: int
    vin: str
    firmware: str = FIRMWARE


class _Clock:
    """The settings a LiveRunner reads: it ticks until every event was handed out."""

    def __init__(self, fleet: ReplayFleet) -> None:
        self._fleet = fleet
        self.seed = 0
        self.dt = TICK_S
        self.duration_s = float("inf")

    @property
    def ticks(self) -> int:
        return self._fleet.tick + (0 if self._fleet.done else 1)


class ReplayFleet:
    """A recording as the event source of a :class:`LiveRunner`."""

    def __init__(self, recording: Recording, speed: float | None) -> None:
        if speed is not None and speed <= 0:
            raise ValueError("speed must be positive")
        self.recording = recording
        self.speed = speed
        self.rows = [d for d in recording.devices.values() if d.payloads]
        self.vehicles = [ReplayDevice(i, d.device) for i, d in enumerate(self.rows)]
        self.topics = [recording.topic(d.device) for d in self.rows]
        self.sent = [0] * len(self.rows)  # events handed to each device's session
        self.settings = _Clock(self)
        self.tick = 0
        self.start_ts = time.time()
        self.labels: list[Label] = []
        self.stats = FleetStats()
        # Full speed: how many more events device i's session should take now.
        self.room: Callable[[int], int] | None = None
        self.started_at: float | None = None  # monotonic, first step
        self.finished_at: float | None = None  # monotonic, last event handed out
        self._active = list(range(len(self.rows)))
        self._heap = [(d.due[0], i) for i, d in enumerate(self.rows)]
        heapq.heapify(self._heap)

    @property
    def done(self) -> bool:
        return not self._active

    @property
    def total(self) -> int:
        return sum(d.accepted for d in self.rows)

    @property
    def handed_out(self) -> int:
        return sum(self.sent)

    def step(self) -> list[Emitted]:
        now = time.monotonic()
        if self.started_at is None:
            self.started_at = now
        self.tick += 1
        out: list[Emitted] = []
        if self.speed is None:
            self._fill(out)
        else:
            self._due((now - self.started_at) * self.speed, out)
        if out:
            self.finished_at = time.monotonic()
        return out

    def _fill(self, out: list[Emitted]) -> None:
        room, sent, rows, topics = self.room, self.sent, self.rows, self.topics
        assert room is not None, "full speed needs the runner's room()"
        still = []
        for i in self._active:
            d, k = rows[i], sent[i]
            n = min(room(i), d.accepted - k)
            if n > 0:
                topic = topics[i]
                out.extend(Emitted(i, topic, p, None) for p in d.payloads[k : k + n])
                sent[i] = k = k + n
            if k < d.accepted:
                still.append(i)
        self._active = still

    def _due(self, horizon: float, out: list[Emitted]) -> None:
        heap, sent, rows, topics = self._heap, self.sent, self.rows, self.topics
        while heap and heap[0][0] <= horizon:
            _, i = heapq.heappop(heap)
            d, k = rows[i], sent[i]
            out.append(Emitted(i, topics[i], d.payloads[k], None))
            sent[i] = k + 1
            if k + 1 < d.accepted:
                heapq.heappush(heap, (d.due[k + 1], i))
        if not heap:
            self._active = []

    @property
    def replay_s(self) -> float:
        """Seconds from the first step to the last event handed out."""
        if self.started_at is None or self.finished_at is None:
            return 0.0
        return self.finished_at - self.started_at


class ReplaySession(VehicleSession):
    """A device's session that also counts its own acknowledgements and refusals."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.acked_here = 0
        self.refused: Counter[str] = Counter()
        self.login_error = ""  # the broker's last refusal of this device's login

    def _on_connect(self, client: Any, ud: object, flags: Any, reason: Any, props: Any) -> None:
        if reason.is_failure:
            self.login_error = f"the broker refused the login: {reason}"
        super()._on_connect(client, ud, flags, reason, props)

    def _on_publish(self, c: Any, ud: object, mid: int, reason: Any, props: Any) -> None:
        if mid in self.inflight:
            if reason.is_failure:
                self.refused[f"broker refused: {reason}"] += 1
            else:
                self.acked_here += 1
        super()._on_publish(c, ud, mid, reason, props)


class ReplayRunner(LiveRunner):
    """The simulator's live runner over a :class:`ReplayFleet`; each device may have its
    own password (``passwords``, device id -> password; default the settings' one)."""

    fleet: ReplayFleet
    sessions: list[ReplaySession]  # type: ignore[assignment]

    def __init__(
        self, fleet: ReplayFleet, *args: Any, passwords: dict[str, str] | None = None, **kwargs: Any
    ) -> None:
        super().__init__(fleet, *args, **kwargs)
        self.passwords = passwords or {}

    def make_session(self, v: Device, rng: random.Random) -> VehicleSession:
        conf = self.conf
        if v.vin in self.passwords:
            conf = replace(conf, password=self.passwords[v.vin])
        return ReplaySession(
            v.index,
            v.vin,
            v.firmware,
            conf,
            self.outbox,
            rng,
            self.stats,
            self.on_ack,
            self.ack_log,
        )

    def start(self) -> None:
        super().start()
        if self.fleet.speed is None:
            # Up to the window in flight and a memory backlog behind it: never to disk
            # while connected, and a device waits for its acks, not for the next tick.
            cap = self.conf.window + MEMORY_BACKLOG
            sessions = self.sessions
            self.fleet.room = lambda i: cap - sessions[i].backlog()


@dataclass
class DeviceResult:
    device: str
    rows: int
    replayed: int
    acked: int | None  # None: dry run
    rejected: Counter[str]
    # Live: replayed but neither acknowledged nor refused when the run ended, and why the
    # device could not log in (if it could not).
    unsent: int = 0
    login_error: str = ""

    @property
    def rejected_n(self) -> int:
        return sum(self.rejected.values())


def device_results(
    recording: Recording,
    fleet: ReplayFleet | None = None,
    sessions: list[ReplaySession] | None = None,
    replayed: dict[str, int] | None = None,
) -> list[DeviceResult]:
    """Per device: rows read, events replayed (handed to the session, or written), events
    the broker acknowledged, and rejections (local checks and broker refusals)."""
    by_device: dict[str, tuple[int, ReplaySession | None]] = {}
    if fleet is not None:
        for i, d in enumerate(fleet.rows):
            by_device[d.device] = (fleet.sent[i], sessions[i] if sessions else None)
    out = []
    for d in [*recording.devices.values(), recording.no_device]:
        if d.rows == 0:
            continue
        sent, session = by_device.get(d.device, (0, None))
        if replayed is not None:
            sent = replayed.get(d.device, 0)
        rejected = Counter(d.rejected)
        acked: int | None = None
        unsent, login_error = 0, ""
        if fleet is not None:
            acked = session.acked_here if session is not None else 0
            if session is not None:
                rejected.update(session.refused)
                unsent = sent - acked - sum(session.refused.values())
                login_error = "" if session.ever_connected else session.login_error
        out.append(DeviceResult(d.device, d.rows, sent, acked, rejected, unsent, login_error))
    return out


def write_dry_run(
    recording: Recording, out: Path, progress: Callable[[int], None] | None = None
) -> dict[str, int]:
    """``{"topic": ..., "payload": {...}}`` lines (what ``sim run --dry-run`` writes and
    ``cloud train --events`` reads) in the order a paced replay sends them; the payload is
    the event's bytes exactly. Written beside ``out`` and renamed at the end. Returns the
    events written per device."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".part")
    written: Counter[str] = Counter()
    with open(tmp, "wb", buffering=1 << 20) as fh:
        chunk: list[bytes] = []
        for d, i in recording.in_time_order():
            chunk.append(
                b'{"topic":"%s","payload":%s}\n'
                % (recording.topic(d.device).encode(), d.payloads[i])
            )
            written[d.device] += 1
            if len(chunk) >= 10_000:
                fh.write(b"".join(chunk))
                chunk = []
                if progress is not None:
                    progress(10_000)
        fh.write(b"".join(chunk))
        if progress is not None and chunk:
            progress(len(chunk))
    tmp.replace(out)
    return dict(written)


def events(recording: Recording) -> Iterator[tuple[str, bytes]]:
    """(topic, payload) of every accepted event, in paced send order."""
    for d, i in recording.in_time_order():
        yield recording.topic(d.device), d.payloads[i]
