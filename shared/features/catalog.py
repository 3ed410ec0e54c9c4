"""Vehicle model facts (tank size) from ``shared.fleet_catalog``, read defensively.

The catalog maps a model name to its entry (a mapping or an object with ``tank_l``). A model
the catalog does not know, or a missing catalog, yields None and the feature falls back to 0.
"""

from __future__ import annotations

import functools
import importlib
from typing import Any


def _catalog() -> dict[str, Any]:
    try:
        module = importlib.import_module("shared.fleet_catalog")
    except ImportError:
        return {}
    table = getattr(module, "CATALOG", {})
    return dict(table) if hasattr(table, "items") else {}


@functools.lru_cache(maxsize=256)
def tank_litres(model: str) -> float | None:
    entry = _catalog().get(model)
    if entry is None:
        return None
    value = entry.get("tank_l") if isinstance(entry, dict) else getattr(entry, "tank_l", None)
    try:
        tank = float(value) if value is not None else None
    except (TypeError, ValueError):
        return None
    return tank if tank is not None and tank > 0 else None


@functools.lru_cache(maxsize=256)
def model_envelope(model: str) -> tuple[float, float, float] | None:
    """(thermostat °C, recommended tyre kPa, lowest healthy running battery V) of a vehicle
    model, or None when unknown.

    The manufacturer's regulated coolant temperature and tyre pressure: telemetry features
    measure a vehicle against them, so a slow fault cannot become the vehicle's "normal".
    """
    entry = _catalog().get(model)
    if entry is None:
        return None
    values = []
    for name in ("thermostat_c", "tyre_kpa"):
        raw = entry.get(name) if isinstance(entry, dict) else getattr(entry, name, None)
        try:
            values.append(float(raw))  # type: ignore[arg-type]  # None is caught below
        except (TypeError, ValueError):
            return None
    thermostat, tyre = values
    if not (-50.0 < thermostat < 200.0) or not tyre > 0:
        return None
    ranges = entry.get("ranges") if isinstance(entry, dict) else getattr(entry, "ranges", None)
    try:
        battery_lo = float(ranges["battery_v"][0]) if ranges else 13.4
    except (KeyError, TypeError, ValueError, IndexError):
        battery_lo = 13.4  # a charging system's usual floor
    return thermostat, tyre, battery_lo
