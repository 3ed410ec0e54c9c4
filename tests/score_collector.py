"""A gateway's scores and alerts as an end-to-end test sees them.

Reads ``scores.*``, ``alerts`` and ``anon.payments`` from the start (read_committed) on a
thread, and keeps what belongs to the run's events (``events[event_id] = (stream, vin)``,
filled by tests.paced_fleet.FastFleet as the fleet generates them).
"""

from __future__ import annotations

import math
import threading
import uuid

from confluent_kafka import Consumer

from shared import topics
from shared.contracts import Alert, AnonPayment, Score, decode
from shared.kafka_config import Target, client_config
from tests.support import value_of


class Collector(threading.Thread):
    """Reads scores.* and alerts from the start (read_committed) and keeps this run's."""

    def __init__(self, bootstrap: Target, events: dict[str, tuple[str, str]]) -> None:
        super().__init__(daemon=True)
        self.events = events
        self.scores: dict[str, Score] = {}
        self.duplicates = 0
        self.alerts: list[Alert] = []
        self.stop = threading.Event()
        self.c = Consumer(
            client_config(
                bootstrap,
                {
                    "group.id": f"e2e-{uuid.uuid4()}",
                    "auto.offset.reset": "earliest",
                    "enable.auto.commit": False,
                    "isolation.level": "read_committed",
                },
            )
        )
        self.c.subscribe(
            [topics.SCORES_TELEMETRY, topics.SCORES_PAYMENTS, topics.ALERTS, topics.ANON_PAYMENTS]
        )
        self.fix_age: dict[str, float] = {}  # payment -> age of the vehicle position it used

    def run(self) -> None:
        while not self.stop.is_set():
            for m in self.c.consume(5000, 0.5):
                if m.error():
                    continue
                if m.topic() == topics.ANON_PAYMENTS:
                    p = decode(AnonPayment, value_of(m))
                    if p.event_id in self.events:
                        self.fix_age[p.event_id] = math.expm1(p.features["vehicle_fix_age_s"])
                    continue
                if m.topic() == topics.ALERTS:
                    a = decode(Alert, value_of(m))
                    if a.event_ids and a.event_ids[0] in self.events:
                        self.alerts.append(a)
                    continue
                s = decode(Score, value_of(m))
                if s.event_id in self.events:
                    self.duplicates += s.event_id in self.scores
                    self.scores[s.event_id] = s
        self.c.close()

    def payments_scored(self) -> bool:
        pays = [e for e, (stream, _) in self.events.items() if stream == "payments"]
        return bool(pays) and all(e in self.scores for e in pays)

    def missing(self, stream: str) -> int:
        """How many of the run's ``stream`` events have no score yet."""
        return sum(s == stream and e not in self.scores for e, (s, _) in self.events.items())
