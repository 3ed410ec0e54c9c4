"""Telemetry's named transforms over a whole batch (numpy), for the vectorised engine.

Each gives, event for event, the value its scalar step gives (``shared.features.telemetry``,
the ``tyre_min_dev`` ... ``battery_v_low`` functions): the same IEEE operations in the same
order, on the same readings (cleaned, rounded to 3 decimals, a missing one 0). ``read(name)``
is a field over the batch as those readings; ``models`` the ``model`` field's raw values.
The coolant trend keeps state: :func:`coolant_hot_trend` runs it round by round (round ``r``
holding every vehicle's ``r``-th event of the batch), as the engine's other stateful
transforms run.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from shared.features import telemetry as tel
from shared.features.catalog import model_envelope
from shared.features.guard import fin_array as _fin

F64 = NDArray[np.float64]
Read = Callable[[str], F64]
_TYRES = ("tyre_fl_kpa", "tyre_fr_kpa", "tyre_rl_kpa", "tyre_rr_kpa")


def _tyres(read: Read) -> tuple[F64, F64]:
    """(the four tyres' sum as Python's sum adds them, their minimum)."""
    t = [read(n) for n in _TYRES]
    total = ((t[0] + t[1]) + t[2]) + t[3]
    low = np.minimum(np.minimum(np.minimum(t[0], t[1]), t[2]), t[3])
    return total, low


def _facts(models: Sequence[Any]) -> tuple[NDArray[np.bool_], F64, F64, F64]:
    """Whether the catalogue knows each event's model, and its (thermostat, tyre kPa,
    running battery floor), one lookup per distinct model."""
    of = {m: model_envelope(str(m)) for m in set(models)}
    facts = [of[m] for m in models]
    known = np.array([f is not None for f in facts], dtype=bool)
    spec = np.array([f if f is not None else (0.0, 1.0, 0.0) for f in facts], dtype=np.float64)
    spec = spec.reshape(len(facts), 3)
    return known, spec[:, 0], spec[:, 1], spec[:, 2]


def tyre_min_dev(read: Read, _models: Sequence[Any]) -> F64:
    total, low = _tyres(read)
    return _fin(low - total / 4)


def accel_magnitude(read: Read, _models: Sequence[Any]) -> F64:
    # Python's ** (libm pow) and numpy's square differ in the last bit now and then.
    x, y, z = (read(n).tolist() for n in ("accel_x_g", "accel_y_g", "accel_z_g"))
    return np.array(
        [
            math.sqrt(min(1e4, a**2) + min(1e4, b**2) + min(1e4, c**2))
            for a, b, c in zip(x, y, z, strict=True)
        ],
        dtype=np.float64,
    )


def coolant_over_thermostat(read: Read, models: Sequence[Any]) -> F64:
    known, thermostat, _kpa, _low = _facts(models)
    return np.where(known, _fin(read("coolant_c") - thermostat, 0.0, 500.0), 0.0)


def tyre_mean_ratio(read: Read, models: Sequence[Any]) -> F64:
    known, _t, kpa, _low = _facts(models)
    total, _min = _tyres(read)
    return np.where(known, _fin(total / 4 / kpa, 0.0, 10.0), 1.0)


def tyre_min_ratio(read: Read, models: Sequence[Any]) -> F64:
    known, _t, kpa, _low = _facts(models)
    _total, low = _tyres(read)
    return np.where(known, _fin(low / kpa, 0.0, 10.0), 1.0)


def battery_v_low(read: Read, models: Sequence[Any]) -> F64:
    known, _t, _kpa, floor = _facts(models)
    running = (read("rpm") > 0.0) | (read("speed_kmh") > 0.0)
    low = np.where(running, floor, tel.REST_FLOOR_V) - read("battery_v")
    return np.where(known, _fin(low, 0.0, 100.0), 0.0)


COLUMNS: dict[str, Callable[[Read, Sequence[Any]], F64]] = {
    "tyre_min_dev": tyre_min_dev,
    "accel_magnitude": accel_magnitude,
    "coolant_over_thermostat": coolant_over_thermostat,
    "tyre_mean_ratio": tyre_mean_ratio,
    "tyre_min_ratio": tyre_min_ratio,
    "battery_v_low": battery_v_low,
}


def coolant_hot_trend(
    read: Read,
    models: Sequence[Any],
    ts: F64,
    rounds: Sequence[NDArray[np.int64]],
    device_of: NDArray[np.int64],
    slot: F64,
) -> F64:
    """The smoothed coolant rate while above the thermostat plus a margin; ``slot`` (device x
    (latest time, previous coolant, trend), NaN where a vehicle has none) is carried on."""
    known, thermostat, _kpa, _low = _facts(models)
    coolant = read("coolant_c")
    out = np.zeros(len(ts))
    for rows in rounds:
        d = device_of[rows]
        t, c = ts[rows], coolant[rows]
        last_ts, last, before = slot[d, 0], slot[d, 1], slot[d, 2]
        have = last_ts == last_ts
        with np.errstate(all="ignore"):
            gap = t - last_ts
            dt = np.where(gap > tel.MIN_DT_S, gap, tel.MIN_DT_S)
            w = dt / tel.TREND_TAU_S
            trend = before + np.where(w > 1.0, 1.0, w) * ((c - last) / dt - before)
        trend = np.where(have, np.clip(trend, -tel.TREND_LIMIT, tel.TREND_LIMIT), 0.0)
        hot = known[rows] & (c - thermostat[rows] > tel.HOT_MARGIN_C)
        out[rows] = np.where(hot, trend, 0.0)
        slot[d, 0] = np.where(have & (t < last_ts), last_ts, t)
        slot[d, 1] = c
        slot[d, 2] = trend
    return out
