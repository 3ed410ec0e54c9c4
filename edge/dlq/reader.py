"""Read the latest records of ``dlq.ingest`` (for the operator's ``dlq show``)."""

from __future__ import annotations

import time
import uuid

from confluent_kafka import Consumer, KafkaException, Message, TopicPartition

from edge.dlq.errors import DeadLetterError
from shared.kafka_config import Target, bootstrap_of, client_config
from shared.topics import DLQ_INGEST


def latest(kafka: Target, limit: int, timeout: float = 30.0) -> list[Message]:
    """The last ``limit`` committed records of dlq.ingest, oldest first."""
    bootstrap = bootstrap_of(kafka)
    c = Consumer(
        client_config(
            kafka,
            {
                "group.id": f"dlq-show-{uuid.uuid4().hex}",
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                # The enricher and the scorer dead-letter inside transactions: skip aborted ones.
                "isolation.level": "read_committed",
            },
        )
    )
    try:
        return _read_tail(c, limit, timeout)
    except KafkaException as exc:
        raise DeadLetterError(
            f"cannot read {DLQ_INGEST} from {bootstrap}: {exc} "
            "(is the gateway's Kafka running? check [kafka] in edge.toml)"
        ) from None
    finally:
        c.close()


def _read_tail(c: Consumer, limit: int, timeout: float) -> list[Message]:
    meta = c.list_topics(DLQ_INGEST, timeout=10)
    topic = meta.topics.get(DLQ_INGEST)
    if topic is None or topic.error is not None:
        raise DeadLetterError(
            f"no topic {DLQ_INGEST}: run `fleetsentry infra up` (or the "
            "Ansible role) to create the gateway's topics"
        )
    ends: dict[int, int] = {}
    starts = []
    for p in topic.partitions:
        low, high = c.get_watermark_offsets(TopicPartition(DLQ_INGEST, p), timeout=10)
        if high > low:
            ends[p] = high
            starts.append(TopicPartition(DLQ_INGEST, p, max(low, high - limit)))
    out: list[Message] = []
    if not starts:
        return out
    c.assign(starts)
    deadline = time.monotonic() + timeout
    while ends and time.monotonic() < deadline:
        out += [m for m in c.consume(500, 0.5) if m.error() is None]
        # Positions, not offsets seen: transaction markers take offsets no record has.
        for tp in c.position([TopicPartition(DLQ_INGEST, p) for p in ends]):
            if tp.offset >= ends[tp.partition]:
                del ends[tp.partition]
    out.sort(key=lambda m: (m.timestamp()[1], m.partition(), m.offset()))
    return out[-limit:]
