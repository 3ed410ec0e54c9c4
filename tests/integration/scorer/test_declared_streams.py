"""A declared stream (a reefer trailer's, device ids like RT-0001) through the scorer and the
model agent, on the real edge Kafka with real int8 models: scored with its declaration's
alerts and labels once its model is installed, passed through unscored (counted, offsets
committed) until then, and a model built for another feature spec refused by the agent."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from confluent_kafka import Consumer, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from prometheus_client import REGISTRY

from edge.agent.agent import ModelAgent
from edge.agent.store import ModelStore
from edge.config import KafkaSettings
from edge.scorer import metrics
from edge.scorer.scorer import BatchResult, ScorerService
from shared import model_bundle, releases, topics
from shared.contracts import Alert, ModelStatus, Score, decode
from shared.declarations.schema import Stream
from shared.kafka_config import Target, client_config
from shared.signing import generate_private_key, write_public_key
from tests.agent_models import agent_config, deliver, skip_to_end
from tests.conftest import MqttBroker
from tests.declared_records import (
    REEFER,
    as_messages,
    declared,
    reefer_records,
    reefer_toml,
    write_reefer,
)
from tests.integration.scorer.test_scorer_service import edge_config, running
from tests.scorer_models import SyntheticFeatures, build_model_dir
from tests.support import consume_all, produce_all

pytestmark = pytest.mark.integration

ANON, SCORES = f"anon.{REEFER}", f"scores.{REEFER}"
T0 = 1_700_000_000.0


class Reefer:
    """The module's declaration (registered), its key, and its models."""

    def __init__(self, root: Path, stream: Stream) -> None:
        self.stream = stream
        self.key: Ed25519PrivateKey = generate_private_key()
        self.pub = root / "fleet.pub"
        write_public_key(self.key, self.pub)
        self.data = SyntheticFeatures(REEFER, seed=3, names=stream.feature_names)
        self.root = root
        self.model, _ = build_model_dir(
            root / "reefer-1",
            REEFER,
            self.data,
            version="reefer-1",
            feature_spec=stream.feature_spec,
            epochs=20,
            key=self.key,
        )
        # The same network, built for another version of the declaration.
        self.other, _ = build_model_dir(
            root / "reefer-other",
            REEFER,
            self.data,
            version="reefer-other",
            feature_spec="fs-0123456789ab",
            epochs=3,
            key=self.key,
        )

    def install(self, models_dir: Path) -> None:
        """What the agent does with an accepted model: a verified copy, the symlink flipped."""
        import shutil

        store = ModelStore(models_dir).start()
        staged = shutil.copytree(self.model, models_dir / f".staged-{uuid.uuid4().hex[:6]}")
        store.activate(REEFER, store.install(staged, REEFER, "reefer-1"), "reefer-1")


@pytest.fixture(scope="module")
def reefer(tmp_path_factory: pytest.TempPathFactory, edge_kafka: KafkaSettings) -> Iterator[Reefer]:
    root = tmp_path_factory.mktemp("reefer")
    with declared(write_reefer(root / "streams")) as streams:
        create_topics(edge_kafka, [ANON, SCORES])
        yield Reefer(root, streams[REEFER])


def create_topics(bootstrap: Target, names: list[str]) -> None:
    admin = AdminClient(client_config(bootstrap))
    for name, fut in admin.create_topics([NewTopic(n, 3, 1) for n in names]).items():
        try:
            fut.result(30)
        except KafkaException as exc:
            if exc.args[0].code() != exc.args[0].TOPIC_ALREADY_EXISTS:
                raise AssertionError(f"creating {name}: {exc}") from exc


def of_run(bootstrap: Target, topic: str, run_id: str, n: int, timeout: float = 60.0) -> list[Any]:
    """This run's scores (by event id) or alerts (by their events), once ``n`` are there."""
    deadline = time.monotonic() + timeout
    got: list[Any] = []
    while time.monotonic() < deadline:
        msgs = consume_all(bootstrap, topic, idle=1.5, timeout=20)
        if topic == topics.ALERTS:
            alerts = [decode(Alert, m.value()) for m in msgs]
            got = [
                a
                for a in alerts
                if a.stream == REEFER and any(e.startswith(run_id) for e in a.event_ids)
            ]
        else:
            got = [
                s for s in (decode(Score, m.value()) for m in msgs) if s.event_id.startswith(run_id)
            ]
        if len(got) >= n:
            return got
    return got


def committed_to_end(bootstrap: Target, group: str, topic: str) -> bool:
    """Whether ``group`` committed every partition of ``topic`` up to its end (a partition
    that never held a record has nothing to commit)."""
    c = Consumer(client_config(bootstrap, {"group.id": group, "enable.auto.commit": False}))
    try:
        parts = [TopicPartition(topic, p) for p in range(3)]
        for tp in c.committed(parts, timeout=10):
            low, high = c.get_watermark_offsets(tp, timeout=10)
            if (tp.offset if tp.offset >= 0 else low) != high:
                return False
        return True
    finally:
        c.close()


def test_a_declared_stream_with_a_model_is_scored_with_its_declared_alerts_and_labels(
    tmp_path: Path, edge_kafka: KafkaSettings, mqtt_broker: MqttBroker, reefer: Reefer
) -> None:
    models_dir = tmp_path / "models"
    reefer.install(models_dir)
    cfg = edge_config(tmp_path, edge_kafka, mqtt_broker, models_dir, reefer.pub)
    run_id = f"a{uuid.uuid4().hex[:10]}"
    # RT-0001 misbehaves for ten seconds, then runs normally long past the declared quiet_s.
    records = reefer_records(
        reefer.data, run_id, "RT-0001", T0, 40, anomalous=range(10, 20)
    ) + reefer_records(reefer.data, run_id, "RT-0002", T0, 40, seed=5)
    produce_all(edge_kafka, ANON, as_messages(records))
    with running(ScorerService(cfg)) as svc:
        assert svc.holders is not None and REEFER in svc.holders
        scores = of_run(edge_kafka, SCORES, run_id, 80)
        alerts = of_run(edge_kafka, topics.ALERTS, run_id, 2)
        episodes = consume_all(edge_kafka, topics.SCORER_EPISODES, idle=1.5)

    assert len(scores) == 80 and len({s.event_id for s in scores}) == 80
    odd = [
        s for s in scores if s.token == "RT-0001" and 10 <= int(s.event_id.rsplit("-", 1)[1]) < 20
    ]
    assert len(odd) == 10
    assert all(
        s.anomalous
        and s.score > s.threshold
        and s.model_version == "reefer-1"
        and s.stream == REEFER
        for s in odd
    )
    # One episode, as the declaration says: opened by 4 anomalous events within 10 s, closed
    # by the trailer's own events 5 quiet seconds later.
    assert {a.alert_id for a in alerts} == {alerts[0].alert_id}
    assert alerts[0].state == "open" and alerts[-1].state == "closed"
    assert {a.token for a in alerts} == {"RT-0001"}
    assert alerts[0].start_ts == T0 + 10 and alerts[0].end_ts == T0 + 13
    labels = {f.label for f in reefer.stream.features}
    for alert in alerts:
        assert len(alert.top_features) == 3
        assert {c.feature for c in alert.top_features} <= labels, alert.top_features
    # Its episode state is kept under the stream's own key.
    keys = {(m.key() or b"").decode() for m in episodes}
    assert f"{svc.group_id}@{REEFER}/RT-0001" in keys


def test_a_declared_stream_without_a_model_passes_unscored_until_one_is_installed(
    tmp_path: Path, edge_kafka: KafkaSettings, mqtt_broker: MqttBroker, reefer: Reefer
) -> None:
    models_dir = tmp_path / "models"
    cfg = edge_config(tmp_path, edge_kafka, mqtt_broker, models_dir, reefer.pub)
    run_id = f"b{uuid.uuid4().hex[:10]}"
    produce_all(
        edge_kafka, ANON, as_messages(reefer_records(reefer.data, run_id, "RT-0101", T0, 50))
    )
    before = (
        REGISTRY.get_sample_value("fleetsentry_scorer_unscored_total", {"stream": REEFER}) or 0.0
    )
    svc = ScorerService(cfg)
    svc.start()
    observe = metrics.Recorder()
    totals = BatchResult()

    def step_until(done: Any, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not done():
            t = time.perf_counter()
            result = svc.step()
            if result is not None:
                observe(result, time.perf_counter() - t, svc)
                for stream, n in result.unscored.items():
                    totals.unscored[stream] = totals.unscored.get(stream, 0) + n
                for stream, n in result.events.items():
                    totals.events[stream] = totals.events.get(stream, 0) + n
        assert done(), totals

    try:
        assert svc.holders is not None and REEFER not in svc.holders
        # Every record of anon.reefer (this run's 50 and any earlier test's) passes unscored.
        step_until(
            lambda: (
                totals.unscored.get(REEFER, 0) >= 50
                and committed_to_end(edge_kafka, svc.group_id, ANON)
            )
        )
        assert REEFER not in totals.events
        after = REGISTRY.get_sample_value("fleetsentry_scorer_unscored_total", {"stream": REEFER})
        assert after is not None and after - before == totals.unscored[REEFER]

        # The agent installs a model: the running scorer takes it within a second.
        # (Records that arrive before it looks again, at most a second later, pass unscored.)
        reefer.install(models_dir)
        step_until(lambda: REEFER in (svc.holders or {}), timeout=5)
        later = f"{run_id}x"
        produce_all(
            edge_kafka,
            ANON,
            as_messages(
                reefer_records(reefer.data, later, "RT-0101", T0 + 100, 30, anomalous=range(5, 12))
            ),
        )
        step_until(lambda: totals.events.get(REEFER, 0) >= 30)
    finally:
        svc.close()
    scores = of_run(edge_kafka, SCORES, run_id, 30)
    assert {s.event_id for s in scores} == {f"{later}-RT-0101-{i}" for i in range(30)}
    assert all(s.anomalous for s in scores if 5 <= int(s.event_id.rsplit("-", 1)[1]) < 12)
    assert committed_to_end(edge_kafka, svc.group_id, ANON)


_NUMBERS = [int(time.time())]


def message(reefer: Reefer, model_dir: Path) -> tuple[bytes, bytes]:
    """A cloud.models message for a reefer model, with a signed release."""
    import msgspec

    from shared.contracts import ModelManifest
    from shared.signing import MANIFEST_FILE

    m = msgspec.json.decode((model_dir / MANIFEST_FILE).read_bytes(), type=ModelManifest)
    _NUMBERS[0] += 1
    release = releases.issue(
        model_dir,
        fleet=releases.DEFAULT_FLEET,
        stream=REEFER,
        version=m.version,
        number=_NUMBERS[0],
        key=reefer.key,
        ttl_s=3600.0,
    )
    return REEFER.encode(), model_bundle.pack(
        model_dir, REEFER, m.version, time.time(), release=release
    )


def test_the_agent_refuses_a_model_of_another_feature_spec_and_installs_the_declared_one(
    tmp_path: Path, edge_kafka: KafkaSettings, mqtt_broker: MqttBroker, reefer: Reefer
) -> None:
    config = agent_config(edge_kafka, tmp_path, [reefer.pub])
    skip_to_end(edge_kafka, f"{config.edge_id}-agent")
    agent = ModelAgent(config).start()
    try:
        assert REEFER in agent.streams
        outcome = deliver(agent, edge_kafka, *message(reefer, reefer.other))
        assert outcome.state == "rejected"
        expect = (
            f"was built for feature spec 'fs-0123456789ab'; this gateway's declaration "
            f"of reefer (reefer.toml) computes '{reefer.stream.feature_spec}'"
        )
        assert expect in outcome.reason, outcome.reason
        assert agent.store.active_dir(REEFER) is None
        published = [
            s
            for s in (
                decode(ModelStatus, m.value())
                for m in consume_all(edge_kafka, topics.MODEL_STATUS, idle=2)
            )
            if s.edge_id == config.edge_id and s.stream == REEFER
        ]
        assert published[-1].state == "rejected" and expect in published[-1].reason

        # The model built for this declaration is shadow-scored on the recent anon.reefer
        # records and installed; the scorer takes it and the agent watches its scores.
        run_id = f"c{uuid.uuid4().hex[:10]}"
        produce_all(
            edge_kafka, ANON, as_messages(reefer_records(reefer.data, run_id, "RT-0201", T0, 150))
        )
        outcome = deliver(agent, edge_kafka, *message(reefer, reefer.model))
        assert outcome.state == "active", outcome.reason
        assert outcome.verdict is not None and outcome.verdict.events > 0
        scorer_cfg = edge_config(tmp_path, edge_kafka, mqtt_broker, config.models_dir, reefer.pub)
        with running(ScorerService(scorer_cfg)) as svc:
            assert of_run(edge_kafka, SCORES, run_id, 150)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and agent.watches[REEFER][0].events < 150:
                agent.step(0.2)
            assert svc.holders is not None
            assert svc.holders[REEFER].current.version == "reefer-1"
        watch = agent.watches[REEFER][0]
        assert watch.version == "reefer-1" and watch.events >= 150
        assert "rolled_back" not in {s.state for s in agent.statuses}
    finally:
        agent.close()


TILL = "till"


@pytest.mark.parametrize("tokenized", [False, True], ids=["plain-id", "tokenized-id"])
def test_a_declared_stream_with_decisions_answers_each_device_on_its_commands_topic(
    tmp_path: Path,
    edge_kafka: KafkaSettings,
    mqtt_broker: MqttBroker,
    reefer: Reefer,
    tokenized: bool,
) -> None:
    # A declared stream with `decision = true`: each scored event is approved or declined on
    # its own device's commands topic, as payments are. A device id that is not personal data
    # is the topic's level as it is; a tokenized one is revealed by the vault first.
    from edge.scorer.decision_publisher import DecisionPublisher
    from edge.scorer.vins import VinCache
    from edge.vault.vault import Vault
    from shared.tokens import Tokenizer
    from tests.integration.scorer.test_scorer_service import ThreadVault, Vehicle

    name = f"{TILL}_{'t' if tokenized else 'p'}"
    unit = 'unit = { type = "str", label = "Refrigeration unit" }'
    text = (
        reefer_toml(alerts='kind = "event"')
        .replace('name = "reefer"', f'name = "{name}"')
        .replace("[fields]", "decision = true\n\n[fields]", 1)
    )
    if tokenized:
        text = text.replace(unit, unit.replace('"str",', '"str", pii = "token",'))
    (tmp_path / "streams").mkdir()
    (tmp_path / "streams" / f"{name}.toml").write_text(text)
    vault = Vault(tmp_path / "vault.sqlite", tmp_path / "vault.key", Tokenizer(b"k" * 32)).start()
    device_id = f"TL-{uuid.uuid4().hex[:6].upper()}"
    with declared(tmp_path / "streams") as found:
        stream = found[name]
        create_topics(edge_kafka, [f"anon.{name}", f"scores.{name}"])
        data = SyntheticFeatures(name, seed=3, names=stream.feature_names)
        models_dir = tmp_path / "models"
        model, _ = build_model_dir(
            tmp_path / f"{name}-1",
            name,
            data,
            version=f"{name}-1",
            feature_spec=stream.feature_spec,
            epochs=20,
            key=reefer.key,
        )
        import shutil

        store = ModelStore(models_dir).start()
        staged = shutil.copytree(model, models_dir / ".staged")
        store.activate(name, store.install(staged, name, f"{name}-1"), f"{name}-1")
        cfg = edge_config(tmp_path, edge_kafka, mqtt_broker, models_dir, reefer.pub)
        mqtt_broker.register_vehicles([device_id], "device-pw")
        device = vault.put("unit", device_id, None) if tokenized else device_id
        run_id = f"d{uuid.uuid4().hex[:10]}"
        records = [
            msgspec.structs.replace(r, stream=name, device=device, key=device)
            for r in reefer_records(data, run_id, "x", T0, 6, anomalous=range(5, 6))
        ]
        listener = Vehicle(mqtt_broker, device_id, "device-pw")
        publisher = DecisionPublisher(cfg, f"{run_id}-scorer")
        publisher.start()
        svc = ScorerService(
            cfg, vin_lookup=VinCache(ThreadVault(vault)), send_decision=publisher.publish
        )
        try:
            produce_all(edge_kafka, f"anon.{name}", as_messages(records))
            with running(svc):
                deadline = time.monotonic() + 60
                while time.monotonic() < deadline and len(listener.got) < 6:
                    time.sleep(0.1)
        finally:
            publisher.close()
            listener.close()
            vault.close()
    got = {d.event_id: d.decision for d in listener.got}
    assert got == {
        r.event_id: "decline" if r.event_id.endswith("-5") else "approve" for r in records
    }
