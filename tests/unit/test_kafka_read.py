"""shared.kafka_read without a broker: what an unreachable cluster gives the caller, and how
the consume loops sort what a consumer hands them."""

from __future__ import annotations

import logging
import time

import pytest
from confluent_kafka import KafkaError, Message

from shared.infra.ports import free_ports
from shared.kafka_read import read_to_end, usable


class Unreadable(Exception):
    pass


def test_an_unreachable_cluster_raises_the_callers_error_in_time() -> None:
    port = free_ports(1)[0]  # nothing listens there
    t0 = time.monotonic()
    with pytest.raises(Unreadable, match="cannot read models"):
        read_to_end(f"127.0.0.1:{port}", "models", lambda _m: None, error=Unreadable, timeout_s=2.0)
    assert time.monotonic() - t0 < 20


def test_a_consumed_message_is_a_record_an_event_a_logged_error_or_the_end() -> None:
    assert usable(Message(topic="raw.telemetry", value=b"{}"), Unreadable, "consuming raw")
    eof = Message(topic="raw.telemetry", error=KafkaError(KafkaError._PARTITION_EOF))
    assert not usable(eof, Unreadable, "consuming raw")
    # An error the client recovers from is no record, and does not stop the service.
    down = Message(error=KafkaError(KafkaError._ALL_BROKERS_DOWN))
    assert not usable(down, Unreadable, "consuming raw")
    fatal = Message(error=KafkaError(KafkaError._FENCED, fatal=True))
    with pytest.raises(Unreadable, match="consuming raw: the Kafka consumer failed"):
        usable(fatal, Unreadable, "consuming raw")
    # How a consumer reports its own fatal error (a static member fenced by another with its
    # group.instance.id): the code says it, the flag does not.
    fenced = Message(
        error=KafkaError(
            KafkaError._FATAL,
            "Fatal error: Broker: Static consumer fenced by other consumer with same "
            "group.instance.id: Fatal consumer error",
        )
    )
    with pytest.raises(Unreadable, match="Static consumer fenced"):
        usable(fenced, Unreadable, "consuming raw")


def test_a_recoverable_error_is_logged_with_what_was_being_consumed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="shared.kafka_read"):
        usable(Message(error=KafkaError(KafkaError._TRANSPORT)), Unreadable, "consuming anon")
    assert "consuming anon" in caplog.text
