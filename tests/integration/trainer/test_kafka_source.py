"""Training input from Kafka: a snapshot read of an anon topic, joined with labels."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient, NewTopic
from firmware_sim import FAULT_KINDS, Fleet, SimSettings

from cloud.kafka_source import KafkaReadError, read_topic
from cloud.trainer.data import records_from_anon
from cloud.trainer_service.source import KafkaSource
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


def test_the_trainer_service_trains_a_declared_stream_from_the_gateways_copies(
    plain_bootstrap: str, tmp_path: Path
) -> None:
    """Two gateways' replicated ``<edge>.anon.reefer`` (one event replicated by both): the
    trainer service's Kafka source reads a declared stream's records once each, and its cycle
    trains, signs and promotes a model built for the declaration's digest, without labels."""
    from cloud.registry import Registry
    from cloud.trainer.pipeline import TrainSettings
    from cloud.trainer_service.trainer_service import RetrainSettings, TrainerService
    from shared import signing, streams
    from shared.contracts import AnonRecord
    from tests import declared_stream as reefer

    reefer.write_declaration(tmp_path / "streams")
    spec = {s.name: s for s in streams.use_declarations(tmp_path / "streams")}["reefer"]
    assert spec.declaration is not None
    generated = reefer.generate(devices=8, events=200, seed=4)
    anonymizer = Anonymizer(Tokenizer(b"0123456789abcdef-fleet"))
    records = [anonymizer.message(t, json.dumps(p).encode()) for t, p in generated.messages]
    assert all(isinstance(r, AnonRecord) for r in records)
    half = len(records) // 2
    tag = uuid.uuid4().hex[:6]
    copies = {f"gw{tag}a.anon.reefer": records[: half + 1], f"gw{tag}b.anon.reefer": records[half:]}
    admin = AdminClient({"bootstrap.servers": plain_bootstrap})
    for fut in admin.create_topics([NewTopic(t, 2, 1) for t in copies]).values():
        fut.result(30)
    for topic, recs in copies.items():
        produce_all(plain_bootstrap, topic, [(r.key.encode(), encode(r)) for r in recs])  # type: ignore[union-attr]

    source = KafkaSource(plain_bootstrap, timeout_s=60)
    read = source.anon_records("reefer")
    assert sorted(r.event_id for r in read) == sorted(r.event_id for r in records)

    key = signing.generate_private_key()
    registry = Registry(tmp_path / "registry").start()
    try:
        settings = RetrainSettings(
            min_records=1000,
            allow_unlabelled_promotion=True,
            train=TrainSettings(epochs=2, hidden=(16, 6), seed=5),
        )
        assert "reefer" in settings.served(), "every registered stream is served by default"
        runs = TrainerService(registry, source, key, settings).cycle()
        ours = [r for r in runs if r.stream == "reefer"]
        assert len(ours) == 1 and ours[0].decision == "promoted", ours
        champion = registry.champion("reefer")
        assert champion is not None
        assert champion.manifest["feature_spec"] == spec.declaration.feature_spec
        assert list(champion.manifest["features"]) == reefer.FEATURES
        signing.verify_model_dir(champion.path, key.public_key())
    finally:
        registry.close()
