"""A running MirrorMaker 2 between the module's edge Kafka (gateway ``edge-1``) and the cloud."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from shared.infra.mirror import Mirror
from shared.infra.stack import Stack
from shared.kafka_config import KafkaSettings

EDGE_ID = "edge-1"


@pytest.fixture(scope="module")
def mirror(stack: Stack, cloud_kafka: KafkaSettings) -> Iterator[Mirror]:
    mm = stack.mirror(EDGE_ID)
    mm.start()
    try:
        mm.wait_healthy(240)
        yield mm
    finally:
        mm.stop()
