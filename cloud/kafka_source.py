"""Reading a topic from its beginning up to what it held when the read started."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

from confluent_kafka import Consumer, KafkaException, TopicPartition

from shared.errors import FleetsentryError
from shared.kafka_config import Target, bootstrap_of, client_config


class KafkaReadError(FleetsentryError):
    """A topic cannot be read: the broker is unreachable, the topic missing, or reading stalls."""


def read_topic(bootstrap: Target, topic: str, timeout_s: float = 300.0) -> Iterator[bytes]:
    """Yield every committed value of ``topic`` up to its high watermarks at the start.

    A snapshot read: training sees a fixed data range even while producers keep writing.
    """
    consumer = Consumer(
        client_config(
            bootstrap,
            {
                "group.id": f"fleetsentry-reader-{uuid.uuid4()}",
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                "isolation.level": "read_committed",
                "enable.partition.eof": False,
            },
        )
    )
    where = bootstrap_of(bootstrap)
    try:
        try:
            meta = consumer.list_topics(topic, timeout=15)
        except KafkaException as exc:
            raise KafkaReadError(f"cannot reach Kafka at {where}: {exc}") from None
        tmeta = meta.topics.get(topic)
        if tmeta is None or tmeta.error is not None:
            raise KafkaReadError(f"topic {topic!r} does not exist on {where}")
        remaining: dict[int, int] = {}
        assign = []
        for p in tmeta.partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=15)
            if high > low:
                remaining[p] = high
                assign.append(TopicPartition(topic, p, low))
        if not assign:
            return
        consumer.assign(assign)
        deadline = time.monotonic() + timeout_s
        while remaining:
            if time.monotonic() > deadline:
                raise KafkaReadError(f"reading {topic} timed out after {timeout_s:.0f} s")
            for msg in consumer.consume(num_messages=2000, timeout=0.5):
                if msg.error():
                    continue
                p, off = msg.partition(), msg.offset()
                if p is None or off is None:
                    continue
                if p in remaining and off < remaining[p]:
                    value = msg.value()
                    if value is not None:
                        yield value
                if p in remaining and off >= remaining[p] - 1:
                    del remaining[p]
            # transaction markers occupy offsets too: stop at the end even without a record
            for p in list(remaining):
                pos = consumer.position([TopicPartition(topic, p)])[0].offset
                if pos >= remaining[p]:
                    del remaining[p]
    finally:
        consumer.close()
