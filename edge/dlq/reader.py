"""Read the latest records of ``dlq.ingest`` (for the operator's ``dlq show``)."""

from __future__ import annotations

from confluent_kafka import Message

from edge.dlq.errors import DeadLetterError
from shared.kafka_config import Target
from shared.kafka_read import records
from shared.topics import DLQ_INGEST


def latest(kafka: Target, limit: int, timeout: float = 30.0) -> list[Message]:
    """The last ``limit`` committed records of dlq.ingest, oldest first."""
    # The enricher and the scorer dead-letter inside transactions: aborted ones are skipped.
    out = list(
        records(
            kafka,
            DLQ_INGEST,
            error=DeadLetterError,
            timeout_s=timeout,
            last=limit,
            partial=True,
            missing_hint="run `fleetsentry infra up` (or the Ansible role) to create the "
            "gateway's topics",
            unreachable_hint="is the gateway's Kafka running? check [kafka] in edge.toml",
        )
    )
    out.sort(key=lambda m: (m.timestamp()[1], m.partition(), m.offset()))
    return out[-limit:]
