"""Live runs: every vehicle a real MQTT session, all driven from one selector loop.

A thread per vehicle would cost 10,000 stacks and a GIL convoy; instead paho's socket
callbacks register each session's socket with one ``selectors`` loop, which calls
``loop_read``/``loop_write`` only for sockets that are ready and ``loop_misc`` once a second
for keepalives. The fleet generator is ticked by the same loop at the configured rate.
"""

from __future__ import annotations

import heapq
import random
import resource
import selectors
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import paho.mqtt.client as mqtt
from firmware_sim.acklog import AckLog
from firmware_sim.errors import ConnectError
from firmware_sim.fleet import Emitted, FleetStats
from firmware_sim.labels import LabelFeed
from firmware_sim.outbox import Outbox
from firmware_sim.session import (
    ConnectSettings,
    SessionStats,
    VehicleSession,
    describe_connect_error,
)
from firmware_sim.wire import check_compatible

from shared.contracts import Label

CONNECTS_PER_LOOP = 500
CONNECT_BUDGET_S = 0.05
CONNECT_TIMEOUT_S = 30.0
MISC_SHARDS = 4  # keepalive must stay well above this many seconds
READ = selectors.EVENT_READ
WRITE = selectors.EVENT_WRITE


class Device(Protocol):
    """One session's identity: its place in the fleet, its login and client id."""

    @property
    def index(self) -> int: ...

    @property
    def vin(self) -> str: ...

    @property
    def firmware(self) -> str: ...


class SourceSettings(Protocol):
    @property
    def seed(self) -> int: ...

    @property
    def dt(self) -> float: ...  # seconds between two calls of ``step``

    @property
    def ticks(self) -> int: ...  # ``step`` calls planned

    @property
    def duration_s(self) -> float: ...


class EventSource(Protocol):
    """What a :class:`LiveRunner` drives: a simulated :class:`~firmware_sim.fleet.Fleet`, or
    a recording replayed (:mod:`firmware_sim.replay_run`). ``step`` is called every ``dt``
    seconds of wall time while ``tick < settings.ticks`` and returns what is due."""

    @property
    def vehicles(self) -> Sequence[Device]: ...

    @property
    def settings(self) -> SourceSettings: ...

    @property
    def tick(self) -> int: ...

    @property
    def start_ts(self) -> float: ...

    @property
    def labels(self) -> list[Label]: ...

    @property
    def stats(self) -> FleetStats: ...

    def step(self) -> list[Emitted]: ...


def raise_fd_limit(needed: int) -> int:
    """Raise the soft open-files limit toward the hard one; returns the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(needed, 1_048_576)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    return soft


@dataclass
class Progress:
    """What the live display shows; updated by the loop, read by the display."""

    vehicles: int = 0
    connected: int = 0
    generated: int = 0
    acked: int = 0
    rejected: int = 0
    buffered: int = 0
    dropped: int = 0
    reconnects: int = 0
    faults: int = 0
    frauds: int = 0
    declines: int = 0
    labels_delivered: int = 0
    labels_pending: int = 0
    connect_errors: int = 0
    last_connect_error: str = ""
    events_per_s: float = 0.0
    elapsed_s: float = 0.0
    ticks: int = 0
    ticks_planned: int = 0
    phase: str = "connecting"
    # Process CPU seconds since the clock started (generation, publishing, acks, draining):
    # on a shared machine, CPU per event says more about the simulator than events/s.
    cpu_s: float = 0.0


@dataclass
class LiveResult:
    progress: Progress
    fleet_stats: dict[str, Any]
    declines: list[dict[str, Any]] = field(default_factory=list)
    drained: bool = True
    connect_errors: dict[str, int] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        p = self.progress
        return {
            "vehicles": p.vehicles,
            "generated": p.generated,
            "acked": p.acked,
            "rejected": p.rejected,
            "buffered_left": p.buffered,
            "dropped": p.dropped,
            "connects": p.reconnects,
            "connect_errors": self.connect_errors,
            "declined": p.declines,
            "drained": self.drained,
            "elapsed_s": round(p.elapsed_s, 2),
            "cpu_s": round(p.cpu_s, 3),
            "cpu_us_per_event": round(p.cpu_s / max(p.acked, 1) * 1e6, 1),
            "ticks": p.ticks,
            "ticks_planned": p.ticks_planned,
            "fleet": self.fleet_stats,
        }


class LiveRunner:
    """Runs a fleet against a broker; ``stop()`` (from a signal or another thread) ends early.

    If not one vehicle connects within ``connect_wait_s``, ``run()`` raises
    :class:`~firmware_sim.errors.ConnectError` with the reason (wrong address, CA or
    password are likelier than a broker that is briefly away); once any vehicle has
    connected, vehicles that cannot keep retrying with backoff and buffer meanwhile.
    """

    def __init__(
        self,
        fleet: EventSource,
        conf: ConnectSettings,
        buffer_dir: Path,
        max_buffered_per_vehicle: int = 50_000,
        drain_timeout_s: float = 60.0,
        connect_wait_s: float = 30.0,
        on_progress: Callable[[Progress], None] | None = None,
        on_ack: Callable[[str], None] | None = None,
        labels: LabelFeed | None = None,
        ack_log: AckLog | None = None,
        linger_s: float = 0.0,
        on_drained: Callable[[Progress], None] | None = None,
    ) -> None:
        self.fleet = fleet
        self.ack_log = ack_log
        self.linger_s = linger_s
        self.on_drained = on_drained
        self.labels = labels
        self.conf = conf
        self.outbox = Outbox(buffer_dir / "outbox.sqlite", max_buffered_per_vehicle)
        self.drain_timeout_s = drain_timeout_s
        self.connect_wait_s = connect_wait_s
        self.on_progress = on_progress
        self.on_ack = on_ack
        self.stats = SessionStats()
        self.progress = Progress(vehicles=len(fleet.vehicles))
        self.sessions: list[VehicleSession] = []
        self._sel: selectors.BaseSelector | None = None
        self._connect_due: list[tuple[float, int]] = []
        self._dirty: list[VehicleSession] = []  # sessions with packets queued to send
        self._armed: set[int] = set()  # sessions waiting for the selector's "writable"
        self._stop = False
        self._finish = False
        self._cpu0: float | None = None
        self._misc_turn = 0

    def stop(self) -> None:
        self._stop = True

    def finish(self) -> None:
        """End the drive now as if its duration were over: drain, linger, close."""
        self._finish = True

    # --- selector plumbing ------------------------------------------------------------------

    def _callbacks(self, session: VehicleSession) -> dict[str, Callable[..., None]]:
        sel = self._sel
        assert sel is not None

        def opened(_c: mqtt.Client, _ud: object, sock: socket.socket) -> None:
            sel.register(sock, READ, session)

        def closed(_c: mqtt.Client, _ud: object, sock: socket.socket) -> None:
            self._armed.discard(session.index)
            try:
                sel.unregister(sock)
            except (KeyError, ValueError):
                pass
            if not self._stop or session.backlog():
                self._schedule(session, session.backoff())

        def want_write(_c: mqtt.Client, _ud: object, _sock: socket.socket) -> None:
            # No selector call per message: the loop writes queued packets itself once per
            # pass and asks the selector only about sockets whose send buffer was full.
            self._dirty.append(session)

        def wrote(_c: mqtt.Client, _ud: object, sock: socket.socket) -> None:
            if session.index in self._armed:
                self._armed.discard(session.index)
                try:
                    sel.modify(sock, READ, session)
                except (KeyError, ValueError):
                    pass

        return {
            "on_socket_open": opened,
            "on_socket_close": closed,
            "on_socket_register_write": want_write,
            "on_socket_unregister_write": wrote,
        }

    def _schedule(self, session: VehicleSession, delay: float) -> None:
        heapq.heappush(self._connect_due, (time.monotonic() + delay, session.index))

    def _connect_some(self, now: float) -> None:
        due = self._connect_due
        n = 0
        budget_end = time.monotonic() + CONNECT_BUDGET_S
        while due and due[0][0] <= now and n < CONNECTS_PER_LOOP and time.monotonic() < budget_end:
            _, idx = heapq.heappop(due)
            s = self.sessions[idx]
            if s.connected or s.connecting_since is not None:
                continue
            n += 1
            try:
                s.connect()
            except OSError as exc:  # TLS errors included (ssl.SSLError is an OSError)
                self.stats.connect_failed(describe_connect_error(exc, bool(self.conf.tls_ca)))
                s.connecting_since = None
                self._schedule(s, s.backoff())

    # --- the loop ---------------------------------------------------------------------------

    def start(self) -> None:
        check_compatible()
        raise_fd_limit(len(self.fleet.vehicles) * 2 + 256)
        self.outbox.start()
        if self.ack_log is not None:
            self.ack_log.start()
        self._sel = selectors.DefaultSelector()
        rng = random.Random(f"{self.fleet.settings.seed}:sessions")
        for v in self.fleet.vehicles:
            s = self.make_session(v, random.Random(rng.getrandbits(64)))
            s.make_client(self._callbacks(s))
            self.sessions.append(s)
            # Spread the first connects over a second so the broker's accept queue keeps up.
            self._schedule(s, rng.uniform(0, 1.0))

    def make_session(self, v: Device, rng: random.Random) -> VehicleSession:
        """One device's session (a subclass may give each device its own login)."""
        return VehicleSession(
            v.index,
            v.vin,
            v.firmware,
            self.conf,
            self.outbox,
            rng,
            self.stats,
            self.on_ack,
            self.ack_log,
        )

    def run(self) -> LiveResult:
        """Generate for the run's duration at the configured rate, then drain and close."""
        if self._sel is None:
            self.start()
        assert self._sel is not None
        self._connect_phase()
        if not self.stats.connects and not self._stop:
            self._close()
            raise ConnectError(self._no_connect_message())
        t0 = time.monotonic()
        self._cpu0 = time.process_time()
        self._generate_and_drain(t0)
        return self._wrap_up(t0)

    def _generate_and_drain(self, t0: float) -> None:
        """Tick the fleet at its rate until the run is over (its ticks or its time done, or
        stopped), then serve the sessions until everything is acknowledged or the drain
        times out; connects, polls and progress all along."""
        fleet, dt = self.fleet, self.fleet.settings.dt
        next_tick, next_misc = t0, t0
        # Live time is wall time: a loop that cannot keep up generates fewer ticks, it does
        # not run past the end (the summary reports ticks done against ticks planned).
        gen_end = t0 + fleet.settings.duration_s
        drain_end: float | None = None
        last_acked, last_rate_t = 0, t0
        while True:
            now = time.monotonic()
            generating = (
                fleet.tick < fleet.settings.ticks
                and not self._stop
                and not self._finish
                and now < gen_end
            )
            if not generating and drain_end is None:
                drain_end = now + self.drain_timeout_s
                self.progress.phase = "draining"
            if generating:
                self.progress.phase = "running"
            if drain_end is not None and (self._drained() or now >= drain_end):
                break
            self._connect_some(now)
            timeout = max(0.0, min((next_tick if generating else now + 0.05) - now, 0.05))
            self._poll(timeout)
            now = time.monotonic()
            if generating and now >= next_tick:
                self._tick()
                next_tick += dt
                if next_tick < now - 5 * dt:  # fell behind: do not burst to catch up
                    next_tick = now
            if now >= next_misc:
                next_misc = now + 1.0
                self._misc(now)
                self.progress.events_per_s = (self.stats.acked - last_acked) / max(
                    now - last_rate_t, 1e-6
                )
                last_acked, last_rate_t = self.stats.acked, now
                self._update_progress(now - t0)

    def _wrap_up(self, t0: float) -> LiveResult:
        """After the drain: the ack log flushed, the linger, the sessions closed."""
        drained = self._drained()
        self._update_progress(time.monotonic() - t0)
        if self.ack_log is not None:
            self.ack_log.flush()
        if self.on_drained is not None:
            self.on_drained(self.progress)
        self._linger(t0)
        cpu = self.progress.cpu_s
        self._close()
        self._update_progress(time.monotonic() - t0)
        self.progress.cpu_s = cpu  # the goodbye is not part of the run's cost
        return LiveResult(
            self.progress,
            self.fleet.stats.as_dict(),
            list(self.stats.declines),
            drained,
            dict(self.stats.connect_errors.most_common(5)),
        )

    def _linger(self, t0: float) -> None:
        """Stay online (reconnecting if the broker goes away) until ``linger_s`` is over or
        ``stop()``: what arrives meanwhile is commands, nothing is generated."""
        end = time.monotonic() + self.linger_s
        if self._stop or self.linger_s <= 0:
            return
        self.progress.phase = "lingering"
        next_misc = time.monotonic()
        while not self._stop and time.monotonic() < end:
            now = time.monotonic()
            self._connect_some(now)
            self._poll(0.05)
            if now >= next_misc:
                next_misc = now + 1.0
                self._misc(now)
                self._update_progress(now - t0)

    def _connect_phase(self) -> None:
        """Ignition on: bring the fleet online before the clock starts (bounded in time).

        Vehicles that are still offline when it ends buffer their events on disk.
        """
        t0 = time.monotonic()
        deadline = t0 + self.connect_wait_s
        next_misc = t0
        while not self._stop and time.monotonic() < deadline:
            now = time.monotonic()
            self._connect_some(now)
            self._poll(0.01)
            if now >= next_misc:
                next_misc = now + 1.0
                self._misc(now)
                self._update_progress(0.0)
                if self.progress.connected == len(self.sessions):
                    return

    def _no_connect_message(self) -> str:
        errors = self.stats.connect_errors
        where = f"{self.conf.host}:{self.conf.port}{' (TLS)' if self.conf.tls_ca else ''}"
        if not errors:
            return (
                f"no vehicle connected to {where} within {self.connect_wait_s:g} s "
                "and no error came back; is the broker overloaded?"
            )
        reason, count = errors.most_common(1)[0]
        return (
            f"no vehicle could connect to {where} within {self.connect_wait_s:g} s: "
            f"{reason} ({count} of {sum(errors.values())} failed attempts)"
        )

    def _poll(self, timeout: float) -> None:
        assert self._sel is not None
        self._flush()
        for key, mask in self._sel.select(timeout):
            c: mqtt.Client | None = key.data.client
            if c is None:
                continue
            if mask & READ:
                c.loop_read()
            if mask & WRITE:
                c.loop_write()
        self._flush()

    def _flush(self) -> None:
        """Write what every session queued since the last pass: one send per socket."""
        dirty, self._dirty = self._dirty, []
        sel = self._sel
        assert sel is not None
        for s in dirty:
            c = s.client
            if c is None or c.socket() is None:
                continue
            c.loop_write()
            if c.want_write() and s.index not in self._armed:
                sock = c.socket()
                try:
                    sel.modify(sock, READ | WRITE, s)  # type: ignore[arg-type]
                    self._armed.add(s.index)
                except (KeyError, ValueError):
                    pass

    def _tick(self) -> None:
        for rec in self.fleet.step():
            self.sessions[rec.vehicle].send(rec.topic, rec.payload)
            self.progress.generated += 1
        self.outbox.commit()
        if self.labels is not None:
            fleet = self.fleet
            self.labels.collect(fleet.labels)
            # The run's clock: the device time of the tick just generated.
            self.labels.pump(fleet.start_ts + (fleet.tick - 1) * fleet.settings.dt)

    def _misc(self, now: float) -> None:
        # Keepalive pings and connect timeouts need checking every few seconds, not every
        # second: a quarter of the fleet per call keeps this off the per-event bill.
        self._misc_turn = (self._misc_turn + 1) % MISC_SHARDS
        for s in self.sessions[self._misc_turn :: MISC_SHARDS]:
            c = s.client
            if c is None:
                continue
            if s.connecting_since is not None and now - s.connecting_since > CONNECT_TIMEOUT_S:
                s.connecting_since = None
                self.stats.connect_failed(f"no CONNACK within {CONNECT_TIMEOUT_S:g} s")
                c.disconnect()  # closes the socket; the close callback schedules a retry
                continue
            if s.connected:
                c.loop_misc()
                s.pump()
        self.outbox.commit()
        if self.ack_log is not None:
            self.ack_log.flush()
        if self.labels is not None:
            self.labels.pump(float("-inf"))  # delivery reports only, nothing new is due

    def _drained(self) -> bool:
        # Every generated event ends acked, rejected or dropped: the counters rule out most
        # calls cheaply, before a scan of 10,000 sessions on every loop pass would.
        st = self.stats
        if st.acked + st.rejected + self.outbox.dropped < self.progress.generated:
            return False
        return all(not s.backlog() for s in self.sessions)

    def _update_progress(self, elapsed: float) -> None:
        p, st = self.progress, self.fleet.stats
        p.connected = sum(1 for s in self.sessions if s.connected)
        p.acked, p.rejected = self.stats.acked, self.stats.rejected
        p.buffered = sum(s.backlog() for s in self.sessions)
        p.dropped = self.outbox.dropped
        p.reconnects = self.stats.connects
        p.faults, p.frauds = sum(st.faults.values()), sum(st.frauds.values())
        p.declines = len(self.stats.declines)
        if self.labels is not None:
            p.labels_delivered, p.labels_pending = self.labels.delivered, self.labels.pending
        p.connect_errors = self.stats.failures
        p.last_connect_error = self.stats.last_connect_error
        p.elapsed_s = elapsed
        if self._cpu0 is not None:
            p.cpu_s = time.process_time() - self._cpu0
        p.ticks, p.ticks_planned = self.fleet.tick, self.fleet.settings.ticks
        if self.on_progress is not None:
            self.on_progress(p)

    def _close(self) -> None:
        """Say goodbye like firmware shutting down: retained offline status, DISCONNECT."""
        self._stop = True
        for s in self.sessions:
            if s.connected and s.client is not None:
                s.publish_offline()
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline and any(
            s.client is not None and s.client.want_write() for s in self.sessions if s.connected
        ):
            self._poll(0.05)
        for s in self.sessions:
            if s.client is not None and s.connected:
                s.client.disconnect()
                s.client.loop_write()
        self._poll(0.1)
        if self._sel is not None:
            for key in list(self._sel.get_map().values()):
                try:
                    key.fileobj.close()  # type: ignore[union-attr]
                except OSError:
                    pass
            self._sel.close()
            self._sel = None
        self.outbox.close()
        if self.ack_log is not None:
            self.ack_log.close()
