"""Training input from Kafka: a snapshot read of an anon topic, joined with labels."""

from __future__ import annotations

import uuid

import pytest
from confluent_kafka.admin import AdminClient, NewTopic
from firmware_sim import FAULT_KINDS, Fleet, SimSettings

from cloud.kafka_source import KafkaReadError, read_topic
from cloud.trainer.data import records_from_anon
from shared.contracts import AnonTelemetry, decode, encode
from shared.features import Anonymizer, model_features
from shared.tokens import Tokenizer
from tests.support import produce_all

pytestmark = pytest.mark.integration


def _topic(bootstrap: str, partitions: int = 3) -> str:
    name = f"test.anon.telemetry.{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for fut in admin.create_topics([NewTopic(name, partitions, 1)]).values():
        fut.result(30)
    return name


def test_reads_a_topic_snapshot_and_joins_labels(plain_bootstrap: str) -> None:
    fleet = Fleet(
        SimSettings(vehicles=4, duration_s=120, seed=9, fault_rates={k: 20.0 for k in FAULT_KINDS})
    )
    anon = Anonymizer(Tokenizer(b"0123456789abcdef-fleet"))
    records = [anon.message(t, p) for t, p in fleet.events() if t.endswith("/telemetry")]
    topic = _topic(plain_bootstrap)
    produce_all(plain_bootstrap, topic, [(r.vehicle_token.encode(), encode(r)) for r in records])  # type: ignore[union-attr]
    values = list(read_topic(plain_bootstrap, topic, timeout_s=60))
    assert len(values) == len(records)
    decoded = [decode(AnonTelemetry, v) for v in values]
    assert {d.event_id for d in decoded} == {r.event_id for r in records}
    out = records_from_anon("telemetry", decoded, fleet.labels)
    assert out.x.shape == (len(records), len(model_features("telemetry")))
    labelled = {lab.event_id for lab in fleet.labels if lab.stream == "telemetry"}
    assert int(out.labelled.sum()) == len(labelled & {r.event_id for r in records}) > 0


def test_missing_topic_is_a_clear_error(plain_bootstrap: str) -> None:
    with pytest.raises(KafkaReadError, match="does not exist"):
        list(read_topic(plain_bootstrap, f"no.such.topic.{uuid.uuid4().hex[:6]}", timeout_s=20))
