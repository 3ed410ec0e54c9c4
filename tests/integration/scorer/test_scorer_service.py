"""The scorer against the real edge Kafka and Mosquitto: exactly-once scores and alerts,
episodes that survive a crash, and a declined payment reaching its vehicle over MQTT."""

from __future__ import annotations

import threading
import time
import uuid
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from edge.config import EdgeConfig
from edge.scorer.decision_publisher import DecisionPublisher
from edge.scorer.scorer import ScorerService
from edge.scorer.vins import VinCache
from edge.vault.vault import Vault
from shared import config as shared_config
from shared import topics
from shared.contracts import (
    Alert,
    AnonPayment,
    AnonTelemetry,
    Decision,
    Event,
    Score,
    decode,
    encode,
)
from shared.kafka_config import KafkaSettings, Target
from shared.signing import generate_private_key
from shared.tokens import Tokenizer
from tests.conftest import MqttBroker
from tests.scorer_models import SyntheticFeatures, build_model_dir
from tests.support import consume_all, kafka_table, produce_all, refusing_large_records

pytestmark = pytest.mark.integration

VIN = "1FTEW1EP5JKD12345"


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict[str, Any]]:
    """(models_dir, public_key, data per stream): both streams signed with one key."""
    root = tmp_path_factory.mktemp("scorer-models")
    key = generate_private_key()
    data = {s: SyntheticFeatures(s, seed=11) for s in ("telemetry", "payments")}
    pub = Path()
    for stream, d in data.items():
        _dir, pub = build_model_dir(root / stream, stream, d, key=key, epochs=20)
    return root, pub, data


@pytest.fixture
def vault(tmp_path: Path) -> Iterator[Vault]:
    v = Vault(tmp_path / "vault.sqlite", tmp_path / "vault.key", Tokenizer(b"k" * 32)).start()
    yield v
    v.close()


def edge_config(
    tmp_path: Path,
    bootstrap: Target,
    broker: MqttBroker,
    models_dir: Path,
    pub: Path,
    quiet_gap_s: float = 20.0,
) -> EdgeConfig:
    return shared_config.convert(
        {
            "edge_id": f"scorer-it-{uuid.uuid4().hex[:8]}",
            "data_dir": str(tmp_path),
            "kafka": kafka_table(bootstrap),
            "mqtt": {
                "host": broker.host,
                "port": broker.port,
                "username": broker.bridge[0],
                "password": broker.bridge[1],
            },
            "scorer": {
                "models_dir": str(models_dir),
                "public_key": str(pub),
                "episode_quiet_gap_s": quiet_gap_s,
            },
        },
        EdgeConfig,
    )


@contextmanager
def running(svc: ScorerService) -> Iterator[ScorerService]:
    """Run the service's batch loop in a thread (what `fleetsentry edge scorer` does)."""
    stop, errors = threading.Event(), []

    def loop() -> None:
        try:
            while not stop.is_set():
                svc.step()
        except Exception as exc:  # surfaced in the test below
            errors.append(exc)

    svc.start()
    t = threading.Thread(target=loop, daemon=True)
    t.start()
    try:
        yield svc
    finally:
        stop.set()
        t.join(30)
        svc.close()
        assert not errors, errors


def telemetry(
    data: SyntheticFeatures,
    run_id: str,
    token: str,
    start: float,
    n: int,
    anomalous: range = range(0),
) -> list[tuple[bytes, bytes]]:
    rows = data.normal(n, seed=hash((run_id, token)) % 2**31)
    odd = data.anomalous(n, seed=5)
    out = []
    for i in range(n):
        row = odd[i] if i in anomalous else rows[i]
        rec = AnonTelemetry(
            event_id=f"{run_id}-{token}-{i}",
            ts=start + i,
            vehicle_token=token,
            driver_token="driver-token-1",
            model="Transit",
            firmware="1.0",
            cell="c",
            readings={},
            features=data.as_dict(row),
        )
        out.append((token.encode(), encode(rec)))
    return out


def payment(
    data: SyntheticFeatures, event_id: str, card: str, vehicle_token: str, ts: float, odd: bool
) -> tuple[bytes, bytes]:
    # An ordinary payment from the middle of the distribution, the same row on every run.
    ordinary = data.typical(1, seed=zlib.crc32(event_id.rsplit("-", 1)[-1].encode()))[0]
    row = data.anomalous(1, seed=9)[0] if odd else ordinary
    rec = AnonPayment(
        event_id=event_id,
        ts=ts,
        card_token=card,
        vehicle_token=vehicle_token,
        driver_token="driver-token-1",
        merchant_id="m-1",
        mcc="5541",
        category="fuel",
        amount=50.0,
        currency="EUR",
        cell="c",
        features=data.as_dict(row),
    )
    return card.encode(), encode(rec)


def mine(msgs: list[Any], kind: type[Event] | type[Alert], run_id: str) -> list[Any]:
    if issubclass(kind, Alert):
        alerts = [decode(kind, m.value()) for m in msgs]
        return [a for a in alerts if a.token.startswith(run_id)]
    events = [decode(kind, m.value()) for m in msgs]
    return [r for r in events if r.event_id.startswith(run_id)]


def wait_until(
    bootstrap: Target,
    topic: str,
    kind: type[Event] | type[Alert],
    run_id: str,
    done: Callable[[list[Any]], bool],
    timeout: float = 60.0,
) -> list[Any]:
    """The run's records on ``topic`` once ``done`` holds for them, or what arrived by the
    deadline."""
    deadline = time.monotonic() + timeout
    got: list[Any] = []
    while time.monotonic() < deadline:
        got = mine(consume_all(bootstrap, topic, idle=1.5, timeout=20), kind, run_id)
        if done(got):
            return got
    return got


def wait_for(
    bootstrap: Target,
    topic: str,
    kind: type[Event] | type[Alert],
    run_id: str,
    n: int,
    timeout: float = 60.0,
) -> list[Any]:
    return wait_until(bootstrap, topic, kind, run_id, lambda got: len(got) >= n, timeout)


def test_scores_alerts_and_episode_state_are_exactly_once_across_a_crash(
    tmp_path: Path,
    edge_kafka: KafkaSettings,
    mqtt_broker: MqttBroker,
    models: tuple[Path, Path, dict[str, Any]],
) -> None:
    models_dir, pub, data = models
    cfg = edge_config(tmp_path, edge_kafka, mqtt_broker, models_dir, pub)
    run_id = f"r{uuid.uuid4().hex[:10]}"
    faulty, healthy = f"{run_id}-veh-faulty", f"{run_id}-veh-ok"
    t0 = 1_700_000_000.0
    # The fault starts at frame 40 and is still going when the scorer "crashes".
    first = telemetry(
        data["telemetry"], run_id, faulty, t0, 60, anomalous=range(40, 90)
    ) + telemetry(data["telemetry"], run_id, healthy, t0, 60)
    produce_all(edge_kafka, topics.ANON_TELEMETRY, first)

    class Crashing(ScorerService):
        """Writes a batch in a transaction, then dies before committing it."""

        def _commit(self, out: Any, msgs: Any) -> bool:
            assert self._producer is not None
            self._producer.begin_transaction()
            for topic, key, value in out.records:
                self._producer.produce(topic, value=value, key=key)
            self._producer.flush(10)
            raise RuntimeError("simulated crash before commit")

    with running(ScorerService(cfg)):
        wait_for(edge_kafka, topics.SCORES_TELEMETRY, Score, run_id, 120)
    crashing = Crashing(cfg)
    crashing.start()
    # A long quiet tail: a stray normal frame above the threshold may extend the episode.
    later = telemetry(data["telemetry"], run_id, faulty, t0, 150, anomalous=range(40, 90))[60:]
    produce_all(edge_kafka, topics.ANON_TELEMETRY, later)
    deadline = time.monotonic() + 30
    with pytest.raises(RuntimeError, match="simulated crash"):
        while time.monotonic() < deadline:
            crashing.step()
    assert crashing._consumer is not None
    crashing._consumer.close()  # leaves the group without committing anything
    crashing._producer = None  # dropped with its transaction open, as a dead process would
    # Abandoned mid-transaction: the restarted scorer fences it and redoes the batch.
    with running(ScorerService(cfg)):
        scores = wait_for(edge_kafka, topics.SCORES_TELEMETRY, Score, run_id, 210)
        alerts = wait_for(edge_kafka, topics.ALERTS, Alert, run_id, 2)
        time.sleep(2)
        scores = mine(consume_all(edge_kafka, topics.SCORES_TELEMETRY, idle=1.5), Score, run_id)
        alerts = mine(consume_all(edge_kafka, topics.ALERTS, idle=1.5), Alert, run_id)

    ids = [s.event_id for s in scores]
    assert len(ids) == 210 and len(set(ids)) == 210  # every event scored, none twice
    by_id = {s.event_id: s for s in scores}
    assert all(by_id[f"{run_id}-{faulty}-{i}"].anomalous for i in range(40, 90))
    # The healthy vehicle raises nothing (a frame or two near the threshold of this small
    # synthetic model may score above it, never enough to open an episode; checked below).
    # One episode for the faulty vehicle, opened before the crash and closed after it.
    episodes = {a.alert_id for a in alerts if a.token == faulty}
    assert len(episodes) == 1, [(a.state, a.start_ts) for a in alerts]
    states = [a.state for a in alerts if a.token == faulty]
    assert states[0] == "open" and states.count("open") == 1
    assert states[-1] == "closed" and states.count("closed") == 1
    closed = alerts[-1]
    # (A normal frame just above the threshold next to the fault may join the episode.)
    assert t0 + 30 <= closed.start_ts <= t0 + 40 and t0 + 89 <= closed.end_ts < t0 + 130
    assert t0 + 40 <= closed.peak_ts <= t0 + 89
    assert len(closed.top_features) == 3 and all(c.feature for c in closed.top_features)
    assert not any(a.token == healthy for a in alerts)


def test_a_batch_the_broker_refuses_is_aborted_and_scored_once_later_by_the_same_process(
    tmp_path: Path,
    edge_kafka: KafkaSettings,
    mqtt_broker: MqttBroker,
    models: tuple[Path, Path, dict[str, Any]],
) -> None:
    """scores.telemetry refuses the records for a while, in the middle of a vehicle's fault:
    each batch is aborted, its episodes rewound to the last commit and consumed again, by the
    same running scorer; then every event is scored once and the fault is one episode."""
    models_dir, pub, data = models
    cfg = edge_config(tmp_path, edge_kafka, mqtt_broker, models_dir, pub)
    run_id = f"r{uuid.uuid4().hex[:10]}"
    faulty = f"{run_id}-veh-faulty"
    t0 = 1_700_000_000.0
    frames = telemetry(data["telemetry"], run_id, faulty, t0, 120, anomalous=range(20, 60))
    produce_all(edge_kafka, topics.ANON_TELEMETRY, frames[:40])
    with running(ScorerService(cfg)) as svc:
        assert len(wait_for(edge_kafka, topics.SCORES_TELEMETRY, Score, run_id, 40)) == 40
        with refusing_large_records(edge_kafka, topics.SCORES_TELEMETRY, max_bytes=100):
            produce_all(edge_kafka, topics.ANON_TELEMETRY, frames[40:])
            deadline = time.monotonic() + 60
            while svc._txn.aborted < 3 and time.monotonic() < deadline:
                time.sleep(0.2)
            assert svc._txn.aborted >= 3, "no batch was aborted"
        scores = wait_for(edge_kafka, topics.SCORES_TELEMETRY, Score, run_id, 120)
        alerts = wait_for(edge_kafka, topics.ALERTS, Alert, run_id, 2)
        time.sleep(2)
        scores = mine(consume_all(edge_kafka, topics.SCORES_TELEMETRY, idle=1.5), Score, run_id)
        alerts = mine(consume_all(edge_kafka, topics.ALERTS, idle=1.5), Alert, run_id)
    ids = [s.event_id for s in scores]
    assert len(ids) == 120 and len(set(ids)) == 120  # every event scored, none twice
    states = [a.state for a in alerts if a.token == faulty]
    assert len({a.alert_id for a in alerts if a.token == faulty}) == 1, states
    assert states[0] == "open" and states.count("open") == 1
    assert states[-1] == "closed" and states.count("closed") == 1


class ThreadVault:
    """Opens a second connection to the vault's database in the thread that reveals."""

    def __init__(self, vault: Vault) -> None:
        self.source = vault
        self.vault: Vault | None = None

    def reveal(self, token: str, actor: str) -> str:
        if self.vault is None:
            self.vault = Vault(self.source.path, self.source.key_file).start()
        return self.vault.reveal(token, actor)


class Vehicle:
    """A vehicle's MQTT session: logs in with its VIN, listens on its commands topic."""

    def __init__(self, broker: MqttBroker, vin: str, password: str) -> None:
        self.got: list[Decision] = []
        self.ready = threading.Event()
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=vin, protocol=mqtt.MQTTv5)
        c.username_pw_set(vin, password)
        c.on_connect = lambda cl, *_: cl.subscribe(f"fleet/{vin}/commands", qos=1)
        c.on_subscribe = lambda *_: self.ready.set()
        c.on_message = lambda _c, _u, msg: self.got.append(decode(Decision, bytes(msg.payload)))
        c.connect(broker.host, broker.port)
        c.loop_start()
        self.client = c
        assert self.ready.wait(15), "vehicle could not subscribe"

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def test_a_payment_above_threshold_is_declined_on_the_vehicles_commands_topic(
    tmp_path: Path,
    edge_kafka: KafkaSettings,
    mqtt_broker: MqttBroker,
    vault: Vault,
    models: tuple[Path, Path, dict[str, Any]],
) -> None:
    models_dir, pub, data = models
    cfg = edge_config(tmp_path, edge_kafka, mqtt_broker, models_dir, pub)
    mqtt_broker.register_vehicles([VIN], "vehicle-pw")
    vehicle_token = vault.put("vin", VIN, "driver-1")
    run_id = f"p{uuid.uuid4().hex[:10]}"
    card = f"{run_id}-card"
    vehicle = Vehicle(mqtt_broker, VIN, "vehicle-pw")
    publisher = DecisionPublisher(cfg, f"{run_id}-scorer")
    publisher.start()
    # SQLite connections belong to a thread: the scorer's loop opens its own, as in production.
    service_vault = ThreadVault(vault)
    svc = ScorerService(cfg, vin_lookup=VinCache(service_vault), send_decision=publisher.publish)
    try:
        with running(svc):
            ts = time.time()
            produce_all(
                edge_kafka,
                topics.ANON_PAYMENTS,
                [
                    payment(
                        data["payments"], f"{run_id}-ok-{i}", card, vehicle_token, ts + i, False
                    )
                    for i in range(5)
                ]
                + [
                    payment(data["payments"], f"{run_id}-fraud", card, vehicle_token, ts + 9, True),
                    payment(
                        data["payments"], f"{run_id}-lost", card, "unknown-vehicle-tok", ts, True
                    ),
                ],
            )
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and len(vehicle.got) < 6:
                time.sleep(0.1)
            alerts = wait_for(edge_kafka, topics.ALERTS, Alert, run_id, 2)
    finally:
        publisher.close()
        vehicle.close()
    decisions = {d.event_id: d for d in vehicle.got}
    assert decisions[f"{run_id}-fraud"].decision == "decline"
    assert decisions[f"{run_id}-fraud"].score > decisions[f"{run_id}-fraud"].threshold
    assert "unusual:" in decisions[f"{run_id}-fraud"].reason
    assert sorted(d.decision for k, d in decisions.items() if "-ok-" in k) == ["approve"] * 5
    assert f"{run_id}-lost" not in decisions  # no vehicle to send it to; counted, not lost
    assert svc.decisions_unrouted == 1
    assert {a.event_ids[0] for a in alerts} == {f"{run_id}-fraud", f"{run_id}-lost"}
    assert all(a.state == "closed" and a.stream == "payments" for a in alerts)
    # The scorer looked the VIN up through the vault, and the vault audited it.
    assert any(r["actor"] == "scorer" and r["action"] == "reveal" for r in vault.audit_log())


def step_until_scored(svc: ScorerService, n: int, timeout: float = 30.0) -> int:
    """Run batches until ``n`` telemetry events were scored (then the records so far are in)."""
    deadline, done = time.monotonic() + timeout, 0
    while done < n and time.monotonic() < deadline:
        result = svc.step()
        done += result.events.get("telemetry", 0) if result is not None else 0
    assert done >= n, f"only {done} of {n} events scored in {timeout}s"
    return done


def test_a_vehicle_with_a_clock_ahead_neither_suppresses_nor_closes_another_vehicles_episode(
    tmp_path: Path,
    edge_kafka: KafkaSettings,
    mqtt_broker: MqttBroker,
    models: tuple[Path, Path, dict[str, Any]],
) -> None:
    models_dir, pub, data = models
    cfg = edge_config(tmp_path, edge_kafka, mqtt_broker, models_dir, pub, quiet_gap_s=4.0)
    run_id = f"c{uuid.uuid4().hex[:10]}"
    skewed, faulty = f"{run_id}-veh-ahead", f"{run_id}-veh-faulty"
    t0 = time.time()
    svc = ScorerService(cfg)
    svc.start()
    try:
        # The attacker: one ordinary frame stamped 299 s ahead (the bridge accepts up to +300 s).
        produce_all(
            edge_kafka,
            topics.ANON_TELEMETRY,
            telemetry(data["telemetry"], run_id, skewed, t0 + 299, 1),
        )
        step_until_scored(svc, 1)
        while svc.step() is not None:  # drain what other tests left in the topic
            pass
        # The victim: a fault, one frame a second as a vehicle sends it, one batch each.
        frames = telemetry(data["telemetry"], run_id, faulty, t0, 12, anomalous=range(12))
        for frame in frames:
            produce_all(edge_kafka, topics.ANON_TELEMETRY, [frame])
            step_until_scored(svc, 1)
        # Then it goes silent, and so does everyone: its episode still closes, by wall time.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            svc.step()
            got = mine(consume_all(edge_kafka, topics.ALERTS, idle=0.5, timeout=5), Alert, run_id)
            if any(a.state == "closed" for a in got):
                break
    finally:
        svc.close()
    alerts = mine(consume_all(edge_kafka, topics.ALERTS, idle=1.0), Alert, run_id)
    states = [(a.token, a.state) for a in alerts]
    assert (faulty, "open") in states, f"the faulty vehicle's episode never opened: {states}"
    assert not any(a.token == skewed for a in alerts)
    mine_ = [a for a in alerts if a.token == faulty]
    assert len({a.alert_id for a in mine_}) == 1, states
    assert [a.state for a in mine_ if a.state != "update"] == ["open", "closed"]
    closed = mine_[-1]
    assert closed.start_ts == t0 and closed.end_ts == t0 + 11
    assert svc.trackers["telemetry"].states == {}
