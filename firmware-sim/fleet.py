"""The fleet: builds vehicles and drivers from a seed and advances them tick by tick.

Everything random comes from generators seeded by ``settings.seed`` (one per vehicle, one per
city, one for fraud), so the same settings give byte-identical events and labels.
"""

from __future__ import annotations

import hashlib
import heapq
import math
import random
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import msgspec
import numpy as np
from firmware_sim import faults as fault_mod
from firmware_sim import physics
from firmware_sim.geo import CITIES, CityMap
from firmware_sim.ids import make_card, make_name, make_vin
from firmware_sim.payments import FRAUDS, FraudContext, Planned, normal_fields
from firmware_sim.physics import NOISE_COLUMNS, FleetArrays
from firmware_sim.settings import FAULT_KINDS, FRAUD_KINDS, SimSettings
from firmware_sim.vehicle import Driver, Intent, Vehicle

from shared.contracts import Label, Payment, Telemetry
from shared.fleet_catalog import CATALOG, base_models

MODEL_WEIGHTS = {
    "citan-van": 0.3,
    "golf-estate": 0.25,
    "transit-lorry": 0.2,
    "e-transit": 0.15,
    "kangoo-e": 0.1,
}
DRIFT_MODEL = "vivaro-hybrid"
ROLLOUT_WINDOW_S = 300.0
# Telemetry's fields in order, positional: building the frame is cheaper than by keyword and
# encodes to the same JSON object as ``shared.contracts.Telemetry`` (the tests decode it so).
_Frame = msgspec.defstruct("_Frame", list(Telemetry.__struct_fields__))
_encode = msgspec.json.Encoder().encode


class Emitted(NamedTuple):
    """One MQTT message a vehicle publishes, with its ground truth (None when normal)."""

    vehicle: int
    topic: str
    payload: bytes
    label: Label | None


@dataclass
class FleetStats:
    telemetry: int = 0
    payments: int = 0
    faults: Counter[str] = field(default_factory=Counter)
    frauds: Counter[str] = field(default_factory=Counter)
    # Exposure, for checking label rates: driving vehicle-seconds without an active fault,
    # and legitimate payments (per kind: a kind that cannot apply is not counted).
    healthy_driving_s: float = 0.0
    fraud_opportunities: Counter[str] = field(default_factory=Counter)

    def as_dict(self) -> dict[str, object]:
        return {
            "telemetry": self.telemetry,
            "payments": self.payments,
            "faults": dict(self.faults),
            "frauds": dict(self.frauds),
            "healthy_driving_s": round(self.healthy_driving_s, 1),
            "fraud_opportunities": dict(self.fraud_opportunities),
        }


class Fleet:
    """A seeded fleet. ``records()``/``events()`` generate; ``labels`` holds ground truth."""

    def __init__(self, settings: SimSettings, start_ts: float | None = None) -> None:
        self.settings = settings
        self.start_ts = start_ts or settings.start_ts or round(time.time(), 3)
        digest = hashlib.blake2b(f"{settings.seed}:{self.start_ts}".encode(), digest_size=4)
        self.run_tag = digest.hexdigest()
        self.labels: list[Label] = []
        self.stats = FleetStats()
        self.tick = 0
        self._heap: list[tuple[float, int, Vehicle, dict[str, object], tuple | None]] = []
        self._order = 0
        self._episodes = 0
        self._fraud_rng = random.Random(f"{settings.seed}:fraud")
        self._noise = np.random.default_rng([settings.seed, 0x5E5])
        self._build()

    # --- construction ----------------------------------------------------------------------

    def _build(self) -> None:
        s = self.settings
        names = s.cities or tuple(c.name for c in CITIES)
        self.maps = {
            c.name: CityMap(c, random.Random(f"{s.seed}:city:{c.name}"))
            for c in CITIES
            if c.name in names
        }
        self._weather = {n: (1.0, 0.0) for n in self.maps}
        models = [m for m in base_models() if m.name in MODEL_WEIGHTS]
        weights = [MODEL_WEIGHTS[m.name] for m in models]
        self.vehicles: list[Vehicle] = []
        drift_at = self.start_ts + s.drift_start_s
        extra = math.ceil(s.vehicles * s.drift_fraction) if "new_model" in s.drift else 0
        self.arrays = FleetArrays(s.vehicles + extra)
        self._city_names = sorted(self.maps)
        # The rollout reaches its vehicles over ROLLOUT_WINDOW_S, or over the first third of
        # what is left of the drive when that is shorter: a short run ends with it done.
        rollout_window = min(ROLLOUT_WINDOW_S, max(s.duration_s - s.drift_start_s, 0.0) / 3)
        for i in range(s.vehicles + extra):
            rng = random.Random(f"{s.seed}:vehicle:{i}")
            model = rng.choices(models, weights)[0] if i < s.vehicles else CATALOG[DRIFT_MODEL]
            city = rng.randrange(len(self.maps))
            cmap = self.maps[self._city_names[city]]
            joins = self.start_ts if i < s.vehicles else drift_at + rng.uniform(0, 60)
            v = Vehicle(
                i,
                make_vin(rng, model.wmi, i + 1),
                model,
                _driver(rng, i, s.payment_rate),
                cmap,
                rng,
                self.arrays,
                city,
                joins,
            )
            if "firmware_rollout" in s.drift and i < s.vehicles and rng.random() < s.drift_fraction:
                v.rollout_at = drift_at + rng.uniform(0, rollout_window)
            self.vehicles.append(v)

    def credentials(self, password: str) -> dict[str, str]:
        """VIN -> password for every vehicle of the run (drift vehicles included)."""
        return {v.vin: password for v in self.vehicles}

    # --- generation ------------------------------------------------------------------------

    def events(self) -> Iterator[tuple[str, bytes]]:
        """(topic, payload) in publish order; ground truth accumulates in ``self.labels``."""
        for rec in self.records():
            yield rec.topic, rec.payload

    def records(self) -> Iterator[Emitted]:
        while self.tick < self.settings.ticks:
            yield from self.step()

    def step(self) -> list[Emitted]:
        """Advance every vehicle by one tick; the messages of that tick, in publish order."""
        s, a = self.settings, self.arrays
        dt = s.dt
        t = round(self.start_ts + self.tick * dt, 3)
        self.tick += 1
        if self.tick % max(1, int(1800 * s.rate_hz)) == 1:
            self._update_weather(t)
        n = len(self.vehicles)
        z = self._noise.standard_normal((n, NOISE_COLUMNS))
        u = self._noise.random(n)  # each vehicle's draw for a fault starting now
        joined = a.joins_at <= t
        if joined.all():
            ix: Any = slice(None)
            members = range(n)
        else:
            ix = np.flatnonzero(joined)
            members = ix.tolist()
            z, u = z[ix], u[ix]
        for i in np.flatnonzero(a.rollout_at[ix] <= t).tolist():
            _apply_rollout(self.vehicles[members[i]])
        intents: dict[int, list[Intent]] = {}
        weather, ambient = self._climate(t, a.city[ix])
        accel, stopped, at_line, past_end = physics.drive(a, ix, dt, weather, z[:, 0])
        for i in np.flatnonzero(at_line | past_end).tolist():
            v = self.vehicles[members[i]]
            v._arrive(intents.setdefault(v.index, []))
            if past_end[i]:
                v.s = min(v.s, v.road.length_m * 0.5)
        physics.place(a, ix, stopped)
        columns = physics.sense(a, ix, dt, ambient, accel, z)
        self._in_car(ix, members, dt, intents)
        self._faults_due(t, dt, ix, members, u)
        out: list[Emitted] = []
        for i, row in zip(members, zip(*columns, strict=True), strict=True):
            out.append(self._telemetry(self.vehicles[i], t, dt, row, intents.get(i)))
        self._drain_payments(t + dt, out)
        return out

    def _climate(self, t: float, city: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Weather factor and ambient temperature per vehicle, from its city's."""
        day = 5 * math.sin(2 * math.pi * ((t % 86400) / 3600 - 9) / 24)
        names = self._city_names
        factor = np.array([self._weather[c][0] for c in names])
        temp = np.array([self.maps[c].city.ambient_c + self._weather[c][1] + day for c in names])
        return factor[city], temp[city]

    def _in_car(self, ix: Any, members: Any, dt: float, intents: dict[int, list[Intent]]) -> None:
        a = self.arrays
        on = a.engine_on[ix]
        due = a.in_car_due[ix] - np.where(on, dt, 0.0)
        a.in_car_due[ix] = due
        for i in np.flatnonzero(on & (due <= 0)).tolist():
            v = self.vehicles[members[i]]
            v.in_car_purchase(intents.setdefault(v.index, []))

    def _telemetry(
        self, v: Vehicle, t: float, dt: float, row: tuple, intents: list[Intent] | None
    ) -> Emitted:
        v.seq += 1
        event_id = f"{self.run_tag}-{v.index:x}-{v.seq:x}"
        ep = v.fault
        lab = None
        if isinstance(ep, fault_mod.FaultEpisode):
            r = dict(zip(physics.READINGS, row, strict=True))
            ep.apply(r, t)
            row = tuple(r.values())
            lab = Label(
                event_id=event_id,
                stream="telemetry",
                kind=ep.kind,
                episode_id=ep.episode_id,
                start_ts=ep.start_ts,
                end_ts=ep.end_ts,
            )
            self.labels.append(lab)
        payload = _encode(
            _Frame(1, event_id, t, v.vin, v.driver.driver_id, v.model.name, v.firmware, *row)
        )
        self.stats.telemetry += 1
        if intents:
            for intent in intents:
                self._payment_opportunity(v, t + v.rng.uniform(0.05, 0.9) * dt, intent)
        return Emitted(v.index, v.telemetry_topic, payload, lab)

    def _faults_due(self, t: float, dt: float, ix: Any, members: Any, u: np.ndarray) -> None:
        """End faults that are over; start new ones on healthy driving vehicles."""
        a = self.arrays
        for i in np.flatnonzero(a.has_fault[ix]).tolist():
            v = self.vehicles[members[i]]
            ep = v.fault
            if isinstance(ep, fault_mod.FaultEpisode) and t > ep.end_ts:
                v.fault = None
                a.has_fault[v.index] = False
        healthy = a.engine_on[ix] & (a.speed[ix] > 1.0) & ~a.has_fault[ix]
        self.stats.healthy_driving_s += dt * int(np.count_nonzero(healthy))
        total = 0.0
        for kind in FAULT_KINDS:
            total += self.settings.fault_rates.get(kind, 0.0) * dt / 3600
        for i in np.flatnonzero(healthy & (u < total)).tolist():
            self._start_fault(self.vehicles[members[i]], t, dt, float(u[i]))

    def _start_fault(self, v: Vehicle, t: float, dt: float, u: float) -> None:
        acc = 0.0
        for kind in FAULT_KINDS:
            acc += self.settings.fault_rates.get(kind, 0.0) * dt / 3600
            if u < acc:
                self._episodes += 1
                end_cap = self.start_ts + (self.settings.ticks - 1) * dt
                ep = fault_mod.plan_fault(
                    kind,
                    f"ep-{self._episodes}",
                    t,
                    v.rng,
                    v.model.is_ev,
                    v.model.tyre_kpa,
                    v.thermostat,
                )
                ep.end_ts = round(max(min(ep.end_ts, end_cap), t), 3)
                if kind == "miscalibration":
                    v.firmware = _bump_patch(v.firmware)  # it came with an update
                v.fault = ep
                self.arrays.has_fault[v.index] = True
                self.stats.faults[kind] += 1
                return

    # --- payments --------------------------------------------------------------------------

    def _payment_opportunity(self, v: Vehicle, ts: float, intent: Intent) -> None:
        self._push(ts, v, normal_fields(v, intent), None)
        rates = self.settings.fraud_rates
        rng = self._fraud_rng
        u = rng.random()
        acc = 0.0
        chosen = None
        for kind in FRAUD_KINDS:
            if kind == "fuel_over_capacity" and v.model.is_ev:
                continue
            self.stats.fraud_opportunities[kind] += 1
            acc += rates.get(kind, 0.0)
            if chosen is None and u < acc:
                chosen = kind
        if chosen is None:
            return
        ctx = FraudContext(rng, ts, v, intent, self._other_vehicle, self.maps)
        planned: list[Planned] = FRAUDS[chosen](ctx)
        if not planned:
            return
        self._episodes += 1
        self.stats.frauds[chosen] += 1
        start = min(p[0] for p in planned)
        end = max(p[0] for p in planned)
        for pts, pv, fields in planned:
            base = normal_fields(pv, intent)
            base.update(fields)
            self._push(
                pts, pv, base, (chosen, f"ep-{self._episodes}", round(start, 3), round(end, 3))
            )

    def _other_vehicle(self) -> Vehicle:
        return self.vehicles[self._fraud_rng.randrange(self.settings.vehicles)]

    def _push(self, ts: float, v: Vehicle, fields: dict[str, object], label: tuple | None) -> None:
        self._order += 1
        heapq.heappush(self._heap, (round(ts, 3), self._order, v, fields, label))

    def _drain_payments(self, until: float, out: list[Emitted]) -> None:
        heap = self._heap
        while heap and heap[0][0] < until:
            ts, _, v, fields, label = heapq.heappop(heap)
            v.seq += 1
            event_id = f"{self.run_tag}-{v.index:x}-{v.seq:x}"
            msg = Payment(event_id=event_id, ts=ts, **fields)  # type: ignore[arg-type]
            self.stats.payments += 1
            lab = None
            if label is not None:
                kind, episode, start, end = label
                lab = Label(
                    event_id=event_id,
                    stream="payments",
                    kind=kind,
                    episode_id=episode,
                    start_ts=start,
                    end_ts=end,
                )
                self.labels.append(lab)
            out.append(Emitted(v.index, v.payments_topic, msgspec.json.encode(msg), lab))

    def _update_weather(self, t: float) -> None:
        for name in sorted(self._weather):
            rng = random.Random(f"{self.settings.seed}:weather:{name}:{int(t // 1800)}")
            rain = rng.random() < 0.3
            self._weather[name] = (
                0.88 if rain else 1.0,
                rng.uniform(-3, -1) if rain else rng.uniform(-1, 2),
            )


def _driver(rng: random.Random, index: int, payment_rate: float) -> Driver:
    name = make_name(rng)
    driver = Driver(
        driver_id=f"DRV-{index + 1:06d}",
        name=name,
        card=make_card(rng),
        style=rng.uniform(0.75, 1.3),
        fuel_threshold=rng.uniform(0.12, 0.35),
        full_fill=rng.uniform(0.4, 0.95),
        park_prob=rng.uniform(0.05, 0.3),
        park_hours_mu=rng.uniform(-0.5, 0.8),
        in_car_per_h=rng.uniform(0.3, 2.5),
        in_car_mu=rng.uniform(1.0, 2.8),
        in_car_sigma=rng.uniform(0.2, 0.5),
        favourite_in_car=rng.randrange(1_000_000),
    )
    # ``payment_rate`` scales how often drivers pay (denser payment data for training).
    driver.in_car_per_h *= payment_rate
    driver.park_prob = min(0.9, driver.park_prob * payment_rate)
    return driver


def _bump_patch(version: str) -> str:
    parts = version.split(".")
    parts[-1] = str(int(parts[-1]) + 1) if parts[-1].isdigit() else parts[-1] + "1"
    return ".".join(parts)


def _apply_rollout(v: Vehicle) -> None:
    """A firmware rollout: new engine map and sensor calibration shift normal readings."""
    major = int(v.model.firmware.split(".")[0]) + 1
    v.firmware = f"{major}.0.0"
    v.thermostat = v.model.thermostat_c + 6.0
    v.oil_gain = 1.12
    v.tyre_gain = 1.03
    v.rollout_at = None
