"""Telemetry's named transforms over a whole batch (numpy), for the vectorised engine.

Each gives, event for event, the value its scalar step gives (``shared.features.telemetry``,
the ``tyre_min_dev`` ... ``coolant_hot_trend`` functions): the same IEEE operations in the
same order, on the same readings (cleaned, rounded to 3 decimals, a missing one 0).
``read(name)`` is a field over the batch as those readings; ``facts`` the catalogue's entry
for each event's vehicle model (:func:`facts`, looked up once per batch). The built-in
telemetry batch (``shared.features.batch``) computes its envelope and cross-sensor columns
with the same functions.

The coolant trend keeps state: :func:`coolant_hot_trend` runs it round by round (round ``r``
holding every vehicle's ``r``-th event of the batch), as the engine's other stateful
transforms run.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, Protocol

import numpy as np
from numpy.typing import NDArray

from shared.features import telemetry as tel
from shared.features.catalog import model_envelope
from shared.features.guard import fin_array as _fin

F64 = NDArray[np.float64]
Read = Callable[[str], F64]
_TYRES = ("tyre_fl_kpa", "tyre_fr_kpa", "tyre_rl_kpa", "tyre_rr_kpa")


class Facts(NamedTuple):
    """Per event: whether the catalogue knows its vehicle model, and the model's thermostat,
    recommended tyre pressure and lowest healthy running battery voltage (neutral values
    where it does not)."""

    known: NDArray[np.bool_]
    thermostat: F64
    tyre_kpa: F64
    battery_lo: F64


class Rounds(Protocol):
    rows: list[NDArray[np.int64]]
    device_of: NDArray[np.int64]


def facts(models: Sequence[Any]) -> Facts:
    """The catalogue's entry for each event's model, one lookup per distinct model."""
    of = {m: model_envelope(str(m)) for m in set(models)}
    entries = [of[m] for m in models]
    known = np.array([f is not None for f in entries], dtype=bool)
    spec = np.array(
        [f if f is not None else (0.0, 1.0, 0.0) for f in entries], dtype=np.float64
    ).reshape(len(entries), 3)
    return Facts(known, spec[:, 0], spec[:, 1], spec[:, 2])


def tyres(read: Read) -> tuple[F64, F64]:
    """(the four tyres' sum as Python's sum adds them, their minimum)."""
    t = [read(n) for n in _TYRES]
    total = ((t[0] + t[1]) + t[2]) + t[3]
    low = np.minimum(np.minimum(np.minimum(t[0], t[1]), t[2]), t[3])
    return total, low


def tyre_min_dev(read: Read, _facts: Facts) -> F64:
    total, low = tyres(read)
    return _fin(low - total / 4)


def accel_magnitude(read: Read, _facts: Facts) -> F64:
    # Python's ** (libm pow) and numpy's square differ in the last bit now and then.
    x, y, z = (read(n).tolist() for n in ("accel_x_g", "accel_y_g", "accel_z_g"))
    return np.array(
        [
            math.sqrt(min(1e4, a**2) + min(1e4, b**2) + min(1e4, c**2))
            for a, b, c in zip(x, y, z, strict=True)
        ],
        dtype=np.float64,
    )


def coolant_over_thermostat(read: Read, facts: Facts) -> F64:
    return np.where(facts.known, _fin(read("coolant_c") - facts.thermostat, 0.0, 500.0), 0.0)


def tyre_mean_ratio(read: Read, facts: Facts) -> F64:
    total, _low = tyres(read)
    return np.where(facts.known, _fin(total / 4 / facts.tyre_kpa, 0.0, 10.0), 1.0)


def tyre_min_ratio(read: Read, facts: Facts) -> F64:
    _total, low = tyres(read)
    return np.where(facts.known, _fin(low / facts.tyre_kpa, 0.0, 10.0), 1.0)


def battery_v_low(read: Read, facts: Facts) -> F64:
    running = (read("rpm") > 0.0) | (read("speed_kmh") > 0.0)
    low = np.where(running, facts.battery_lo, tel.REST_FLOOR_V) - read("battery_v")
    return np.where(facts.known, _fin(low, 0.0, 100.0), 0.0)


def trend(coolant: F64, ts: F64, last: F64, last_ts: F64, before: F64) -> F64:
    """``tel.trend_step`` elementwise: the smoothed coolant rate after a frame, clipped."""
    with np.errstate(all="ignore"):
        gap = ts - last_ts
        dt = np.where(gap > tel.MIN_DT_S, gap, tel.MIN_DT_S)
        w = dt / tel.TREND_TAU_S
        after = before + np.where(w > 1.0, 1.0, w) * ((coolant - last) / dt - before)
    limit = tel.TREND_LIMIT
    return np.where(after > limit, limit, np.where(after < -limit, -limit, after))


def coolant_hot_trend(read: Read, facts: Facts, ts: F64, rounds: Rounds, slot: F64) -> F64:
    """The smoothed coolant rate while above the thermostat plus a margin; ``slot`` (device x
    (latest time, previous coolant, trend), NaN where a vehicle has none) is carried on."""
    coolant = read("coolant_c")
    out = np.zeros(len(ts))
    for rows in rounds.rows:
        d = rounds.device_of[rows]
        t, c = ts[rows], coolant[rows]
        last_ts = slot[d, 0]
        have = last_ts == last_ts
        after = np.where(have, trend(c, t, slot[d, 1], last_ts, slot[d, 2]), 0.0)
        hot = facts.known[rows] & (c - facts.thermostat[rows] > tel.HOT_MARGIN_C)
        out[rows] = np.where(hot, after, 0.0)
        slot[d, 0] = np.where(have & (t < last_ts), last_ts, t)
        slot[d, 1] = c
        slot[d, 2] = after
    return out


# The stateless ones, and those that run round by round with a slot.
COLUMNS: dict[str, Callable[[Read, Facts], F64]] = {
    "tyre_min_dev": tyre_min_dev,
    "accel_magnitude": accel_magnitude,
    "coolant_over_thermostat": coolant_over_thermostat,
    "tyre_mean_ratio": tyre_mean_ratio,
    "tyre_min_ratio": tyre_min_ratio,
    "battery_v_low": battery_v_low,
}
IN_ROUNDS: dict[str, Callable[[Read, Facts, F64, Rounds, F64], F64]] = {
    "coolant_hot_trend": coolant_hot_trend,
}
