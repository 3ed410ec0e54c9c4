"""Cloud side of the loop against the real cloud Kafka: registry -> publisher ->
``models`` -> (the edge's ``cloud.models``) -> agent; a drift-triggered retrain; and one held
for an operator's approval, published by the signer only once approved."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from confluent_kafka.admin import AdminClient, NewTopic

from cloud.publisher import Publisher, Releaser
from cloud.registry import Registry
from cloud.trainer.pipeline import TrainSettings
from cloud.trainer.threshold import ThresholdRule
from cloud.trainer_service.drift import DriftSettings
from cloud.trainer_service.source import KafkaSource
from cloud.trainer_service.trainer_service import RetrainSettings, TrainerService
from edge.agent.agent import ModelAgent
from edge.config import AgentSettings, EdgeConfig, KafkaSettings, ScorerSettings
from shared import model_bundle, releases, topics
from shared.contracts import AnonPayment, Label, encode
from shared.kafka_config import PUBLISHER_USER, TRAINER_USER, Target, client_config
from tests.agent_models import ModelKit, deliver, recent_window, skip_to_end
from tests.support import consume_all, produce_all

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def kit() -> ModelKit:
    return ModelKit.shared()


@pytest.fixture()
def registry(tmp_path: Path) -> Iterator[Registry]:
    reg = Registry(tmp_path / "registry").start()
    yield reg
    reg.close()


def _published(cloud_kafka: KafkaSettings, version: str) -> bytes:
    for msg in reversed(consume_all(cloud_kafka, topics.MODELS, timeout=30, idle=3)):
        if model_bundle.unpack(msg.value()).version == version:
            assert msg.key() == b"payments"
            return bytes(msg.value())
    raise AssertionError(f"{version} is not on the cloud models topic")


def _corrupt_base64(value: bytes) -> bytes:
    """Change one base64 character inside model.tflite's encoding: still valid JSON and
    base64, one model byte different."""
    start = value.index(b'"model.tflite":"') + len(b'"model.tflite":"') + 400
    data = bytearray(value)
    data[start] = ord("B") if data[start] != ord("B") else ord("C")
    return bytes(data)


def test_promoted_model_travels_to_the_agent_and_a_flipped_byte_is_rejected(
    cloud_kafka: KafkaSettings,
    cloud_login: Callable[[str], KafkaSettings],
    edge_kafka: KafkaSettings,
    kit: ModelKit,
    registry: Registry,
    tmp_path: Path,
) -> None:
    champion = registry.register(kit.variant("cloud-v1"), state="champion")
    with Publisher(cloud_login(PUBLISHER_USER), Releaser(kit.key, registry.root)) as pub:
        size = pub.publish(champion)
    assert size > (champion.path / "model.tflite").stat().st_size
    value = _published(cloud_kafka, "cloud-v1")

    edge_id = f"cloud-{uuid.uuid4().hex[:6]}"
    config = EdgeConfig(
        edge_id=edge_id,
        data_dir=tmp_path,
        kafka=edge_kafka,
        scorer=ScorerSettings(models_dir=tmp_path / "models", public_key=kit.public_key),
        agent=AgentSettings(shadow_window=600),
    )
    skip_to_end(edge_kafka, f"{edge_id}-agent")
    agent = ModelAgent(config).start()
    try:
        recent_window(edge_kafka, kit, seed=21)
        flipped = deliver(agent, edge_kafka, b"payments", _corrupt_base64(value))
        assert flipped.state == "rejected" and "changed after release" in flipped.reason
        assert agent.store.active_dir("payments") is None  # still the model it had

        good = deliver(agent, edge_kafka, b"payments", value)
        assert good.state == "active" and agent.store.active_version("payments") == "cloud-v1"
    finally:
        agent.close()

    # Promote a second version, then roll back: each change is published.
    registry.register(kit.variant("cloud-v2"))
    with Publisher(cloud_login(PUBLISHER_USER), Releaser(kit.key, registry.root)) as pub:
        pub.publish(registry.promote("cloud-v2", "test"))
        pub.publish(registry.rollback("payments", "test", "operator rollback"))
    assert model_bundle.unpack(_published(cloud_kafka, "cloud-v1")).version == "cloud-v1"


def _create(bootstrap: Target, *names: str) -> None:
    admin = AdminClient(client_config(bootstrap))
    # Replication factor -1: the cluster's default (3 on three nodes, 1 on one).
    futures = admin.create_topics([NewTopic(n, 3, -1) for n in names])
    for f in futures.values():
        f.result(30)


def _records(
    kit: ModelKit, n: int, t0: float, seed: int, shift: float, anomalies: int
) -> tuple[list[bytes], list[bytes]]:
    """Anon payments (a drifted fleet: some features moved by ``shift`` units) and labels."""
    rows = kit.data.normal(n, seed)
    rows[:, :4] += shift * kit.data.unit[:4]
    idx = np.random.default_rng(seed).choice(n, anomalies, replace=False)
    rows[idx] = kit.data.anomalous(anomalies, seed + 1)
    rows[idx, :4] += shift * kit.data.unit[:4]
    values, labels = [], []
    for i, row in enumerate(rows):
        eid = f"d{seed}-{i}"
        values.append(
            encode(
                AnonPayment(
                    event_id=eid,
                    ts=t0 + i,
                    card_token=f"card{seed:04d}{i % 97:04d}",
                    vehicle_token="vehicletoken01",
                    driver_token="drivertoken01",
                    merchant_id="m-1",
                    mcc="5542",
                    category="fuel",
                    amount=50.0,
                    currency="EUR",
                    cell="u0yj",
                    features=kit.data.as_dict(row),
                )
            )
        )
        if i in set(idx.tolist()):
            labels.append(
                encode(
                    Label(
                        event_id=eid,
                        stream="payments",
                        kind="amount_outlier",
                        episode_id=eid,
                        start_ts=t0 + i,
                        end_ts=t0 + i,
                    )
                )
            )
    return values, labels


def test_drift_triggers_a_recorded_retrain_that_promotes_and_publishes(
    cloud_kafka: KafkaSettings,
    cloud_login: Callable[[str], KafkaSettings],
    kit: ModelKit,
    registry: Registry,
) -> None:
    edge = f"gw{uuid.uuid4().hex[:6]}"
    anon_topic, labels_topic = f"{edge}.anon.payments", f"{edge}.{topics.LABELS}"
    _create(cloud_kafka, anon_topic, labels_topic)
    t0 = time.time() - 100_000
    old, old_labels = _records(kit, 2000, t0, seed=31, shift=0.0, anomalies=40)
    new, new_labels = _records(kit, 4000, t0 + 2000, seed=32, shift=3.0, anomalies=80)
    produce_all(cloud_kafka, anon_topic, ((None, v) for v in old + new))
    produce_all(cloud_kafka, labels_topic, ((None, v) for v in old_labels + new_labels))

    registry.register(kit.variant("drift-champion"), state="champion")
    settings = RetrainSettings(
        streams=("payments",),
        recent_s=1500.0,
        min_records=1000,
        drift=DriftSettings(min_events=500),
        train=TrainSettings(epochs=4, hidden=(24, 8), threshold=ThresholdRule("alert_rate", 0.02)),
    )

    class Source(KafkaSource):  # this test's gateway only: the session's cloud is shared
        def topics_for(self, base: str) -> list[str]:
            return [t for t in super().topics_for(base) if t.startswith(f"{edge}.")]

    with Publisher(cloud_login(PUBLISHER_USER), Releaser(kit.key, registry.root)) as pub:
        svc = TrainerService(registry, Source(cloud_login(TRAINER_USER)), kit.key, settings, pub)
        report = svc.check_drift("payments")
        assert report.drifted, report.reason
        runs = svc.cycle()
    assert len(runs) == 1
    run = runs[0]
    print(
        f"\nrun {run.id}: {run.decision} - {run.decision_reason}; challenger "
        f"{run.metrics['challenger']}; champion {run.metrics['champion']}"
    )
    assert run.trigger == "drift" and "PSI" in run.trigger_reason and run.error == ""
    assert run.records == 6000 and run.duration_s and run.duration_s > 0
    assert run.data_from == t0 and run.data_to == t0 + 5999
    assert run.curves["challenger"]["roc"] and run.curves["champion"]["pr"]
    assert run.curves["loss"] and len(run.curves["loss"]) == 4
    assert run.decision == "promoted", run.decision_reason
    champion = registry.champion("payments")
    assert champion is not None
    assert champion.version == run.challenger and champion.parent == "drift-champion"
    assert (champion.path / "profile.json").exists()
    assert model_bundle.unpack(_published(cloud_kafka, champion.version)).stream == "payments"
    # The new champion's own training window is the reference now: no drift left.
    assert not svc.check_drift("payments").drifted


def test_with_approval_required_a_retrain_ships_only_after_an_operator_approves(
    cloud_kafka: KafkaSettings,
    cloud_login: Callable[[str], KafkaSettings],
    kit: ModelKit,
    registry: Registry,
    tmp_path: Path,
) -> None:
    from cloud.dashboard.actions import Actions
    from cloud.signer.signer import SigningService
    from edge.scorer.model_runner import load_model

    edge = f"gw{uuid.uuid4().hex[:6]}"
    anon_topic, labels_topic = f"{edge}.anon.payments", f"{edge}.{topics.LABELS}"
    _create(cloud_kafka, anon_topic, labels_topic)
    t0 = time.time() - 100_000
    old, old_labels = _records(kit, 2000, t0, seed=41, shift=0.0, anomalies=40)
    new, new_labels = _records(kit, 4000, t0 + 2000, seed=42, shift=3.0, anomalies=80)
    produce_all(cloud_kafka, anon_topic, ((None, v) for v in old + new))
    produce_all(cloud_kafka, labels_topic, ((None, v) for v in old_labels + new_labels))
    registry.register(kit.variant("approval-champion"), state="champion")
    settings = RetrainSettings(
        streams=("payments",),
        recent_s=1500.0,
        min_records=1000,
        require_approval=True,
        drift=DriftSettings(min_events=500),
        train=TrainSettings(epochs=4, hidden=(24, 8), threshold=ThresholdRule("alert_rate", 0.02)),
    )

    class Source(KafkaSource):  # this test's gateway only: the session's cloud is shared
        def topics_for(self, base: str) -> list[str]:
            return [t for t in super().topics_for(base) if t.startswith(f"{edge}.")]

    def on_topic(version: str) -> list[bytes]:
        return [
            bytes(m.value())
            for m in consume_all(cloud_kafka, topics.MODELS, timeout=30, idle=3)
            if model_bundle.unpack(m.value()).version == version
        ]

    with Publisher(cloud_login(PUBLISHER_USER), Releaser(kit.key, registry.root)) as pub:
        svc = TrainerService(registry, Source(cloud_login(TRAINER_USER)), kit.key, settings, pub)
        [run] = svc.cycle()
        assert run.decision == "awaiting approval", (run.decision_reason, run.error)
        assert run.challenger is not None
        assert registry.champion("payments").version == "approval-champion"  # type: ignore[union-attr]
        assert on_topic(run.challenger) == []  # not published while it waits

        with Actions(registry.root) as actions:  # the dashboard records the operator's approval
            assert actions.approve(run.id, "alice", "operator", "checked the curves").ok
        assert on_topic(run.challenger) == []  # recording it signs and publishes nothing
        [done] = SigningService(registry, svc, pub, streams=("payments",)).handle_pending()
    assert done.state == "done", done.outcome
    assert registry.champion("payments").version == run.challenger  # type: ignore[union-attr]
    [value] = on_topic(run.challenger)
    # What a gateway's agent checks before staging it: the release, its files, the signature.
    bundle = model_bundle.unpack(value)
    release = releases.verify(
        bundle.release, releases.TrustedKeys.load([kit.public_key]), releases.DEFAULT_FLEET
    )
    releases.check_files(release, bundle.files)
    staged = model_bundle.write_files(bundle, tmp_path / "staged")
    assert load_model(staged, "payments", kit.public_key).version == run.challenger
