"""Injected sensor faults: each an episode with a start and an end, applied to healthy readings.

Every kind reaches clearly abnormal values within seconds to tens of seconds of its labelled
start (a real slow tyre leak takes hours; here it is a fast one), so "alerted within 60 s of
the start" is a fair test of a detector. Faults start only while the vehicle drives, because a
parked vehicle hides most of them (oil pressure is 0 with the engine off anyway).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

TYRES = ("tyre_fl_kpa", "tyre_fr_kpa", "tyre_rl_kpa", "tyre_rr_kpa")
DURATION_S = {
    "overheating": (120, 420),
    "tyre_leak": (180, 600),
    "battery_degradation": (180, 600),
    "stuck_sensor": (60, 300),
    "spikes": (30, 120),
    "miscalibration": (300, 900),
}
# A spike adds this much to the reading: far outside anything the sensor reads healthy.
SPIKE = {
    "coolant_c": 85.0,
    "oil_kpa": 550.0,
    "rpm": 9000.0,
    "speed_kmh": 160.0,
    "battery_v": 7.0,
    "intake_c": 90.0,
    "tyre_fl_kpa": 300.0,
    "tyre_rr_kpa": 300.0,
}
# Open-circuit rails a failed sensor reads as a flat line.
STUCK = {
    "coolant_c": -40.0,
    "intake_c": -40.0,
    "tyre_fl_kpa": 0.0,
    "tyre_rl_kpa": 0.0,
    "battery_v": 0.0,
}


@dataclass
class FaultEpisode:
    kind: str
    episode_id: str
    start_ts: float
    end_ts: float
    sensor: str
    rate: float
    rng: random.Random
    base: float = 0.0  # the model's thermostat temperature

    def active(self, t: float) -> bool:
        return self.start_ts <= t <= self.end_ts

    def apply(self, r: dict[str, float | int | str], t: float) -> None:
        """Turn healthy readings ``r`` at time ``t`` into what the faulty vehicle reports."""
        e = t - self.start_ts
        getattr(self, "_" + self.kind)(r, e)

    def _overheating(self, r: dict, e: float) -> None:
        rise = min(self.rate * (e + 4), 48.0)
        # A failing pump or a coolant loss overheats from the regulated temperature, even
        # when it strikes during warm-up: the reading jumps to the thermostat and climbs.
        r["coolant_c"] = round(max(float(r["coolant_c"]), self.base) + rise, 2)
        r["intake_c"] = round(r["intake_c"] + rise * 0.25, 2)

    def _tyre_leak(self, r: dict, e: float) -> None:
        s = self.sensor
        r[s] = round(max(r[s] - self.rate * (e + 5), 40.0), 1)

    def _battery_degradation(self, r: dict, e: float) -> None:
        r["battery_v"] = round(r["battery_v"] - min(0.12 * (e + 5), 2.6), 3)
        r["soc_pct"] = round(max(r["soc_pct"] - min(self.rate * (e + 5), 45.0), 0.0), 2)

    def _stuck_sensor(self, r: dict, e: float) -> None:
        r[self.sensor] = STUCK[self.sensor]

    def _spikes(self, r: dict, e: float) -> None:
        # The first frame always spikes (the labelled start is when the sensor went bad);
        # after that, roughly every other frame.
        if e < 1e-9 or self.rng.random() < 0.5:
            s = self.sensor
            r[s] = round(float(r[s]) + SPIKE[s] * self.rng.uniform(0.9, 1.3), 2)

    def _miscalibration(self, r: dict, e: float) -> None:
        s = self.sensor
        if s == "coolant_c":
            r[s] = round(float(r[s]) + 30.0, 2)
        elif s == "intake_c":
            r[s] = round(float(r[s]) + 50.0, 2)
        else:  # every tyre reads ~30 % low: a wrong scale factor in the new firmware
            for tyre in TYRES:
                r[tyre] = round(float(r[tyre]) * 0.7, 1)


def plan_fault(
    kind: str,
    episode_id: str,
    t: float,
    rng: random.Random,
    is_ev: bool,
    tyre_kpa: float,
    thermostat: float,
) -> FaultEpisode:
    lo, hi = DURATION_S[kind]
    end = t + rng.uniform(lo, hi)
    sensor, rate = "", 0.0
    if kind == "overheating":
        rate = rng.uniform(0.8, 1.6)
    elif kind == "tyre_leak":
        sensor, rate = rng.choice(TYRES), rng.uniform(1.5, 3.0) * tyre_kpa / 250
    elif kind == "battery_degradation":
        rate = rng.uniform(0.15, 0.35)
    elif kind == "stuck_sensor":
        sensor = rng.choice(sorted(STUCK))
    elif kind == "spikes":
        choices = sorted(s for s in SPIKE if not (is_ev and s == "oil_kpa"))
        sensor = rng.choice(choices)
    elif kind == "miscalibration":
        sensor = rng.choice(("coolant_c", "intake_c", "tyres"))
    return FaultEpisode(
        kind, episode_id, t, end, sensor, rate, random.Random(rng.getrandbits(64)), thermostat
    )
