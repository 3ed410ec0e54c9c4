"""Telemetry features: the readings, stateless cross-sensor facts, and per-vehicle rolling stats.

Every function is pure: it reads a Telemetry event (and the vehicle's previous state) and returns
a new dict or a new state.
"""

from __future__ import annotations

import math

from shared.contracts import Telemetry
from shared.features.guard import fin, log1p_pos
from shared.features.state import VehicleState

READINGS = (
    "speed_kmh", "rpm", "gear", "coolant_c", "intake_c", "oil_kpa", "battery_v", "soc_pct",
    "tyre_fl_kpa", "tyre_fr_kpa", "tyre_rl_kpa", "tyre_rr_kpa", "fuel_pct", "odometer_km",
    "accel_x_g", "accel_y_g", "accel_z_g", "ambient_c",
)
# Sensors with per-vehicle rolling statistics, and a typical spread for each: the prior
# deviation before a vehicle has history, and a floor so a flat-lining sensor cannot make
# the z-score explode.
ROLLING = (
    "speed_kmh", "rpm", "coolant_c", "intake_c", "oil_kpa", "battery_v", "soc_pct",
    "tyre_fl_kpa", "tyre_fr_kpa", "tyre_rl_kpa", "tyre_rr_kpa", "fuel_pct", "ambient_c",
)
PRIOR_STD = (20.0, 800.0, 5.0, 5.0, 50.0, 0.3, 10.0, 10.0, 10.0, 10.0, 10.0, 10.0, 3.0)
MIN_STD = tuple(s * 0.05 for s in PRIOR_STD)
# Sensors whose analogue noise makes exact repeats rare: a run of identical values means stuck.
NOISY = ("coolant_c", "intake_c", "oil_kpa", "battery_v", "tyre_fl_kpa", "tyre_fr_kpa",
         "tyre_rl_kpa", "tyre_rr_kpa", "ambient_c")
_NOISY_IDX = tuple(ROLLING.index(s) for s in NOISY)
ALPHA = 0.05  # EWMA weight: about the last 20 frames
MIN_DT_S = 0.5
Z_LIMIT = 20.0
RATE_LIMIT = 50.0  # in prior deviations per second
STUCK_CAP = 3600


def readings(event: Telemetry) -> dict[str, float]:
    """The sensor values as floats (finite, clipped)."""
    return {name: fin(float(getattr(event, name))) for name in READINGS}


def cross_sensor(event: Telemetry) -> dict[str, float]:
    """Facts that need no history: tyre spread, engine heat over ambient, acceleration size."""
    tyres = (event.tyre_fl_kpa, event.tyre_fr_kpa, event.tyre_rl_kpa, event.tyre_rr_kpa)
    mean_tyre = sum(tyres) / 4
    accel = math.sqrt(fin(event.accel_x_g, -100, 100) ** 2 + fin(event.accel_y_g, -100, 100) ** 2
                      + fin(event.accel_z_g, -100, 100) ** 2)
    return {
        "tyre_spread_kpa": fin(max(tyres) - min(tyres)),
        "tyre_min_dev_kpa": fin(min(tyres) - mean_tyre),
        "coolant_minus_ambient_c": fin(event.coolant_c - event.ambient_c),
        "intake_minus_ambient_c": fin(event.intake_c - event.ambient_c),
        "accel_g": fin(accel),
    }


def rolling(event: Telemetry, state: VehicleState | None) -> dict[str, float]:
    """Each sensor against the vehicle's own recent behaviour (before this frame counts)."""
    out: dict[str, float] = {}
    if state is None:
        for name in ROLLING:
            out[f"{name}_z"] = 0.0
            out[f"{name}_rate"] = 0.0
        out["stuck_frames"] = 0.0
        out["frame_gap_s"] = 0.0
        out["history"] = 0.0
        return out
    dt = max(MIN_DT_S, fin(event.ts - state.ts, 0.0))
    for i, name in enumerate(ROLLING):
        x = fin(float(getattr(event, name)))
        std = max(MIN_STD[i], math.sqrt(state.var[i]))
        out[f"{name}_z"] = fin((x - state.mean[i]) / std, -Z_LIMIT, Z_LIMIT)
        out[f"{name}_rate"] = fin((x - state.last[i]) / dt / PRIOR_STD[i], -RATE_LIMIT, RATE_LIMIT)
    stuck = max((state.same[i] + 1 if fin(getattr(event, ROLLING[i])) == state.last[i] else 0)
                for i in _NOISY_IDX)
    out["stuck_frames"] = log1p_pos(stuck, STUCK_CAP)
    out["frame_gap_s"] = log1p_pos(event.ts - state.ts, 86_400.0)
    out["history"] = log1p_pos(state.n, 1e9)
    return out


def update_vehicle(state: VehicleState | None, event: Telemetry) -> VehicleState:
    """The vehicle's state after this frame (a new object; ``state`` is left as it was)."""
    xs = [fin(float(getattr(event, name))) for name in ROLLING]
    if state is None:
        return VehicleState(
            n=1, ts=event.ts, mean=tuple(xs), var=tuple(s * s for s in PRIOR_STD),
            last=tuple(xs), same=(0,) * len(ROLLING), lat=event.lat, lon=event.lon,
            model=event.model, fuel_pct=fin(event.fuel_pct, 0.0, 100.0),
        )
    means, vars_, same = [], [], []
    for i, x in enumerate(xs):
        diff = x - state.mean[i]
        incr = ALPHA * diff
        means.append(state.mean[i] + incr)
        vars_.append(fin((1 - ALPHA) * (state.var[i] + diff * incr), 0.0, 1e12))
        same.append(min(STUCK_CAP, state.same[i] + 1) if x == state.last[i] else 0)
    # Out-of-order frames update the statistics but never move time or position backwards.
    newer = event.ts >= state.ts
    return VehicleState(
        n=state.n + 1, ts=max(state.ts, event.ts), mean=tuple(means), var=tuple(vars_),
        last=tuple(xs), same=tuple(same),
        lat=event.lat if newer else state.lat, lon=event.lon if newer else state.lon,
        model=event.model, fuel_pct=fin(event.fuel_pct, 0.0, 100.0) if newer else state.fuel_pct,
    )


def telemetry_features(event: Telemetry, state: VehicleState | None) -> dict[str, float]:
    """Every telemetry feature for one frame, given the vehicle's state before it."""
    out = readings(event)
    out.update(cross_sensor(event))
    out.update(rolling(event, state))
    return out
