"""Live fleet against the real Mosquitto: every event arrives, across a broker restart."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import firmware_sim as fs
import msgspec
import paho.mqtt.client as mqtt
import pytest
from firmware_sim.live import LiveRunner
from firmware_sim.session import ConnectSettings
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from shared.contracts import Decision, VehicleStatus, decode
from tests.conftest import MqttBroker

PASSWORD = "sim-test-password"
VEHICLES = 200
# 200 vehicles at 1 Hz for a minute, with a broker restart in the middle.
DURATION_S = 60.0


class Counter:
    """An admin subscriber with a persistent session: it misses nothing across a restart."""

    def __init__(self, broker: MqttBroker, client_id: str, topics: list[str]) -> None:
        self.ids: set[str] = set()
        self.messages = 0
        self.payloads: dict[str, bytes] = {}
        self._lock = threading.Lock()
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
        c.username_pw_set(*broker.admin)
        c.on_connect = lambda cl, *_: cl.subscribe([(t, 1) for t in topics])
        c.on_message = self._on_message
        # paho annotates whole seconds, but its reconnect delays are any float of seconds.
        c.reconnect_delay_set(0.2, 2.0)  # type: ignore[arg-type]
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 3600
        c.connect(broker.host, broker.port, clean_start=False, properties=props)
        c.loop_start()
        self.client = c

    def _on_message(self, _c: mqtt.Client, _ud: object, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.messages += 1
            if msg.topic.endswith("/status"):
                self.payloads[msg.topic] = bytes(msg.payload)
            else:
                self.ids.add(msgspec.json.decode(msg.payload)["event_id"])

    def wait_for(self, ids: set[str], timeout: float) -> set[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                missing = ids - self.ids
            if not missing:
                return missing
            time.sleep(0.2)
        return missing

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.mark.integration
@pytest.mark.timeout(240)
def test_every_event_arrives_across_a_broker_restart(
    mqtt_broker: MqttBroker, tmp_path: Path
) -> None:
    fleet = fs.Fleet(
        fs.SimSettings(
            vehicles=VEHICLES, duration_s=DURATION_S, seed=21, start_ts=None, payment_rate=3.0
        )
    )
    mqtt_broker.register_vehicles([v.vin for v in fleet.vehicles], PASSWORD)
    counter = Counter(mqtt_broker, "sim-test-counter", ["fleet/+/telemetry", "fleet/+/payments"])
    acked: set[str] = set()
    runner = LiveRunner(
        fleet,
        ConnectSettings(host=mqtt_broker.host, port=mqtt_broker.port, password=PASSWORD),
        tmp_path / "buffer",
        drain_timeout_s=90.0,
        on_ack=acked.add,
    )
    target = fleet.vehicles[0]
    decline = Decision(
        event_id="pay-under-test",
        decision="decline",
        reason="test",
        score=9.0,
        threshold=1.0,
        model_version="t",
        ts=time.time(),
    )
    chaos_log: list[str] = []

    def chaos() -> None:
        deadline = time.monotonic() + 60
        while runner.progress.acked < VEHICLES * 10 and time.monotonic() < deadline:
            time.sleep(0.2)
        mqtt = mqtt_broker.stack.mqtt
        mqtt.stop()
        chaos_log.append(f"stopped at {runner.progress.acked} acked")
        time.sleep(3.0)  # vehicles keep generating: they must buffer
        chaos_log.append(str(runner.progress.buffered))
        mqtt.start()
        mqtt.wait_healthy()
        # The vehicle may not be back yet: its persistent session queues the decision.
        counter.client.publish(f"fleet/{target.vin}/commands", msgspec.json.encode(decline), qos=1)

    thread = threading.Thread(target=chaos, daemon=True)
    thread.start()
    try:
        result = runner.run()
        thread.join(30)
        summary = result.summary()
        assert len(chaos_log) == 2, chaos_log
        assert int(chaos_log[1]) > VEHICLES, "vehicles should have buffered while it was down"
        generated = fleet.stats.telemetry + fleet.stats.payments
        assert summary["generated"] == generated
        assert result.drained and summary["buffered_left"] == 0, summary
        assert summary["dropped"] == 0 and summary["rejected"] == 0, summary
        assert summary["acked"] == generated == len(acked)
        # Every vehicle connected at least twice: before and after the restart.
        assert summary["connects"] >= 2 * VEHICLES, summary
        missing = counter.wait_for(acked, timeout=30)
        assert not missing, f"{len(missing)} of {len(acked)} acked events never arrived"
        assert counter.ids == acked
        assert any(
            d.get("event_id") == "pay-under-test" and d.get("decision") == "decline"
            for d in result.declines
        ), result.declines
    finally:
        counter.close()

    # Clean shutdown: every vehicle left a retained "offline" status.
    status = Counter(mqtt_broker, "sim-test-status", ["fleet/+/status"])
    try:
        deadline = time.monotonic() + 15
        while len(status.payloads) < VEHICLES and time.monotonic() < deadline:
            time.sleep(0.2)
        vins = {v.vin for v in fleet.vehicles}
        states = {
            decode(VehicleStatus, p).vin: decode(VehicleStatus, p).state
            for p in status.payloads.values()
        }
        assert {vin: states.get(vin) for vin in vins} == {vin: "offline" for vin in vins}
    finally:
        status.close()


@pytest.mark.integration
@pytest.mark.timeout(60)
def test_a_vehicle_cannot_publish_as_another(mqtt_broker: MqttBroker) -> None:
    fleet = fs.Fleet(fs.SimSettings(vehicles=2, duration_s=1, seed=77))
    a, b = (v.vin for v in fleet.vehicles)
    mqtt_broker.register_vehicles([a, b], PASSWORD)
    time.sleep(0.5)
    watcher = Counter(mqtt_broker, "sim-test-acl-watch", [f"fleet/{a}/#", f"fleet/{b}/#"])
    time.sleep(0.5)
    acks: dict[int, ReasonCode] = {}
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=a, protocol=mqtt.MQTTv5)
    c.username_pw_set(a, PASSWORD)
    c.on_publish = lambda _c, _u, mid, reason, _p: acks.__setitem__(mid, reason)
    c.connect(mqtt_broker.host, mqtt_broker.port)
    c.loop_start()
    try:
        forged = c.publish(f"fleet/{b}/telemetry", b'{"event_id":"forged"}', qos=1)
        own = c.publish(f"fleet/{a}/telemetry", b'{"event_id":"own"}', qos=1)
        assert watcher.wait_for({"own"}, timeout=10) == set(), "control message never arrived"
        deadline = time.monotonic() + 5
        while forged.mid not in acks and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(1.0)
        assert "forged" not in watcher.ids
        # MQTT 5 tells the publisher: the PUBACK carries "not authorized".
        reason = acks.get(forged.mid)
        assert reason is not None and reason.is_failure, reason
        assert not acks[own.mid].is_failure
    finally:
        c.disconnect()
        c.loop_stop()
        watcher.close()
