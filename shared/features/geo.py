"""Positions: great-circle distance and the coarse grid cell that replaces an exact fix."""

from __future__ import annotations

import math

EARTH_RADIUS_KM = 6371.0088
CELL_DEG = 0.1  # about 11 km north-south: coarse enough not to single out an address


def haversine_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp = p2 - p1
    dl = math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_KM * math.asin(min(1.0, math.sqrt(a)))


def cell(lat: float, lon: float) -> str:
    """A ~10 km grid cell as integers only (``c10:523:134``), so no coordinate text survives."""
    return f"c10:{math.floor(lat / CELL_DEG)}:{math.floor(lon / CELL_DEG)}"
