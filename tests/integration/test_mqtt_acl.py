"""What a vehicle may do on the gateway's Mosquitto, tried as an attacker would.

Against the project's own generated broker config and a real bridge process: a vehicle may
subscribe to its own ``commands`` only (never ``$share/...``, never a wildcard over others) and
may connect only with its own VIN as client id, so it can neither join the bridge's shared
subscription nor take over the session of the bridge or of another vehicle.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import msgspec
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from shared.infra.mosquitto import CONTROL_MAX_NEW, Mosquitto
from shared.infra.stack import Stack
from shared.kafka_config import KafkaSettings, Target
from tests.bridge_payloads import encode, telemetry, vin
from tests.bridge_support import (
    BridgeGateway,
    mqtt_client,
    publish_all,
    read_topic,
    unique,
)

pytestmark = pytest.mark.integration

PASSWORD = "vehicle-password"
RNG = random.Random(13)
ATTACKER, VICTIM, OTHER = (vin(RNG) for _ in range(3))


@pytest.fixture(scope="module")
def vehicles(stack: Stack) -> Stack:
    stack.mqtt.register_vehicles({v: PASSWORD for v in (ATTACKER, VICTIM, OTHER)})
    return stack


class Vehicle:
    """A vehicle's MQTT 5 connection that records its CONNACK, SUBACKs and messages."""

    def __init__(
        self,
        stack: Stack,
        user: str,
        client_id: str | None = None,
        clean_start: bool = True,
        session_expiry: int = 0,
    ) -> None:
        self.connack: ReasonCode | None = None
        self.subacks: dict[int, list[ReasonCode]] = {}
        self.messages: list[bytes] = []
        self.disconnected = threading.Event()
        self.acked = threading.Event()
        c = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id or user, protocol=mqtt.MQTTv5
        )
        c.username_pw_set(user, PASSWORD)
        c.on_connect = self._on_connect
        c.on_subscribe = lambda _c, _u, mid, codes, _p: self.subacks.__setitem__(mid, codes)
        c.on_message = lambda _c, _u, msg: self.messages.append(bytes(msg.payload))
        c.on_disconnect = lambda *_a: self.disconnected.set()
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = session_expiry
        c.connect(stack.mqtt.host, stack.mqtt.port, 30, clean_start=clean_start, properties=props)
        c.loop_start()
        self.client = c
        assert self.acked.wait(10), "no CONNACK within 10 s"

    def _on_connect(
        self, _c: mqtt.Client, _u: object, _f: object, reason: ReasonCode, _p: object
    ) -> None:
        self.connack = reason
        self.acked.set()

    @property
    def accepted(self) -> bool:
        return self.connack is not None and not self.connack.is_failure

    def subscribe(self, topic: str) -> ReasonCode:
        """SUBSCRIBE at QoS 1; the broker's answer for this one topic."""
        _rc, mid = self.client.subscribe(topic, qos=1)
        deadline = time.monotonic() + 10
        while mid not in self.subacks and time.monotonic() < deadline:
            time.sleep(0.02)
        assert mid in self.subacks, f"no SUBACK for {topic}"
        return self.subacks[mid][0]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def events(v: str, n: int, tag: str) -> dict[str, bytes]:
    now = time.time()
    return {f"{tag}-{i}": encode(telemetry(v, f"{tag}-{i}", now)) for i in range(n)}


def arrived(bootstrap: Target, ids: set[str]) -> set[str]:
    """Which of ``ids`` reached raw.telemetry (waits until all are there, at most 30 s)."""

    def seen(records: list) -> set[str]:
        return {msgspec.json.decode(r.value()).get("event_id") for r in records} & ids

    records = read_topic(bootstrap, "raw.telemetry", done=lambda rs: seen(rs) == ids, timeout=30)
    return seen(records)


@pytest.fixture
def gateway(vehicles: Stack, tmp_path: Path) -> Iterator[BridgeGateway]:
    g = BridgeGateway(vehicles, tmp_path, prefix="acl")
    try:
        yield g
    finally:
        g.close()


def publish_as(stack: Stack, v: str, messages: dict[str, bytes]) -> None:
    car = mqtt_client(stack, v, user=v, password=PASSWORD)
    try:
        publish_all(car, [(f"fleet/{v}/telemetry", body) for body in messages.values()])
    finally:
        car.disconnect()
        car.loop_stop()


def test_a_vehicle_cannot_join_the_bridges_shared_subscription(
    gateway: BridgeGateway, edge_kafka: KafkaSettings
) -> None:
    gateway.start()
    attacker = Vehicle(gateway.stack, ATTACKER)
    try:
        granted = attacker.subscribe(f"$share/{gateway.group}/fleet/+/telemetry")
        sent = events(VICTIM, 20, unique("share"))
        publish_as(gateway.stack, VICTIM, sent)
        got = arrived(edge_kafka, set(sent))
    finally:
        attacker.close()
    assert got == set(sent), f"{len(sent) - len(got)} of {len(sent)} events lost"
    assert granted.is_failure, f"the broker granted the bridge's share group: {granted}"


def test_a_vehicle_cannot_take_the_bridges_client_id(
    gateway: BridgeGateway, edge_kafka: KafkaSettings
) -> None:
    gateway.start()
    gateway.bridge.stop()  # its session stays; the broker queues for it
    sent = events(VICTIM, 20, unique("takeover"))
    publish_as(gateway.stack, VICTIM, sent)
    attacker = Vehicle(gateway.stack, ATTACKER, client_id=f"{gateway.edge_id}-bridge-0")
    attacker.close()
    gateway.start()
    got = arrived(edge_kafka, set(sent))
    assert got == set(sent), f"{len(sent) - len(got)} of {len(sent)} queued events lost"
    assert not attacker.accepted, "a vehicle logged in with the bridge's client id"


def test_a_vehicle_cannot_take_another_vehicles_client_id(vehicles: Stack) -> None:
    victim = Vehicle(vehicles, VICTIM, clean_start=True, session_expiry=300)
    try:
        assert not victim.subscribe(f"fleet/{VICTIM}/commands").is_failure
        first = Vehicle(vehicles, ATTACKER, client_id=VICTIM)
        first.close()
        assert not first.accepted, "a vehicle logged in with another vehicle's VIN"
        assert not victim.disconnected.is_set(), "the victim was kicked off"
    finally:
        victim.close()
    # The victim is away; its queued payment decision must survive a second attempt.
    service = mqtt_client(vehicles, unique("decisions"))
    publish_all(service, [(f"fleet/{VICTIM}/commands", b'{"decision":"approve"}')])
    service.disconnect()
    service.loop_stop()
    again = Vehicle(vehicles, ATTACKER, client_id=VICTIM)
    again.close()
    back = Vehicle(vehicles, VICTIM, clean_start=False, session_expiry=300)
    try:
        deadline = time.monotonic() + 10
        while not back.messages and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        back.close()
        Vehicle(vehicles, VICTIM).close()  # end the session (clean start, no expiry)
    assert not again.accepted
    assert back.messages == [b'{"decision":"approve"}'], "the queued decision was lost"


def test_a_vehicle_subscribes_to_its_own_commands_only(vehicles: Stack) -> None:
    car = Vehicle(vehicles, ATTACKER)
    try:
        answers = {
            t: car.subscribe(t)
            for t in (
                f"fleet/{ATTACKER}/commands",
                "fleet/+/telemetry",
                "fleet/#",
                "#",
                f"fleet/{OTHER}/commands",
                "fleet/+/commands",
                "$share/x/fleet/+/payments",
                f"$share/x/fleet/{ATTACKER}/commands",
                "$SYS/#",
                "$CONTROL/dynamic-security/#",
            )
        }
    finally:
        car.close()
    granted = sorted(t for t, rc in answers.items() if not rc.is_failure)
    assert granted == [f"fleet/{ATTACKER}/commands"]


@pytest.mark.parametrize("user", ["fleetsentry-bridge", "fleetsentry-admin"])
def test_a_vehicle_cannot_log_in_as_a_service(vehicles: Stack, user: str) -> None:
    """A vehicle's password is no service's password, whatever client id it picks."""
    for client_id in (user, ATTACKER, unique("svc")):
        c = Vehicle(vehicles, user, client_id=client_id)
        c.close()
        assert not c.accepted


def test_many_vehicles_registered_at_once_keep_the_same_rules(vehicles: Stack) -> None:
    """Beyond CONTROL_MAX_NEW new vehicles the broker restarts on a regenerated logins file
    (found from its home alone, as `sim register --mosquitto-home` does)."""
    rng = random.Random(17)
    many = {vin(rng): PASSWORD for _ in range(CONTROL_MAX_NEW + 1)}
    pid = vehicles.mqtt.pid()
    Mosquitto(home=vehicles.mqtt.home, port=0).register_vehicles(many)
    assert vehicles.mqtt.pid() not in (None, pid), "the broker was not restarted"
    first = next(iter(many))
    newcomer = Vehicle(vehicles, first)
    try:
        assert newcomer.accepted
        assert newcomer.subscribe(f"$share/x/fleet/{first}/commands").is_failure
    finally:
        newcomer.close()
    for user, client_id in ((VICTIM, VICTIM), (first, VICTIM)):
        c = Vehicle(vehicles, user, client_id=client_id)
        c.close()
        assert c.accepted == (user == client_id)
