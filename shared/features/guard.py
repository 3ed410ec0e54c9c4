"""Keep every feature a finite float in a sane range, whatever the device sent."""

from __future__ import annotations

import math

import numpy as np

BIG = 1e6


def fin(x: float, lo: float = -BIG, hi: float = BIG) -> float:
    """``x`` clipped to [lo, hi]; NaN becomes 0 (a missing signal, not an extreme one)."""
    if x != x:  # NaN
        return 0.0
    if x < lo:
        return float(lo)
    if x > hi:
        return float(hi)
    return float(x)


def log1p_pos(x: float, hi: float = BIG) -> float:
    """log(1 + x) for x >= 0, the scale for counts and durations that span decades."""
    return math.log1p(fin(x, 0.0, hi))


def fin_array(x: np.ndarray, lo: float = -BIG, hi: float = BIG) -> np.ndarray:
    """:func:`fin`, elementwise (the batch paths): NaN -> 0, clipped to [lo, hi]."""
    return np.where(x != x, 0.0, np.minimum(np.maximum(x, lo), hi))


def round3_array(x: np.ndarray) -> np.ndarray:
    """What leaves the gateway, to 3 decimals, elementwise: ``floor(x * 1000 + 0.5) / 1000``
    (the scalar paths' rounding, operation for operation)."""
    return np.floor(x * 1000 + 0.5) / 1000
