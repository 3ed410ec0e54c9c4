"""The cloud Kafka as an attacker meets it: TLS and SASL/SCRAM on every listener, and ACLs.

Each gateway has its own login and may write only its own ``<edge-id>.*`` topics and read
``models``; a client without a login gets nothing, and nothing crosses in clear text.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import msgspec
import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from shared import topics
from shared.config import Secret
from shared.infra.stack import Stack
from shared.infra.tls import make_local_ca
from shared.kafka_config import (
    ADMIN_USER,
    DASHBOARD_USER,
    LABELS_USER,
    PUBLISHER_USER,
    KafkaSettings,
    Target,
    client_config,
)
from tests.support import consume_all

pytestmark = pytest.mark.integration
# The three-node cluster: the nodes talk to each other over the same listeners.
CLOUD_NODES = 3

QUICK = {"socket.timeout.ms": 4000, "log_level": 0}


def _write(target: Target, topic: str) -> KafkaError | None:
    """Produce one record; the delivery error, or None when the cluster took it."""
    errors: list[KafkaError | None] = []
    p = Producer(client_config(target, {**QUICK, "message.timeout.ms": 10_000}))
    p.produce(
        topic,
        key=b"payments",
        value=f"poison-{uuid.uuid4()}".encode(),
        on_delivery=lambda e, _m: errors.append(e),
    )
    p.flush(15)
    return errors[0] if errors else KafkaError(KafkaError._MSG_TIMED_OUT)


def _lists(target: Target) -> bool:
    """Whether ``target`` gets the cluster's metadata at all."""
    try:
        AdminClient(client_config(target, QUICK)).list_topics(timeout=6)
    except KafkaException:
        return False
    return True


def _create(target: Target, topic: str) -> None:
    admin = AdminClient(client_config(target, QUICK))
    admin.create_topics([NewTopic(topic, 1, 3)], request_timeout=15)[topic].result(20)


def _read_one(target: Target, topic: str, group: str) -> bytes | int:
    """The first record of partition 0, or the error code that came instead."""
    c = Consumer(client_config(target, {**QUICK, "group.id": group, "enable.auto.commit": False}))
    try:
        c.assign([TopicPartition(topic, 0, 0)])
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            msg = c.poll(0.5)
            if msg is not None:
                err = msg.error()
                return err.code() if err else bytes(msg.value() or b"")
        return KafkaError._TIMED_OUT
    finally:
        c.close()


@pytest.fixture(scope="module")
def cloud(stack: Stack, cloud_kafka: KafkaSettings) -> Stack:
    return stack


def test_a_client_without_a_login_gets_nothing(cloud: Stack) -> None:
    anonymous = cloud.cloud.bootstrap
    assert not _lists(anonymous)
    tls_only = KafkaSettings(
        bootstrap=anonymous, username="", ca_file=cloud.cloud.tls_files.ca_file
    )
    assert not _lists(tls_only)
    assert _write(tls_only, topics.LABELS) is not None
    guess = msgspec.structs.replace(tls_only, username=LABELS_USER, password=Secret("guess"))
    assert not _lists(guess)


def test_every_listener_is_tls_and_checks_the_clusters_certificate(
    cloud: Stack, tmp_path: Path
) -> None:
    login = cloud.cloud.login(DASHBOARD_USER)
    assert isinstance(login, KafkaSettings) and login.ca_file is not None
    assert _lists(login)
    # The same login in clear text is not answered; nor is TLS to a server another CA signed.
    assert not _lists(msgspec.structs.replace(login, ca_file=None))
    other = make_local_ca(tmp_path / "other", name="someone else")
    assert not _lists(msgspec.structs.replace(login, ca_file=other.ca_file))
    # Between the nodes and to the controllers, too: no listener left in clear text.
    for line in cloud.cloud.config_path(cloud.cloud.nodes[0]).read_text().splitlines():
        if line.startswith("listener.security.protocol.map="):
            assert set(p.split(":")[1] for p in line.split("=", 1)[1].split(",")) == {"SASL_SSL"}


def test_a_gateway_writes_its_own_topics_and_reads_models_only(cloud: Stack) -> None:
    mine = cloud.add_gateway("edge-a")
    cloud.add_gateway("edge-b")
    assert isinstance(mine, KafkaSettings) and mine.username == "gateway-edge-a"
    _create(mine, f"edge-a.{topics.ANON_PAYMENTS}")
    _create(cloud.cloud.login(ADMIN_USER), f"edge-b.{topics.ANON_PAYMENTS}")
    assert _write(mine, f"edge-a.{topics.ANON_PAYMENTS}") is None
    for theirs in (f"edge-b.{topics.ANON_PAYMENTS}", topics.LABELS, topics.MODELS):
        err = _write(mine, theirs)
        assert err is not None and err.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED, (
            theirs,
            err,
        )
    with pytest.raises(KafkaException, match="AUTHORIZATION"):
        _create(mine, f"edge-b.{topics.ANON_TELEMETRY}")
    # It reads models (the cloud -> gateway flow), and no other gateway's data.
    assert _write(cloud.cloud.login(PUBLISHER_USER), topics.MODELS) is None
    assert consume_all(mine, topics.MODELS, idle=1.0, timeout=10)
    theirs = f"edge-b.{topics.ANON_PAYMENTS}"
    assert _write(cloud.cloud.login(ADMIN_USER), theirs) is None
    # In the group its MirrorMaker may use (no partition leader is even disclosed), and in
    # any other (refused before the topic is).
    assert not isinstance(_read_one(mine, theirs, "edge-a-mm2"), bytes)
    assert _read_one(mine, theirs, "fleetsentry-x") == KafkaError.GROUP_AUTHORIZATION_FAILED
    assert isinstance(_read_one(cloud.cloud.login(ADMIN_USER), theirs, "fleetsentry-x"), bytes)


def test_the_cloud_services_write_only_what_they_own(cloud: Stack) -> None:
    reader = cloud.cloud.login(DASHBOARD_USER)
    for topic in (topics.MODELS, topics.LABELS):
        err = _write(reader, topic)
        assert err is not None and err.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED
    labels = cloud.cloud.login(LABELS_USER)
    assert _write(labels, topics.LABELS) is None
    err = _write(labels, topics.MODELS)
    assert err is not None and err.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED
