"""Simulated vehicles (imported as ``firmware_sim``): telemetry, payments, faults and fraud.

Fast in-process generation, no broker needed::

    from firmware_sim import Fleet, SimSettings
    fleet = Fleet(SimSettings(vehicles=50, duration_s=3600, seed=7))
    for topic, payload in fleet.events():     # publish order; payload = the MQTT bytes
        ...
    fleet.labels      # list[shared.contracts.Label]: one per faulty/fraudulent event
    fleet.stats       # counts, injected episodes per kind, exposure (for rate checks)

``fleet.records()`` yields :class:`Emitted` ``(vehicle, topic, payload, label)`` instead, with
each event's label (None when normal) beside it. ``generate(settings)`` is a shortcut for
``Fleet(settings).events()``. The same settings (``seed`` included) always give the same
bytes; ``start_ts`` is fixed by default so dry runs are reproducible (pass ``start_ts=None``
for "now").

Live runs (real MQTT sessions, one per vehicle) are in :mod:`firmware_sim.live`; labels go to
the cloud's ``labels`` topic while they run, each a delay after its episode ends
(:mod:`firmware_sim.labels`). The CLI is ``fleetsentry sim``.
"""

from __future__ import annotations

from collections.abc import Iterator

from firmware_sim.fleet import Emitted, Fleet, FleetStats
from firmware_sim.settings import DRIFT_KINDS, FAULT_KINDS, FRAUD_KINDS, SimSettings

__all__ = [
    "DRIFT_KINDS",
    "FAULT_KINDS",
    "FRAUD_KINDS",
    "Emitted",
    "Fleet",
    "FleetStats",
    "SimSettings",
    "generate",
]


def generate(settings: SimSettings) -> Iterator[tuple[str, bytes]]:
    """(topic, payload) pairs of a seeded run, in publish order (labels: use Fleet)."""
    return Fleet(settings).events()
