"""Reading a topic from its beginning up to what it held when the read started."""

from __future__ import annotations

from collections.abc import Iterator

from shared.errors import FleetsentryError
from shared.kafka_config import Target
from shared.kafka_read import records


class KafkaReadError(FleetsentryError):
    """A topic cannot be read: the broker is unreachable, the topic missing, or reading stalls."""


def read_topic(bootstrap: Target, topic: str, timeout_s: float = 300.0) -> Iterator[bytes]:
    """Yield every committed value of ``topic`` up to its high watermarks at the start.

    A snapshot read: training sees a fixed data range even while producers keep writing.
    """
    for msg in records(bootstrap, topic, error=KafkaReadError, timeout_s=timeout_s):
        value = msg.value()
        if value is not None:
            yield value
