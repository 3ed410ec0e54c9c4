"""The edge Kafka holds personal data (raw.*, dlq.ingest): only the gateway's services get in.

The attacker is any other local user: it knows the ports (127.0.0.1:<edge_port> and the KRaft
controller's) and runs stock Kafka clients, without the gateway's credentials.
"""

from __future__ import annotations

import dataclasses
import subprocess
import time
import uuid
from pathlib import Path

import msgspec
import pytest
from confluent_kafka import Consumer, TopicPartition

from shared import topics
from shared.config import Secret
from shared.infra import jars
from shared.infra.errors import InfraError
from shared.infra.stack import Stack
from shared.infra.topics_admin import ensure_topics
from shared.kafka_config import ADMIN_USER, KafkaSettings, client_config, java_properties
from tests.support import consume_all, free_infra_settings, produce_all

pytestmark = pytest.mark.integration
VIN = "1HGCM82633A004352"


def _attacker_reads(conf: dict[str, object], topic: str, timeout: float = 10.0) -> list[bytes]:
    """Everything a client with ``conf`` reads of ``topic`` from the start, within ``timeout``."""
    c = Consumer(
        {
            "group.id": f"attacker-{uuid.uuid4()}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "log_level": 0,
            **conf,
        }
    )
    got: list[bytes] = []
    try:
        try:
            meta = c.list_topics(topic, timeout=timeout)
        except Exception:
            return got
        c.assign([TopicPartition(topic, p, 0) for p in meta.topics[topic].partitions])
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            msg = c.poll(0.2)
            if msg is not None and not msg.error():
                got.append(msg.value() or b"")
    finally:
        c.close()
    return got


@pytest.fixture(scope="module")
def secret_in_raw(stack: Stack, edge_kafka: KafkaSettings) -> bytes:
    marker = f"card-4111111111111111-{uuid.uuid4().hex}".encode()
    produce_all(edge_kafka, topics.RAW_PAYMENTS, [(VIN.encode(), marker)])
    return marker


def test_a_client_without_credentials_cannot_read_raw_events(
    stack: Stack, edge_kafka: KafkaSettings, secret_in_raw: bytes
) -> None:
    stolen = _attacker_reads({"bootstrap.servers": stack.edge.bootstrap}, topics.RAW_PAYMENTS)
    assert secret_in_raw not in stolen, "an unauthenticated local client read raw.payments"
    # The gateway's own login, beside it, still reads the record.
    mine = [m.value() for m in consume_all(edge_kafka, topics.RAW_PAYMENTS, idle=2)]
    assert secret_in_raw in mine


def test_a_guessed_password_is_refused(edge_kafka: KafkaSettings, secret_in_raw: bytes) -> None:
    guess = msgspec.structs.replace(edge_kafka, password=Secret("fleetsentry"))
    stolen = _attacker_reads(client_config(guess), topics.DLQ_INGEST, timeout=3)
    stolen += _attacker_reads(client_config(guess), topics.RAW_PAYMENTS, timeout=3)
    assert secret_in_raw not in stolen and stolen == []


def _kafka_configs(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str] | None:
    """Kafka's own kafka-configs tool (the class behind kafka-configs.sh); None when it has
    not finished within ``timeout`` (it retries a refused login for 30 s)."""
    argv = [
        jars.java_binary(),
        "-Xmx128m",
        "-XX:TieredStopAtLevel=1",
        "-cp",
        jars.classpath(jars.kafka_libs(quiet=True)),
        "kafka.admin.ConfigCommand",
        *args,
    ]
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return None


def test_the_controller_listener_refuses_a_client_without_credentials(
    stack: Stack, tmp_path: Path
) -> None:
    # Through the controller listener a client changes the broker's own settings: with
    # log.retention.ms=1 every topic's data would be deleted within minutes.
    controller = [
        "--bootstrap-controller",
        f"{stack.edge.host}:{stack.edge.nodes[0].controller_port}",
    ]
    broker = ["--entity-type", "brokers", "--entity-name", "1"]
    # Without a login the tool completed in a few seconds (before the broker asked
    # for one); 12 s without completing is a refusal.
    out = _kafka_configs(
        *controller, "--alter", *broker, "--add-config", "log.retention.ms=1", timeout=12
    )
    assert out is None or (out.returncode != 0 and "Completed" not in out.stdout), out
    # The node's own login, beside it, is let in, and sees the setting unchanged.
    admin = tmp_path / "admin.properties"
    props = java_properties(stack.edge.login(ADMIN_USER))
    admin.write_text("".join(f"{k}={v}\n" for k, v in props.items() if k != "bootstrap.servers"))
    out = _kafka_configs(
        *controller, "--command-config", str(admin), "--describe", *broker, "--all"
    )
    assert out is not None and out.returncode == 0 and "log.dirs" in out.stdout, out
    assert "DYNAMIC_BROKER_CONFIG:log.retention.ms" not in out.stdout


def test_a_home_formatted_without_logins_gets_them_on_the_next_up(tmp_path: Path) -> None:
    """A gateway's home from before the broker asked for logins keeps its data, is told to
    restart the broker, and then has the services' users."""
    stack = Stack(free_infra_settings(tmp_path), quiet=True)
    before = dataclasses.replace(stack.edge, authenticate=False)
    try:
        before.start(jars.kafka_libs(quiet=True), jars.java_binary())
        before.wait_healthy()
        ensure_topics(before.bootstrap, "edge", 1)
        produce_all(before.bootstrap, topics.RAW_TELEMETRY, [(VIN.encode(), b"kept")])
        with pytest.raises(InfraError, match="older configuration.*infra down"):
            stack.up(services=frozenset({"edge"}))
    finally:
        before.stop()
    try:
        stack.up(services=frozenset({"edge"}))
        kept = [m.value() for m in consume_all(stack.edge.login(), topics.RAW_TELEMETRY, idle=2)]
        assert kept == [b"kept"]
        assert (
            _attacker_reads(
                {"bootstrap.servers": stack.edge.bootstrap}, topics.RAW_TELEMETRY, timeout=5
            )
            == []
        )
    finally:
        stack.down()
