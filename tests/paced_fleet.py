"""A simulated fleet driven faster than real time, in phases, for end-to-end tests.

Device time still advances one frame interval per tick (episodes, rolling features and the
60 s detection window stay in device time); only the live runner's pacing is ``speed`` times
faster. ``until_tick`` lets a test drive one fleet in phases (drive, act, drive on) without
the vehicles restarting.
"""

from __future__ import annotations

from typing import Any, cast

import msgspec
from firmware_sim import Fleet


class _EventId(msgspec.Struct):
    event_id: str


class PacedSettings:
    """What the live runner reads of a fleet's settings, paced ``speed`` times faster.

    ``slack`` > 1 lets the runner go on past the nominal wall time when it falls behind, so
    every tick up to ``until_tick`` is generated: the same seed then gives the same events
    however busy the machine is (1 keeps the live rule: a late runner generates fewer ticks).
    """

    def __init__(self, fleet: Fleet, speed: float, until_tick: int, slack: float = 1.0) -> None:
        s = fleet.settings
        self.dt = s.dt / speed
        self.ticks = until_tick
        self.duration_s = max(0, until_tick - fleet.tick) * self.dt * slack
        self.seed = s.seed


class FastFleet:
    """A Fleet whose ticks the live runner paces ``speed`` times faster than real time.

    Records every event it generates: ``events[event_id] = (stream, vin)``.
    """

    def __init__(
        self,
        fleet: Fleet,
        speed: float,
        until_tick: int | None = None,
        events: dict[str, tuple[str, str]] | None = None,
        slack: float = 1.0,
    ) -> None:
        self._fleet = fleet
        self.settings = PacedSettings(
            fleet,
            speed,
            fleet.settings.ticks if until_tick is None else min(until_tick, fleet.settings.ticks),
            slack,
        )
        self.events: dict[str, tuple[str, str]] = {} if events is None else events

    def step(self) -> list[Any]:
        recs = self._fleet.step()
        for r in recs:
            _, vin, stream = r.topic.split("/")
            self.events[msgspec.json.decode(r.payload, type=_EventId).event_id] = (stream, vin)
        return recs

    def __getattr__(self, name: str) -> Any:
        return getattr(self._fleet, name)

    def as_fleet(self) -> Fleet:
        """This stand-in, typed as the Fleet the live runner takes: the runner reads the
        settings above, step() and the wrapped fleet's attributes, passed through."""
        return cast(Fleet, self)
