"""Every declined payment's decision reaches its vehicle, whatever stops the scorer: a close
right after a batch, and kill -9 at a random moment or while the MQTT broker is stalled.

Real edge Kafka and Mosquitto; the vehicle logs in with its VIN and keeps a persistent QoS 1
session on its commands topic, as a vehicle does. The verdict reconciles what the scorer
committed to ``scores.payments`` with what the vehicle received."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge import config as edge_config_file
from edge.scorer.decision_publisher import DecisionPublisher
from edge.scorer.scorer import BatchResult, Out, ScorerService
from edge.scorer.vins import VinCache
from edge.vault.setup import open_vault
from edge.vault.vault import Vault
from shared import topics
from shared.contracts import AnonPayment, Decision, Score, decode
from shared.infra.stack import Stack
from shared.kafka_config import KafkaSettings, Target
from shared.signing import generate_private_key
from shared.tokens import Tokenizer
from tests.bridge_support import ROOT, unique, write_edge_toml
from tests.conftest import MqttBroker
from tests.integration.scorer.test_scorer_service import edge_config, payment
from tests.scorer_models import SyntheticFeatures, build_model_dir
from tests.support import consume_all, produce_all, producer

pytestmark = pytest.mark.integration

PASSWORD = "vehicle-pw"
CARD = "card-token-1"


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


class Vehicle:
    """A vehicle's persistent MQTT session (its VIN as login and client id) on its commands."""

    def __init__(self, broker: MqttBroker, vin: str) -> None:
        self.vin = vin
        self.got: list[Decision] = []
        self.ready = threading.Event()
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 600
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=vin, protocol=mqtt.MQTTv5)
        c.username_pw_set(vin, PASSWORD)
        c.on_connect = lambda cl, *_: cl.subscribe(f"fleet/{vin}/commands", qos=1)
        c.on_subscribe = lambda *_: self.ready.set()
        c.on_message = lambda _c, _u, msg: self.got.append(decode(Decision, bytes(msg.payload)))
        c.connect(broker.host, broker.port, clean_start=True, properties=props)
        c.loop_start()
        self.client = c
        assert self.ready.wait(15), "vehicle could not subscribe"

    def decisions(self) -> dict[str, str]:
        """event_id -> decision of everything received so far."""
        return {d.event_id: d.decision for d in list(self.got)}

    def wait_for(self, event_ids: set[str], timeout: float = 30.0) -> set[str]:
        """Until every one of ``event_ids`` arrived (or timeout); returns the missing ones."""
        deadline = time.monotonic() + timeout
        missing = event_ids - set(self.decisions())
        while missing and time.monotonic() < deadline:
            time.sleep(0.2)
            missing = event_ids - set(self.decisions())
        return missing

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def vehicle(mqtt_broker: MqttBroker) -> Iterator[Vehicle]:
    vin = "1FTEW1EP5JKD" + f"{random.randrange(10**5):05d}"
    mqtt_broker.register_vehicles([vin], PASSWORD)
    v = Vehicle(mqtt_broker, vin)
    yield v
    v.close()


def test_closing_the_scorer_right_after_a_batch_delivers_every_decision(
    tmp_path: Path,
    edge_kafka: KafkaSettings,
    mqtt_broker: MqttBroker,
    vehicle: Vehicle,
    models: tuple[Path, Path, dict[str, Any]],
) -> None:
    models_dir, pub, data = models
    cfg = edge_config(tmp_path, edge_kafka, mqtt_broker, models_dir, pub)
    vault = Vault(tmp_path / "vault.sqlite", tmp_path / "vault.key", Tokenizer(b"k" * 32)).start()
    token = vault.put("vin", vehicle.vin, "driver-1")
    run_id = unique("close")
    # Two batches of declines, more than paho keeps in flight at once (1,000): the rest wait
    # in its queue for the broker's acknowledgements when the scorer is told to stop.
    batches = [
        [
            decode(
                AnonPayment,
                payment(data["payments"], f"{run_id}-{b}-{i}", CARD, token, time.time(), True)[1],
            )
            for i in range(1500)
        ]
        for b in range(2)
    ]
    publisher = DecisionPublisher(cfg, f"{run_id}-scorer")
    svc = ScorerService(cfg, vin_lookup=VinCache(vault), send_decision=publisher.publish)
    svc._closers.append(publisher.close)  # as the service's run() does
    publisher.start()
    try:
        svc.prepare()
        result = BatchResult()
        for batch in batches:
            svc.score_records("payments", batch, Out(), result)
    finally:
        svc.close()
        vault.close()
    sent = {r.event_id for batch in batches for r in batch}
    assert result.decisions == len(sent) == 3000
    missing = vehicle.wait_for(sent)
    assert not missing, f"{len(missing)} of {len(sent)} decisions never reached the vehicle"
    assert set(vehicle.decisions().values()) == {"decline"}


class ScorerProcess:
    """``fleetsentry edge scorer`` as a child process, killed with SIGKILL like a crash."""

    def __init__(self, config: Path) -> None:
        self.config = config
        self.log = config.with_name("scorer.log")
        self.proc: subprocess.Popen[bytes] | None = None
        self.offset = 0

    def start(self, timeout: float = 60.0) -> ScorerProcess:
        argv = [
            sys.executable,
            "-m",
            "edge.cli",
            "scorer",
            "--config",
            str(self.config),
            "--metrics-port",
            "0",
        ]
        self.offset = self.log.stat().st_size if self.log.exists() else 0
        with open(self.log, "ab") as fh:
            self.proc = subprocess.Popen(
                argv,
                stdout=fh,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONPATH": str(ROOT)},
            )
        deadline = time.monotonic() + timeout
        while "scoring " not in self.text():  # its consumer has its partitions
            assert self.proc.poll() is None, f"scorer exited: {self.text()[-3000:]}"
            assert time.monotonic() < deadline, f"scorer did not start: {self.text()[-3000:]}"
            time.sleep(0.1)
        return self

    def text(self) -> str:
        with open(self.log, "rb") as fh:
            fh.seek(self.offset)
            return fh.read().decode(errors="replace")

    def kill(self) -> None:
        assert self.proc is not None and self.proc.poll() is None, self.text()[-3000:]
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


class PaymentStream:
    """Payments of one vehicle at a steady rate in a thread; every fourth one is fraud."""

    def __init__(
        self,
        bootstrap: Target,
        data: SyntheticFeatures,
        run_id: str,
        token: str,
        per_tick: int = 20,
        ticks: int = 100,
        tick_s: float = 0.05,
    ) -> None:
        self.sent: list[str] = []
        self._args = (bootstrap, data, run_id, token, per_tick, ticks, tick_s)
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        bootstrap, data, run_id, token, per_tick, ticks, tick_s = self._args
        p = producer(bootstrap)
        for t in range(ticks):
            for i in range(per_tick):
                event_id = f"{run_id}-s{t}-{i}"
                key, value = payment(data, event_id, CARD, token, time.time(), i % 4 == 0)
                p.produce(topics.ANON_PAYMENTS, value=value, key=key)
                self.sent.append(event_id)
            p.poll(0)
            time.sleep(tick_s)
        assert p.flush(30) == 0


def committed_scores(bootstrap: Target, run_id: str) -> list[Score]:
    scores = [
        decode(Score, m.value()) for m in consume_all(bootstrap, topics.SCORES_PAYMENTS, idle=1.0)
    ]
    return [s for s in scores if s.event_id.startswith(run_id)]


def scorer_toml(tmp_path: Path, stack: Stack, models_dir: Path, pub: Path) -> Path:
    extra = f'[scorer]\nmodels_dir = "{models_dir}"\npublic_key = "{pub}"\n'
    path = write_edge_toml(tmp_path / "edge.toml", stack, unique("dec"), unique("g"), extra)
    (tmp_path / "data").mkdir()
    return path


def test_kill_9_mid_run_while_the_broker_stalls_loses_no_decision(
    tmp_path: Path,
    stack: Stack,
    edge_kafka: KafkaSettings,
    vehicle: Vehicle,
    models: tuple[Path, Path, dict[str, Any]],
) -> None:
    models_dir, pub, data = models
    config = scorer_toml(tmp_path, stack, models_dir, pub)
    vault = open_vault(edge_config_file.load(config))
    token = vault.put("vin", vehicle.vin, "driver-1")
    vault.close()
    run_id = f"k{uuid.uuid4().hex[:10]}"
    seed = random.randrange(2**32)
    kill_after = random.Random(seed).uniform(1.0, 3.5)
    print(
        f"fault schedule (seed {seed}): SIGSTOP mosquitto {kill_after:.2f}s into the stream, "
        f"a burst of 1500 frauds, kill -9 the scorer, SIGCONT"
    )
    scorer = ScorerProcess(config).start()
    mosquitto = stack.mqtt.pid()
    assert mosquitto is not None
    try:
        # 1. A steady stream (2,000 payments over ~5 s).
        stream = PaymentStream(edge_kafka, data["payments"], run_id, token)
        stream.thread.start()
        time.sleep(kill_after)
        # 2. The broker stalls (not reading, not acknowledging) while a burst of frauds is
        # scored; the scorer is killed while its decisions wait, then the broker comes back.
        burst = [f"{run_id}-b-{i}" for i in range(1500)]
        os.kill(mosquitto, signal.SIGSTOP)
        try:
            stream.thread.join(60)
            produce_all(
                edge_kafka,
                topics.ANON_PAYMENTS,
                [
                    payment(data["payments"], event_id, CARD, token, time.time(), True)
                    for event_id in burst
                ],
            )
            deadline = time.monotonic() + 5
            stalled = 0
            while time.monotonic() < deadline and stalled < len(burst):
                stalled = sum(
                    s.event_id.startswith(f"{run_id}-b-")
                    for s in committed_scores(edge_kafka, run_id)
                )
            scorer.kill()
        finally:
            os.kill(mosquitto, signal.SIGCONT)
        scorer.start()
        sent = set(stream.sent) | set(burst)
        deadline = time.monotonic() + 45
        scores = committed_scores(edge_kafka, run_id)
        while len(scores) < len(sent) and time.monotonic() < deadline:
            scores = committed_scores(edge_kafka, run_id)
        declined = {s.event_id for s in scores if s.anomalous}
        missing = vehicle.wait_for(declined)
    finally:
        scorer.stop()
    assert sorted(s.event_id for s in scores) == sorted(sent)  # each scored exactly once
    assert set(burst) <= declined
    assert not missing, (
        f"{len(missing)} of {len(declined)} declined payments' decisions never reached the vehicle"
    )
    got = vehicle.decisions()
    assert all(got[e] == "decline" for e in declined)
    # The rule that keeps them: no batch commits before the broker acknowledged its decisions.
    assert stalled == 0, f"{stalled} burst payments committed while the broker was stalled"


# librdkafka's default group session: how long a dead member holds its partitions.
DEFAULT_SESSION_S = 45.0


def test_a_scorer_killed_and_started_again_takes_its_partitions_back_at_once(
    tmp_path: Path,
    stack: Stack,
    models: tuple[Path, Path, dict[str, Any]],
) -> None:
    """Not once the dead one's group session expired (payments undecided all that time): the
    scorer is a static member of its group, and the new process is the same member."""
    models_dir, pub, _data = models
    config = scorer_toml(tmp_path, stack, models_dir, pub)
    scorer = ScorerProcess(config).start()
    try:
        scorer.kill()
        # `start` waits for "scoring ...": the consumer holds its partitions.
        scorer.start(timeout=DEFAULT_SESSION_S * 2 / 3)
    finally:
        scorer.stop()
