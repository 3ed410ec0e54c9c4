"""MQTT -> Kafka bridge: validated vehicle events to ``raw.*``, rejects to ``dlq.ingest``.

Messages are acknowledged to the broker only after Kafka confirmed their delivery, so a bridge
killed at any moment loses nothing (at-least-once; the enricher removes duplicates).
"""

from edge.bridge.bridge import Bridge
from edge.bridge.validate import Accepted, Limits, validate

__all__ = ["Accepted", "Bridge", "Limits", "validate"]
