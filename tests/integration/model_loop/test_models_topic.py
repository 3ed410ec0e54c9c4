"""What one writer to the models topics can do, bounded: record size, bytes on a gateway's
disk, stream keys, and a champion withdrawn or deleted is noticed and reported.

Against the real brokers: the cloud's ``models`` and the gateway's ``cloud.models`` (what
MirrorMaker copies to every gateway), with the gateway's disk plan applied as its agent does.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from confluent_kafka import KafkaError, Producer
from prometheus_client import REGISTRY

from edge import disk
from edge.agent.agent import ModelAgent
from edge.config import EdgeConfig, KafkaSettings
from shared import topics
from shared.contracts import ModelStatus, decode
from shared.infra.stack import Stack
from shared.kafka_config import Target, client_config
from tests.agent_models import ModelKit, deliver, recent_window
from tests.support import consume_all, produce_all

pytestmark = pytest.mark.integration

MIB = 1 << 20


def _delivery_error(target: Target, topic: str, key: bytes, value: bytes) -> KafkaError | None:
    # The client would send it (its own limit raised): the topic has to refuse it.
    p = Producer(client_config(target, {"message.max.bytes": 4 * MIB, "acks": "all"}))
    errors: list[KafkaError | None] = []
    p.produce(topic, key=key, value=value, on_delivery=lambda err, _msg: errors.append(err))
    assert p.flush(30) == 0, "no delivery report in 30 s"
    return errors[0]


def test_a_model_record_over_the_bound_is_refused_by_both_models_topics(
    edge_kafka: KafkaSettings, cloud_kafka: KafkaSettings
) -> None:
    # Bundles of the shipped int8 models are tens of KB; 2 MiB is only a disk filler.
    value = os.urandom(2 * MIB)
    for target, topic in ((cloud_kafka, topics.MODELS), (edge_kafka, topics.CLOUD_MODELS)):
        err = _delivery_error(target, topic, b"payments", value)
        assert err is not None and err.code() == KafkaError.MSG_SIZE_TOO_LARGE, (topic, err)
    # A record within the bound still goes through.
    assert (
        _delivery_error(
            edge_kafka, topics.CLOUD_MODELS, b"probe", os.urandom(topics.MODEL_MESSAGE_BYTES - 4096)
        )
        is None
    )


def test_a_flood_of_distinct_keys_stays_within_the_gateways_disk_plan(
    edge_kafka: KafkaSettings, stack: Stack, tmp_path: Path
) -> None:
    """Compaction keeps one record per key for ever: a writer inventing keys would fill the
    disk of every gateway MirrorMaker copies the topic to."""
    config = EdgeConfig(edge_id="flood", data_dir=tmp_path, kafka=edge_kafka)
    plan = disk.plan(config)
    disk.apply_topic_plan(edge_kafka, plan)  # what the agent service does at start
    bound = next(t for t in plan.topics if t.name == topics.CLOUD_MODELS).reserved_bytes
    record = min(topics.MODEL_MESSAGE_BYTES - 4096, 900 * 1024)
    n = 3 * bound // record + 1
    produce_all(
        edge_kafka,
        topics.CLOUD_MODELS,
        ((f"junk-{i}".encode(), os.urandom(record)) for i in range(n)),
    )
    written = n * record
    # Kafka checks retention every 10 s here and deletes a segment 5 s after that.
    deadline = time.monotonic() + 90
    size = stack.edge.topic_bytes(topics.CLOUD_MODELS)
    while size > bound and time.monotonic() < deadline:
        time.sleep(2)
        size = stack.edge.topic_bytes(topics.CLOUD_MODELS)
    assert size <= bound, (
        f"cloud.models holds {size:,} bytes on disk after {written:,} were "
        f"written; the disk plan reserves {bound:,}"
    )


def test_a_model_keyed_by_an_unknown_stream_is_refused_before_it_is_unpacked(
    agent: ModelAgent, kit: ModelKit, edge_kafka: KafkaSettings
) -> None:
    _key, value = kit.message(kit.variant())
    outcome = deliver(agent, edge_kafka, b"no-such-stream", value)
    assert outcome.state == "rejected"
    assert "not a stream this gateway scores" in outcome.reason, outcome.reason
    # Nothing of it was written to the gateway's disk.
    assert not agent.store.staging_dir("no-such-stream").parent.exists()


def _missing(stream: str) -> float | None:
    return REGISTRY.get_sample_value("fleetsentry_agent_champion_missing", {"stream": stream})


def test_a_withdrawn_or_absent_champion_is_noticed_and_reported(
    agent: ModelAgent, kit: ModelKit, edge_kafka: KafkaSettings
) -> None:
    # Nothing in this module ever publishes a telemetry model: the agent says so at start.
    assert _missing("telemetry") == 1.0
    assert any(s.stream == "telemetry" and s.state == "missing" for s in agent.statuses)

    recent_window(edge_kafka, kit, seed=3)
    running = kit.variant()
    assert deliver(agent, edge_kafka, *kit.message(running)).state == "active"
    assert _missing("payments") == 0.0
    active = agent.store.active_version("payments")

    # A tombstone (or retention after a flood) takes the champion out of the topic: a gateway
    # installed from now on would find none. The running model stays; the gateway reports it.
    produce_all(edge_kafka, topics.CLOUD_MODELS, [(b"payments", None)])
    deadline = time.monotonic() + 30
    while _missing("payments") != 1.0 and time.monotonic() < deadline:
        agent.step(0.5)
    assert _missing("payments") == 1.0
    assert agent.store.active_version("payments") == active
    published = [
        decode(ModelStatus, m.value())
        for m in consume_all(edge_kafka, topics.MODEL_STATUS, timeout=20, idle=3)
    ]
    missing = [
        s
        for s in published
        if s.edge_id == agent.config.edge_id and s.stream == "payments" and s.state == "missing"
    ]
    assert missing and "withdrawn" in missing[-1].reason, published[-3:]

    # A champion published again clears it.
    assert deliver(agent, edge_kafka, *kit.message(kit.variant())).state == "active"
    assert _missing("payments") == 0.0
