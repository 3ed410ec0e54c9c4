"""Ground truth to the cloud's ``labels`` topic while a live run goes, each label late.

In the field a label is never there when the event is: a workshop reports a fault after the
vehicle came in, a chargeback follows a fraud. The rule here: a label is produced once the
run's clock (the vehicles' device time) has passed the end of its episode by ``delay_s``
seconds (``end_ts`` of :class:`shared.contracts.Label`, the episode's last labelled event
or its planned end). Labels still pending when the run ends are produced then, so the topic
ends up with every label of the run exactly once (the producer is idempotent: its retries
write nothing twice).

Production never blocks the simulator's loop: ``produce`` only queues (a bounded queue;
when it is full the label stays pending until the next pass) and ``poll(0)`` serves the
delivery reports.
"""

from __future__ import annotations

import heapq
import time
from typing import Any

from firmware_sim.errors import SimError

from shared.contracts import Label, encode
from shared.kafka_config import Target, bootstrap_of, client_config
from shared.topics import LABELS

# The producer's own queue: bounded, so a cloud that is away costs memory only up to here
# (labels beyond it wait in the pending heap, which holds no more than the run's labels).
QUEUE_MAX = 10_000
# Labels handed to the producer per loop pass: a burst of due labels (a long run's flush)
# must not stall the vehicles' sockets.
PER_PASS = 2_000


def check_labels_topic(bootstrap: Target) -> None:
    """Fail before the run if the cluster cannot be reached or has no ``labels`` topic."""
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    # Brokers do not auto-create topics here, and a producer to a missing topic only
    # gives up after its timeout: check first and say where the topic lives.
    where = bootstrap_of(bootstrap)
    try:
        meta = AdminClient(client_config(bootstrap)).list_topics(LABELS, timeout=15)
    except KafkaException as exc:
        raise SimError(f"cannot reach Kafka at {where} to produce labels: {exc}") from None
    topic = meta.topics.get(LABELS)
    if topic is None or topic.error is not None:
        raise SimError(
            f"Kafka at {where} has no `{LABELS}` topic; it belongs to the cloud "
            "cluster (`fleetsentry infra up` creates it there)"
        )


class LabelFeed:
    """Labels of one run, produced ``delay_s`` run-clock seconds after their episode ends."""

    def __init__(self, bootstrap: Target, delay_s: float) -> None:
        from confluent_kafka import Producer

        check_labels_topic(bootstrap)
        self.bootstrap = bootstrap
        self.delay_s = delay_s
        self.delivered = 0
        self.queued = 0
        self._errors: list[str] = []
        self._pending: list[tuple[float, int, Label]] = []
        self._seen = 0  # how much of the fleet's label list is already pending
        self._producer: Any = Producer(
            client_config(
                bootstrap,
                {
                    "enable.idempotence": True,
                    "acks": "all",
                    "linger.ms": 50,
                    "queue.buffering.max.messages": QUEUE_MAX,
                },
            )
        )

    @property
    def pending(self) -> int:
        return len(self._pending)

    def collect(self, labels: list[Label]) -> None:
        """Take the labels appended to ``labels`` (the fleet's list) since the last call."""
        for lab in labels[self._seen :]:
            self._seen += 1
            heapq.heappush(self._pending, (lab.end_ts + self.delay_s, self._seen, lab))

    def pump(self, now_ts: float) -> None:
        """Queue the labels due at run clock ``now_ts``; serve delivery reports. Never blocks."""
        heap = self._pending
        n = 0
        while heap and heap[0][0] <= now_ts and n < PER_PASS and self._send(heap[0][2]):
            heapq.heappop(heap)
            n += 1
        self._producer.poll(0)

    def close(self, stall_s: float = 30.0) -> int:
        """Produce everything still pending and wait for delivery; returns labels delivered.

        Gives up after ``stall_s`` seconds without a delivery (a cloud Kafka that is away),
        however many labels a long dry run has.
        """
        heap, p = self._pending, self._producer
        deadline = time.monotonic() + stall_s
        while (heap or len(p)) and time.monotonic() < deadline:
            before = self.delivered
            while heap and self._send(heap[0][2]):
                heapq.heappop(heap)
            p.poll(0.1)  # delivery reports; they make room in the bounded queue
            if self.delivered > before:
                deadline = time.monotonic() + stall_s
        left = len(p) + len(heap)
        if left or self._errors:
            raise SimError(
                f"{left + len(self._errors)} labels not delivered to "
                f"{bootstrap_of(self.bootstrap)}; first error: "
                f"{self._errors[0] if self._errors else 'no answer'}; is the cloud "
                "Kafka up? (the labels file, if asked for, has them all)"
            )
        return self.delivered

    def _send(self, lab: Label) -> bool:
        try:
            self._producer.produce(
                LABELS, key=lab.event_id.encode(), value=encode(lab), on_delivery=self._delivered
            )
        except BufferError:
            return False  # the bounded queue is full: the label stays pending
        self.queued += 1
        return True

    def _delivered(self, err: Any, _msg: Any) -> None:
        if err is None:
            self.delivered += 1
        else:
            self._errors.append(str(err))
