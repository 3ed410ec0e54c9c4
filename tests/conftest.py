"""Broker fixtures: real brokers on free ports, one set per test module, torn down after.

Per module, not per session: stages of the pipeline share topic names (anon.*, scores.*),
so one module's records must never reach another module's assertions."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

from shared import streams
from shared.infra import jars
from shared.infra.kafka import KafkaCluster, KafkaNode
from shared.infra.mosquitto import ADMIN_USER, BRIDGE_USER
from shared.infra.ports import RANGE_ENV, free_ports
from shared.infra.stack import Stack
from shared.kafka_config import ADMIN_USER as KAFKA_ADMIN_USER
from shared.kafka_config import KafkaSettings
from tests.support import free_infra_settings

# Generated inputs are judged, not timed: on a loaded machine Hypothesis's "input generation
# is slow" check fails tests whose inputs are fine.
settings.register_profile("fleetsentry", suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("fleetsentry")

# The suite's brokers and MirrorMakers live minutes: the quick JIT compiler alone spends 40 %
# less CPU on them than the optimising one warming up (the JVMs and what they run are the
# same). Subprocesses (`fleetsentry demo`, the chaos run) inherit it. Set the variable, even
# empty, to choose otherwise.
os.environ.setdefault(jars.JVM_OPTS_ENV, "-XX:TieredStopAtLevel=1")

# Parallel workers (pytest -n N) pick broker ports from their own slices, so two workers
# can never pick the same free port at the same moment. Subprocesses inherit the slice.
_WORKER = os.environ.get("PYTEST_XDIST_WORKER", "")
if _WORKER.startswith("gw") and RANGE_ENV not in os.environ:
    _n = int(_WORKER[2:]) % 4
    os.environ[RANGE_ENV] = f"{20000 + 3000 * _n}-{23000 + 3000 * _n}"


@dataclass(frozen=True)
class MqttBroker:
    host: str
    port: int
    admin: tuple[str, str]
    bridge: tuple[str, str]
    stack: Stack

    def register_vehicles(self, vins: list[str], password: str) -> None:
        self.stack.mqtt.register_vehicles({vin: password for vin in vins})


# Fixtures that start brokers: a test using one must be marked `integration`, so that
# `pytest -m "not integration"` runs without any broker.
BROKER_FIXTURES = frozenset(
    {"stack", "edge_kafka", "plain_bootstrap", "cloud_kafka", "mqtt_broker"}
)


def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """Modules handed to parallel workers longest first, by recorded time
    (tests/scheduling.py)."""
    from tests.scheduling import scheduler

    return scheduler(config, log)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    unmarked = [
        item.nodeid
        for item in items
        if BROKER_FIXTURES & set(getattr(item, "fixturenames", ()))
        and item.get_closest_marker("integration") is None
    ]
    if unmarked:
        raise pytest.UsageError(
            "these tests start brokers but are not marked integration (add "
            "`pytestmark = pytest.mark.integration`): " + ", ".join(unmarked[:10])
        )


@pytest.fixture(scope="module", autouse=True)
def _streams_declared_in_a_module_stay_in_it() -> Iterator[None]:
    """A test module that registers declared streams (`streams.use_declarations`, in a test
    or a module fixture: this fixture is set up before those) leaves the process's registry
    as it found it: later modules in the worker (topic lists, disk plans, Mosquitto roles) see
    the built-in streams only."""
    with streams.scoped():
        yield


@pytest.fixture(scope="module")
def stack(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    """Edge Kafka (1 node) and Mosquitto, topics created; the cloud starts on first use.

    One stack per test module, on free ports, torn down (no process left) at its end. The
    cloud has one node; a module that tests the three-node cluster sets ``CLOUD_NODES = 3``.
    """
    home = tmp_path_factory.mktemp("infra")
    s = Stack(free_infra_settings(home, getattr(request.module, "CLOUD_NODES", 1)), quiet=True)
    try:
        s.up(services=frozenset({"edge", "mqtt"}))
        yield s
    finally:
        s.down()


@pytest.fixture(scope="module")
def edge_kafka(stack: Stack) -> KafkaSettings:
    """How the gateway's services log in to the edge Kafka (SASL/SCRAM, `infra up`'s user)."""
    login = stack.edge.login()
    assert isinstance(login, KafkaSettings)
    return login


@pytest.fixture(scope="module")
def plain_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A one-node Kafka without TLS or logins (a development cluster: `security = "none"`),
    for cloud-side code whose tests need no three-node cluster."""
    p = free_ports(2)
    cluster = KafkaCluster(
        "plain", tmp_path_factory.mktemp("plain-kafka"), (KafkaNode(1, p[0], p[1]),), heap="384m"
    )
    try:
        cluster.start(jars.kafka_libs(quiet=True), jars.java_binary())
        cluster.wait_healthy()
        yield cluster.bootstrap
    finally:
        cluster.stop()


@pytest.fixture(scope="module")
def cloud_kafka(stack: Stack) -> KafkaSettings:
    """The cloud cluster (one node, or three where the module says so; TLS, SCRAM and ACLs),
    as its admin sees it: tests read and write anything with it. The services under
    test log in as themselves (`cloud_login`)."""
    stack.up(services=frozenset({"cloud"}))
    login = stack.cloud.login(KAFKA_ADMIN_USER)
    assert isinstance(login, KafkaSettings)
    return login


@pytest.fixture(scope="module")
def cloud_login(stack: Stack, cloud_kafka: KafkaSettings) -> Callable[[str], KafkaSettings]:
    """user -> that cloud service's own login (its ACLs apply)."""

    def login(user: str) -> KafkaSettings:
        target = stack.cloud.login(user)
        assert isinstance(target, KafkaSettings)
        return target

    return login


@pytest.fixture(scope="module")
def mqtt_broker(stack: Stack) -> MqttBroker:
    creds = json.loads(stack.mqtt.credentials_path.read_text())
    return MqttBroker(
        stack.mqtt.host,
        stack.mqtt.port,
        (ADMIN_USER, creds[ADMIN_USER]),
        (BRIDGE_USER, creds[BRIDGE_USER]),
        stack,
    )
