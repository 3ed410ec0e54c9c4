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
