"""Read a topic from its beginning to its end, committed records only: how a service restores
its state from a compacted topic (the enricher's changelog, the scorer's episodes) or looks
at what one holds (the model agent's champions).

The end is each partition's end as the read starts (librdkafka's partition EOF at the last
stable offset, with ``read_committed``): records written meanwhile may or may not be seen.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    TopicPartition,
)

from shared.kafka_config import Target, client_config


def read_to_end(
    target: Target,
    topic: str,
    handle: Callable[[Message], None],
    *,
    error: Callable[[str], Exception],
    timeout_s: float = 60.0,
    missing_hint: str = "",
    extra: Mapping[str, Any] | None = None,
) -> int:
    """Hand every committed record of ``topic`` to ``handle``, oldest first per partition,
    until every partition's end; returns how many were handed over.

    Failures raise ``error(message)``: the cluster not answering, the topic missing (with
    ``missing_hint``), a consumer error, or the end not reached within ``timeout_s``.
    """
    consumer = Consumer(
        client_config(
            target,
            {
                "group.id": f"fleetsentry-read-{uuid.uuid4().hex[:12]}",
                "enable.auto.commit": False,
                "isolation.level": "read_committed",
                "enable.partition.eof": True,
                "auto.offset.reset": "earliest",
                **(extra or {}),
            },
        )
    )
    n = 0
    try:
        try:
            meta = consumer.list_topics(topic, timeout=min(30.0, timeout_s)).topics.get(topic)
        except KafkaException as exc:  # the cluster did not answer
            raise error(f"cannot read {topic}: {exc}") from None
        if meta is None or meta.error is not None:
            raise error(f"topic {topic} is missing{': ' + missing_hint if missing_hint else ''}")
        parts = [TopicPartition(topic, p, OFFSET_BEGINNING) for p in meta.partitions]
        consumer.assign(parts)
        pending = {tp.partition for tp in parts}
        deadline = time.monotonic() + timeout_s
        while pending:
            if time.monotonic() > deadline:
                raise error(f"could not read {topic} to its end within {timeout_s:.0f} s")
            for msg in consumer.consume(num_messages=10_000, timeout=0.5):
                err = msg.error()
                if err is not None:
                    if err.code() != KafkaError._PARTITION_EOF:
                        raise error(f"reading {topic}: {err}")
                    pending.discard(msg.partition() or 0)
                    continue
                handle(msg)
                n += 1
    finally:
        consumer.close()
    return n
