"""Telemetry features: the readings, stateless cross-sensor facts, and per-vehicle rolling stats.

Every function is pure: it reads a Telemetry event (and the vehicle's previous state) and returns
a new dict or a new state. :func:`telemetry_step` does both in one pass (the hot path).
"""

from __future__ import annotations

import math
from operator import attrgetter
from typing import Any

from shared.contracts import TELEMETRY_READINGS, Telemetry
from shared.features.catalog import model_envelope
from shared.features.guard import BIG, fin, log1p_pos
from shared.features.state import VehicleState

READINGS = TELEMETRY_READINGS
# Sensors with per-vehicle rolling statistics, and a typical spread for each: the prior
# deviation before a vehicle has history, and a floor so a flat-lining sensor cannot make
# the z-score explode.
ROLLING = (
    "speed_kmh",
    "rpm",
    "coolant_c",
    "intake_c",
    "oil_kpa",
    "battery_v",
    "soc_pct",
    "tyre_fl_kpa",
    "tyre_fr_kpa",
    "tyre_rl_kpa",
    "tyre_rr_kpa",
    "fuel_pct",
    "ambient_c",
)
PRIOR_STD = (20.0, 800.0, 5.0, 5.0, 50.0, 0.3, 10.0, 10.0, 10.0, 10.0, 10.0, 10.0, 3.0)
MIN_STD = tuple(s * 0.05 for s in PRIOR_STD)
PRIOR_VAR = tuple(s * s for s in PRIOR_STD)
# Sensors whose analogue noise makes exact repeats rare: a run of identical values means stuck.
# Oil pressure is not one: it reads exactly 0 whenever the engine is off (and always on an EV).
NOISY = (
    "coolant_c",
    "intake_c",
    "battery_v",
    "tyre_fl_kpa",
    "tyre_fr_kpa",
    "tyre_rl_kpa",
    "tyre_rr_kpa",
    "ambient_c",
)
_IS_NOISY = tuple(s in NOISY for s in ROLLING)
ALPHA = 0.05  # EWMA weight: about the last 20 frames
# Frames until a reading's weight in the rolling mean has decayed below 5 %: how long the
# rolling features still carry a value (a fault's, say) after the sensor stopped reading it.
MEMORY_FRAMES = math.ceil(math.log(0.05) / math.log(1.0 - ALPHA))
MIN_DT_S = 0.5
Z_LIMIT = 20.0
RATE_LIMIT = 50.0  # in prior deviations per second
STUCK_CAP = 3600
# The coolant trend: its rate of change smoothed over ~15 s, so a steady climb stands out from
# sensor noise. It counts only above the thermostat plus a margin, where a healthy engine's
# coolant is held (or pulled back) rather than climbing: warm-up climbs happen below it.
TREND_TAU_S = 15.0
TREND_LIMIT = 10.0  # °C/s
HOT_MARGIN_C = 3.0
# A resting 12 V battery below this is deeply discharged, whatever the model.
REST_FLOOR_V = 11.8
_COOLANT = ROLLING.index("coolant_c")

_readings_of = attrgetter(*READINGS)
_rolling_of = attrgetter(*ROLLING)
_Z = tuple(f"{s}_z" for s in ROLLING)
_RATE = tuple(f"{s}_rate" for s in ROLLING)
_ROLLING_IDX = tuple(READINGS.index(s) for s in ROLLING)
_COLD = {
    **{n: 0.0 for n in _Z},
    **{n: 0.0 for n in _RATE},
    "stuck_frames": 0.0,
    "frame_gap_s": 0.0,
    "history": 0.0,
}


_floor = math.floor
DECIMALS = 3  # see shared.features.anonymize: no long digit strings leave the gateway


def _round(x: float) -> float:
    """``round(x, 3)`` at a fifth of the cost (x is already finite and clipped)."""
    return _floor(x * 1000 + 0.5) / 1000


def _clean(values: tuple[float, ...]) -> list[float]:
    # The comparison is False for NaN and for anything huge, which then gets clipped.
    return [float(v) if -BIG < v < BIG else fin(float(v)) for v in values]


def readings(event: Telemetry) -> dict[str, float]:
    """The sensor values as floats (finite, clipped)."""
    return dict(zip(READINGS, _clean(_readings_of(event)), strict=True))


def cross_sensor(event: Telemetry) -> dict[str, float]:
    """Facts that need no history: tyre spread, engine heat over ambient, acceleration size."""
    return _cross(dict(zip(READINGS, _clean(_readings_of(event)), strict=True)))


def _cross(r: dict[str, float]) -> dict[str, float]:
    tyres = (r["tyre_fl_kpa"], r["tyre_fr_kpa"], r["tyre_rl_kpa"], r["tyre_rr_kpa"])
    accel = math.sqrt(
        min(1e4, r["accel_x_g"] ** 2)
        + min(1e4, r["accel_y_g"] ** 2)
        + min(1e4, r["accel_z_g"] ** 2)
    )
    return {
        "tyre_spread_kpa": fin(max(tyres) - min(tyres)),
        "tyre_min_dev_kpa": fin(min(tyres) - sum(tyres) / 4),
        "coolant_minus_ambient_c": fin(r["coolant_c"] - r["ambient_c"]),
        "intake_minus_ambient_c": fin(r["intake_c"] - r["ambient_c"]),
        "accel_g": accel,
    }


def _trend(coolant: float, ts: float, state: VehicleState | None) -> float:
    """The vehicle's smoothed coolant rate (°C/s) after this frame."""
    if state is None:
        return 0.0
    return trend_step(coolant, ts, state.ts, state.last[_COOLANT], state.coolant_trend)


def trend_step(coolant: float, ts: float, last_ts: float, last: float, trend: float) -> float:
    """The smoothed coolant rate after a frame, from the vehicle's latest time, its previous
    frame's coolant and its trend before."""
    gap = ts - last_ts
    dt = gap if gap > MIN_DT_S else MIN_DT_S
    w = dt / TREND_TAU_S
    trend += (1.0 if w > 1.0 else w) * ((coolant - last) / dt - trend)
    return TREND_LIMIT if trend > TREND_LIMIT else -TREND_LIMIT if trend < -TREND_LIMIT else trend


_NO_ENVELOPE = {
    "coolant_over_thermostat_c": 0.0,
    "coolant_hot_trend": 0.0,
    "tyre_mean_ratio": 1.0,
    "tyre_min_ratio": 1.0,
    "battery_v_low": 0.0,
}


def _envelope(r: dict[str, float], model: str, trend: float) -> dict[str, float]:
    facts = model_envelope(model)
    if facts is None:  # a model the catalogue does not know: neutral values
        return dict(_NO_ENVELOPE)
    thermostat, tyre_kpa, battery_lo = facts
    over = r["coolant_c"] - thermostat
    # With the engine (or motor) running the charging system holds the voltage in range;
    # parked, a resting battery legitimately reads lower, but not below a discharged one's.
    running = r["rpm"] > 0.0 or r["speed_kmh"] > 0.0
    low = (battery_lo if running else REST_FLOOR_V) - r["battery_v"]
    tyres = (r["tyre_fl_kpa"], r["tyre_fr_kpa"], r["tyre_rl_kpa"], r["tyre_rr_kpa"])
    return {
        "coolant_over_thermostat_c": fin(over, 0.0, 500.0),
        "coolant_hot_trend": trend if over > HOT_MARGIN_C else 0.0,
        "tyre_mean_ratio": fin(sum(tyres) / 4 / tyre_kpa, 0.0, 10.0),
        "tyre_min_ratio": fin(min(tyres) / tyre_kpa, 0.0, 10.0),
        "battery_v_low": fin(low, 0.0, 100.0),
    }


def envelope(event: Telemetry, state: VehicleState | None) -> dict[str, float]:
    """The vehicle against its model's specification: coolant above the thermostat (and
    still climbing), tyre pressures relative to the recommended one."""
    r = dict(zip(READINGS, _clean(_readings_of(event)), strict=True))
    return _envelope(r, event.model, _trend(r["coolant_c"], event.ts, state))


def _rolling(xs: list[float], ts: float, state: VehicleState | None) -> dict[str, float]:
    if state is None:
        return dict(_COLD)
    out: dict[str, float] = {}
    gap = ts - state.ts
    inv_dt = 1.0 / (gap if gap > MIN_DT_S else MIN_DT_S)
    stuck = 0
    for zname, rname, x, mean, var, last, same, min_std, prior, noisy in zip(
        _Z,
        _RATE,
        xs,
        state.mean,
        state.var,
        state.last,
        state.same,
        MIN_STD,
        PRIOR_STD,
        _IS_NOISY,
        strict=True,
    ):
        std = math.sqrt(var)
        z = (x - mean) / (std if std > min_std else min_std)
        out[zname] = Z_LIMIT if z > Z_LIMIT else -Z_LIMIT if z < -Z_LIMIT else z
        rate = (x - last) * inv_dt / prior
        out[rname] = (
            RATE_LIMIT if rate > RATE_LIMIT else -RATE_LIMIT if rate < -RATE_LIMIT else rate
        )
        if noisy and x == last and same + 1 > stuck:
            stuck = same + 1
    out["stuck_frames"] = log1p_pos(stuck, STUCK_CAP)
    out["frame_gap_s"] = log1p_pos(gap, 86_400.0)
    out["history"] = log1p_pos(state.n, 1e9)
    return out


def rolling(event: Telemetry, state: VehicleState | None) -> dict[str, float]:
    """Each sensor against the vehicle's own recent behaviour (before this frame counts)."""
    return _rolling(_clean(_rolling_of(event)), event.ts, state)


def _update(xs: list[float], event: Telemetry, state: VehicleState | None) -> VehicleState:
    fuel = fin(event.fuel_pct, 0.0, 100.0)
    if state is None:
        return VehicleState(
            n=1,
            ts=event.ts,
            mean=tuple(xs),
            var=PRIOR_VAR,
            last=tuple(xs),
            same=(0,) * len(ROLLING),
            lat=event.lat,
            lon=event.lon,
            model=event.model,
            fuel_pct=fuel,
            coolant_trend=0.0,
        )
    means, vars_, same = [], [], []
    keep = 1.0 - ALPHA
    for x, mean, var, last, n_same in zip(
        xs, state.mean, state.var, state.last, state.same, strict=True
    ):
        diff = x - mean
        incr = ALPHA * diff
        means.append(mean + incr)
        v = keep * (var + diff * incr)
        vars_.append(v if v < 1e12 else 1e12)
        same.append((n_same + 1 if n_same < STUCK_CAP else STUCK_CAP) if x == last else 0)
    # Out-of-order frames update the statistics but never move time or position backwards.
    newer = event.ts >= state.ts
    return VehicleState(
        n=state.n + 1,
        ts=event.ts if newer else state.ts,
        mean=tuple(means),
        var=tuple(vars_),
        last=tuple(xs),
        same=tuple(same),
        lat=event.lat if newer else state.lat,
        lon=event.lon if newer else state.lon,
        model=event.model,
        fuel_pct=fuel if newer else state.fuel_pct,
        coolant_trend=_trend(xs[_COOLANT], event.ts, state),
    )


def update_vehicle(state: VehicleState | None, event: Telemetry) -> VehicleState:
    """The vehicle's state after this frame (a new object; ``state`` is left as it was)."""
    return _update(_clean(_rolling_of(event)), event, state)


def telemetry_features(event: Telemetry, state: VehicleState | None) -> dict[str, float]:
    """Every telemetry feature for one frame, given the vehicle's state before it."""
    return telemetry_step(event, state)[1]


def telemetry_step(
    event: Telemetry, state: VehicleState | None
) -> tuple[dict[str, float], dict[str, float], VehicleState]:
    """(readings, features, new state) in one pass over the frame: the hot path.

    Gives the same numbers as :func:`readings`, :func:`cross_sensor`, :func:`rolling` and
    :func:`update_vehicle` (rounded to ``DECIMALS``), fused into one loop for speed.
    """
    values = [_round(v) for v in _clean(_readings_of(event))]
    reads = dict(zip(READINGS, values, strict=True))
    xs = [values[i] for i in _ROLLING_IDX]
    features = dict(reads)
    for name, value in _cross(reads).items():
        features[name] = _round(value)
    trend = _trend(xs[_COOLANT], event.ts, state)
    for name, value in _envelope(reads, event.model, trend).items():
        features[name] = _round(value)
    if state is None:
        features.update(_COLD)
        return reads, features, _update(xs, event, state)
    gap = event.ts - state.ts
    inv_dt = 1.0 / (gap if gap > MIN_DT_S else MIN_DT_S)
    means, vars_, same, stuck = _rolling_step(features, xs, state, inv_dt)
    features["stuck_frames"] = _round(log1p_pos(stuck, STUCK_CAP))
    features["frame_gap_s"] = _round(log1p_pos(gap, 86_400.0))
    features["history"] = _round(log1p_pos(state.n, 1e9))
    newer = event.ts >= state.ts
    fuel = fin(event.fuel_pct, 0.0, 100.0)
    after = VehicleState(
        n=state.n + 1,
        ts=event.ts if newer else state.ts,
        mean=tuple(means),
        var=tuple(vars_),
        last=tuple(xs),
        same=tuple(same),
        lat=event.lat if newer else state.lat,
        lon=event.lon if newer else state.lon,
        model=event.model,
        fuel_pct=fuel if newer else state.fuel_pct,
        coolant_trend=trend,
    )
    return reads, features, after


def _rolling_step(
    features: dict[str, float], xs: list[float], state: VehicleState, inv_dt: float
) -> tuple[list[float], list[float], list[int], int]:
    """Each rolling sensor's z-score and rate into ``features``; returns the sensors' next
    (means, variances, frames unchanged) and the longest run of unchanged frames of a noisy
    sensor (a stuck sensor)."""
    stuck = 0
    means, vars_, same = [], [], []
    keep = 1.0 - ALPHA
    for zname, rname, x, mean, var, last, n_same, min_std, prior, noisy in zip(
        _Z,
        _RATE,
        xs,
        state.mean,
        state.var,
        state.last,
        state.same,
        MIN_STD,
        PRIOR_STD,
        _IS_NOISY,
        strict=True,
    ):
        std = math.sqrt(var)
        diff = x - mean
        z = diff / (std if std > min_std else min_std)
        z = Z_LIMIT if z > Z_LIMIT else -Z_LIMIT if z < -Z_LIMIT else z
        features[zname] = _floor(z * 1000 + 0.5) / 1000
        rate = (x - last) * inv_dt / prior
        rate = RATE_LIMIT if rate > RATE_LIMIT else -RATE_LIMIT if rate < -RATE_LIMIT else rate
        features[rname] = _floor(rate * 1000 + 0.5) / 1000
        incr = ALPHA * diff
        means.append(mean + incr)
        v = keep * (var + diff * incr)
        vars_.append(v if v < 1e12 else 1e12)
        if x == last:
            n_same = n_same + 1 if n_same < STUCK_CAP else STUCK_CAP
            if noisy and n_same > stuck:
                stuck = n_same
            same.append(n_same)
        else:
            same.append(0)
    return means, vars_, same, stuck


# --- the named transforms as the declared streams' engine runs them ------------------------
# One frame's value of each, read from the fields the transform names only, computed as
# telemetry_step computes it: each reading cleaned and rounded to DECIMALS first (a missing
# one reads 0, as a NaN does). The engine rounds the result.


def _reading(event: Any, name: str) -> float:
    v = getattr(event, name)
    if v is None:
        return 0.0
    x = float(v)
    return _round(x if -BIG < x < BIG else fin(x))


def _tyres(event: Any) -> tuple[float, float, float, float]:
    return (
        _reading(event, "tyre_fl_kpa"),
        _reading(event, "tyre_fr_kpa"),
        _reading(event, "tyre_rl_kpa"),
        _reading(event, "tyre_rr_kpa"),
    )


def tyre_min_dev(event: Any) -> float:
    """The lowest tyre's pressure below the vehicle's four-tyre average (kPa)."""
    tyres = _tyres(event)
    return fin(min(tyres) - sum(tyres) / 4)


def accel_magnitude(event: Any) -> float:
    """The size of the acceleration vector (g)."""
    return math.sqrt(
        min(1e4, _reading(event, "accel_x_g") ** 2)
        + min(1e4, _reading(event, "accel_y_g") ** 2)
        + min(1e4, _reading(event, "accel_z_g") ** 2)
    )


def coolant_over_thermostat(event: Any) -> float:
    facts = model_envelope(str(event.model))
    if facts is None:
        return _NO_ENVELOPE["coolant_over_thermostat_c"]
    return fin(_reading(event, "coolant_c") - facts[0], 0.0, 500.0)


def tyre_mean_ratio(event: Any) -> float:
    facts = model_envelope(str(event.model))
    if facts is None:
        return _NO_ENVELOPE["tyre_mean_ratio"]
    return fin(sum(_tyres(event)) / 4 / facts[1], 0.0, 10.0)


def tyre_min_ratio(event: Any) -> float:
    facts = model_envelope(str(event.model))
    if facts is None:
        return _NO_ENVELOPE["tyre_min_ratio"]
    return fin(min(_tyres(event)) / facts[1], 0.0, 10.0)


def battery_v_low(event: Any) -> float:
    facts = model_envelope(str(event.model))
    if facts is None:
        return _NO_ENVELOPE["battery_v_low"]
    running = _reading(event, "rpm") > 0.0 or _reading(event, "speed_kmh") > 0.0
    low = (facts[2] if running else REST_FLOOR_V) - _reading(event, "battery_v")
    return fin(low, 0.0, 100.0)


# The coolant trend's slot: (the vehicle's latest time, its previous coolant, its trend).
TrendSlot = tuple[float, float, float]


def coolant_hot_trend(event: Any, ts: float, slot: TrendSlot | None) -> tuple[float, TrendSlot]:
    """The smoothed coolant rate while above the model's thermostat plus a margin (else 0),
    and the next slot. Out-of-order frames never move the latest time backwards."""
    coolant = _reading(event, "coolant_c")
    trend = 0.0 if slot is None else trend_step(coolant, ts, slot[0], slot[1], slot[2])
    latest = ts if slot is None or ts >= slot[0] else slot[0]
    facts = model_envelope(str(event.model))
    value = 0.0 if facts is None or not coolant - facts[0] > HOT_MARGIN_C else trend
    return value, (latest, coolant, trend)
