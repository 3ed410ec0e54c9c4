"""Fixtures of the model-loop tests: the signed test models and an agent on the edge Kafka."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from edge.agent.agent import ModelAgent
from edge.config import KafkaSettings
from tests.agent_models import ModelKit, started_agent


@pytest.fixture(scope="module")
def kit() -> ModelKit:
    return ModelKit.shared()


@pytest.fixture()
def agent(edge_kafka: KafkaSettings, kit: ModelKit, tmp_path: Path) -> Iterator[ModelAgent]:
    """An agent that sees only this test's model messages."""
    with started_agent(edge_kafka, kit, tmp_path) as a:
        yield a
