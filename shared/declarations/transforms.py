"""The generic per-device transforms a declaration may use, as pure scalar step functions.

A step function takes the device's previous state for one feature (None before its first
event) and the new value, and returns the feature value and the next state; it never changes
its input. Every result is a finite float: NaN becomes 0 and values are clipped (see
:func:`shared.features.guard.fin`). The arithmetic is that of today's telemetry features, so
the built-in streams can move onto these functions without their values changing.

>>> z, state = zscore_step(None, 10.0, typical_std=2.0)
>>> z, state
(0.0, ZState(n=1, mean=10.0, var=4.0))
>>> zscore_step(state, 13.0, typical_std=2.0)[0]
1.5
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, NamedTuple

from shared.features.guard import BIG, fin, log1p_pos

# Transforms over one value (a field, or a value derived by diff, ratio, spread, ref_ratio),
# with the suffix the feature's name takes in the short form `field = ["value", "zscore"]`.
PER_VALUE: dict[str, str] = {
    "value": "",
    "zscore": "_z",
    "rate": "_rate",
    "delta": "_delta",
    "stuck": "_stuck",
}
# Transforms deriving one value from several fields; `then` applies per-value ones to it.
DERIVED = ("spread", "diff", "ratio", "ref_ratio")
# Transforms of the device's event time alone.
TIMED = ("gap", "time_of_day")
TRANSFORMS = (*PER_VALUE, *DERIVED, *TIMED, "onehot", "named")

# Each transform's parameters and their defaults (resolved into every feature, so a declared
# default and an omitted one give the same feature-spec digest).
PARAMS: dict[str, dict[str, Any]] = {
    "value": {"scale": "linear"},
    "zscore": {"alpha": 0.05, "limit": 20.0, "floor": 0.05, "typical_std": None},
    "rate": {"limit": 50.0, "min_dt_s": 0.5, "typical_std": None},
    "delta": {},
    "stuck": {"cap": 3600.0, "scale": "linear"},
    "gap": {"cap": 86_400.0, "scale": "linear"},
    "spread": {},
    "diff": {},
    "ratio": {},
    "ref_ratio": {"by": None, "table": None, "missing": 0.0},
    "time_of_day": {},
    "onehot": {},
    "named": {},
}
VAR_CAP = 1e12


def scaled(x: float, scale: str, cap: float = BIG) -> float:
    """``x`` clipped to [-BIG, cap]; with scale "log1p", log(1 + x) of x clipped to [0, cap]."""
    return log1p_pos(x, cap) if scale == "log1p" else fin(x, -BIG, cap)


def value(x: float, lo: float = -BIG, hi: float = BIG, scale: str = "linear") -> float:
    """The value clipped to its declared range (NaN -> 0), optionally on a log scale."""
    clipped = fin(x, lo, hi)
    return log1p_pos(clipped) if scale == "log1p" else clipped


class ZState(NamedTuple):
    n: int
    mean: float
    var: float


def zscore_step(
    state: ZState | None,
    x: float,
    alpha: float = 0.05,
    limit: float = 20.0,
    floor: float = 0.05,
    typical_std: float = 1.0,
) -> tuple[float, ZState]:
    """How many deviations ``x`` is from the device's exponentially weighted mean (before
    ``x`` counts), clipped to +-limit. The variance starts at ``typical_std`` squared, and
    the deviation never goes below ``floor * typical_std`` so a flat-lining value cannot
    make the score explode. The first value scores 0."""
    if state is None:
        return 0.0, ZState(1, x, typical_std * typical_std)
    std = math.sqrt(state.var)
    min_std = floor * typical_std
    diff = x - state.mean
    z = fin(diff / (std if std > min_std else min_std), -limit, limit)
    incr = alpha * diff
    var = (1.0 - alpha) * (state.var + diff * incr)
    return z, ZState(state.n + 1, state.mean + incr, var if var < VAR_CAP else VAR_CAP)


class Last(NamedTuple):
    ts: float  # the newest event time seen (never moves backwards)
    x: float  # the previous event's value


def rate_step(
    state: Last | None,
    ts: float,
    x: float,
    limit: float = 50.0,
    min_dt_s: float = 0.5,
    typical_std: float = 1.0,
) -> tuple[float, Last]:
    """Change per second since the previous event, in units of ``typical_std``, clipped to
    +-limit. Events closer than ``min_dt_s`` (or out of order) count as ``min_dt_s`` apart."""
    if state is None:
        return 0.0, Last(ts, x)
    gap = ts - state.ts
    rate = (x - state.x) / (gap if gap > min_dt_s else min_dt_s) / typical_std
    return fin(rate, -limit, limit), Last(max(ts, state.ts), x)


def delta_step(last: float | None, x: float) -> tuple[float, float]:
    """Change since the previous event's value (0 for the first)."""
    return (0.0 if last is None else fin(x - last)), x


class Stuck(NamedTuple):
    run: int
    last: float


def stuck_step(state: Stuck | None, x: float, cap: float = 3600.0) -> tuple[int, Stuck]:
    """Events in a row the value repeated exactly (0 when it changed), at most ``cap``."""
    if state is None:
        return 0, Stuck(0, x)
    run = min(state.run + 1, int(cap)) if x == state.last else 0
    return run, Stuck(run, x)


def stuck_value(runs: Sequence[int], cap: float = 3600.0, scale: str = "linear") -> float:
    """The feature of a group of stuck counters: the longest run among them."""
    return scaled(float(max(runs, default=0)), scale, cap)


def gap_step(
    last_ts: float | None, ts: float, cap: float = 86_400.0, scale: str = "linear"
) -> tuple[float, float]:
    """Seconds since the device's previous event (0 for the first, and for one out of
    order), at most ``cap``. The state is the newest event time seen."""
    if last_ts is None:
        return 0.0, ts
    return scaled(fin(ts - last_ts, 0.0, cap), scale, cap), max(ts, last_ts)


def spread(xs: Sequence[float]) -> float:
    """Largest minus smallest of a group of values."""
    return fin(max(xs) - min(xs))


def diff(a: float, b: float) -> float:
    return fin(a - b)


def ratio(a: float, b: float) -> float:
    """``a / b``; 0 when ``b`` is 0 (no ratio is better than an infinite one)."""
    return fin(a / b) if b != 0 else 0.0


def ref_ratio(x: float, key: str, table: Mapping[str, float], missing: float = 0.0) -> float:
    """``x`` over the reference value of ``key`` (e.g. the vehicle model's recommended tyre
    pressure). A key the table lacks, or a reference of 0, gives ``missing`` (default 0)."""
    ref = table.get(key)
    return fin(x / ref) if ref else missing


def time_of_day(ts: float) -> tuple[float, float]:
    """(sine, cosine) of the UTC time of day: 23:59 sits next to 00:00."""
    angle = 2.0 * math.pi * (ts % 86_400.0) / 86_400.0
    return math.sin(angle), math.cos(angle)


def onehot(x: str, values: Sequence[str]) -> tuple[float, ...]:
    """1.0 at the position of ``x`` among the declared values (their order), 0.0 elsewhere;
    all zeros for a value not declared."""
    return tuple(1.0 if x == v else 0.0 for v in values)


def to_seconds(raw: Any, unit: str) -> float:
    """A device time as epoch seconds: ``unit`` is "s", "ms" or "iso8601" (no zone: UTC).

    >>> to_seconds(1767600000123, "ms")
    1767600000.123
    >>> to_seconds("2026-01-05T08:00:00Z", "iso8601")
    1767600000.0
    """
    if unit == "iso8601":
        moment = datetime.fromisoformat(str(raw))
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        return moment.timestamp()
    seconds = float(raw)
    return seconds / 1000.0 if unit == "ms" else seconds
