"""Producing to Kafka when librdkafka's local queue is full.

``Producer.produce`` raises ``BufferError`` when its queue holds
``queue.buffering.max.messages`` records (or kbytes) not yet delivered. Every writer here
handles it the same way: serve delivery reports for a moment (which frees the queue as the
broker acknowledges) and try again. A broker that is away does not make this spin for ever:
undelivered records expire after ``message.timeout.ms`` and leave the queue too.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from confluent_kafka import Producer

# How long one wait for delivery reports lasts before the next attempt.
POLL_S = 0.05


def produce(
    producer: Producer,
    topic: str,
    value: bytes | None,
    key: bytes | None = None,
    on_delivery: Callable[..., Any] | None = None,
) -> None:
    """``producer.produce(...)``, waiting for room in the local queue as long as it takes."""
    while True:
        try:
            if on_delivery is None:
                producer.produce(topic, value, key)
            else:
                producer.produce(topic, value, key, on_delivery=on_delivery)
            return
        except BufferError:
            producer.poll(POLL_S)
