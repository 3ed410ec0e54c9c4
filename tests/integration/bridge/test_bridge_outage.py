"""An edge-Kafka outage against real Mosquitto and Kafka: nothing acknowledged is lost.

Mosquitto acknowledges a vehicle's message on receipt. While the edge Kafka is down, the bridge
cannot hand messages on; without a buffer of its own it stops reading, Mosquitto queues what
its limits allow for the bridge's session and silently drops the rest. The bridge spools to a
local log instead, keeps acknowledging, and drains the log in order when Kafka is back.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest

from shared.infra.stack import Stack
from shared.kafka_config import KafkaSettings
from tests.bridge_payloads import encode, telemetry, vin
from tests.bridge_support import (
    BridgeGateway,
    BridgeProcess,
    mqtt_client,
    publish_all,
    read_topic,
)
from tests.support import kill_edge_kafka, start_edge_kafka

pytestmark = pytest.mark.integration

# More than Mosquitto queues for one session (max_queued_messages 100,000) plus the bridge's
# in-flight window: before the spool, the excess was acknowledged to vehicles and dropped.
VEHICLES = 12
PER_VEHICLE = 9_500


@pytest.fixture
def gateway(
    request: pytest.FixtureRequest, stack: Stack, tmp_path: Path
) -> Iterator[BridgeGateway]:
    # No per-vehicle rate limit: each test vehicle sends far more than a real one would.
    extra = "vehicle_rate_per_s = 0\n" + getattr(request, "param", "")
    gw = BridgeGateway(stack, tmp_path, extra=extra, metrics=True)
    try:
        yield gw
    finally:
        if not stack.edge.running_pids():
            start_edge_kafka(stack)
        gw.close()


def publish(stack: Stack, vins: list[str], per_vehicle: int, prefix: str = "") -> int:
    """Each vehicle publishes ``per_vehicle`` telemetry events (QoS 1, in its own thread);
    returns how many the broker acknowledged."""
    now = time.time()
    acked: list[int] = []

    def drive(v: str) -> None:
        car = mqtt_client(stack, v, user=v, password="pw-" + v)
        try:
            msgs = [
                (f"fleet/{v}/telemetry", encode(telemetry(v, f"{v}-{prefix}{i}", now)))
                for i in range(per_vehicle)
            ]
            acked.append(publish_all(car, msgs, timeout=300))
        finally:
            car.disconnect()
            car.loop_stop()

    threads = [threading.Thread(target=drive, args=(v,)) for v in vins]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(acked)


def metric(text: str, name: str) -> float:
    """Sum of every sample of ``name`` in a Prometheus exposition (0 when absent)."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            total += float(line.rsplit(" ", 1)[1])
    return total


def wait_metric(bridge: BridgeProcess, name: str, want: float, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while metric(bridge.scrape(), name) < want:
        assert time.monotonic() < deadline, f"{name} stayed below {want}"
        time.sleep(0.5)


def raw_ids(edge_kafka: KafkaSettings, vins: set[str], want: int) -> Counter[str]:
    counts: Counter[str] = Counter()

    def done(records: list) -> bool:
        for rec in records[done.seen :]:  # type: ignore[attr-defined]
            doc = msgspec.json.decode(rec.value())
            if doc.get("vin") in vins:
                counts[doc["event_id"]] += 1
        done.seen = len(records)  # type: ignore[attr-defined]
        return len(counts) >= want

    done.seen = 0  # type: ignore[attr-defined]
    read_topic(edge_kafka, "raw.telemetry", done=done, timeout=240)
    return counts


def test_an_edge_kafka_outage_loses_no_acknowledged_message(
    stack: Stack, edge_kafka: KafkaSettings, gateway: BridgeGateway
) -> None:
    rng = random.Random(15)
    vins = [vin(rng) for _ in range(VEHICLES)]
    stack.mqtt.register_vehicles({v: "pw-" + v for v in vins})
    bridge = gateway.start()

    kill_edge_kafka(stack)
    # Every message is acknowledged by the broker while Kafka is down.
    assert publish(stack, vins, PER_VEHICLE) == VEHICLES * PER_VEHICLE

    start_edge_kafka(stack)
    counts = raw_ids(edge_kafka, set(vins), VEHICLES * PER_VEHICLE)
    missing = VEHICLES * PER_VEHICLE - len(counts)
    assert missing == 0, f"{missing} of {VEHICLES * PER_VEHICLE} acknowledged messages lost"
    # Redeliveries inside the outage window are the enricher's to drop; the spool adds none
    # when nothing crashed.
    assert max(counts.values()) == 1
    assert bridge.proc is not None and bridge.proc.poll() is None
    text = bridge.scrape()
    assert metric(text, "fleetsentry_spooled_records_total") > 100_000
    assert metric(text, "fleetsentry_spool_dropped_total") == 0
    wait_metric(
        bridge,
        "fleetsentry_spool_drained_records_total",
        metric(text, "fleetsentry_spooled_records_total"),
    )
    # The drain's last delivery reports come before the spool ends: the next turn of the
    # bridge's loop ends it, once the producer holds nothing either.
    deadline = time.monotonic() + 30
    while metric(bridge.scrape(), "fleetsentry_spooling") != 0:
        assert time.monotonic() < deadline, "the spool was drained but spooling never ended"
        time.sleep(0.2)


@pytest.mark.parametrize("gateway", ["spool_after_s = 1\n"], indirect=True)
def test_a_bridge_killed_while_spooling_and_while_draining_loses_nothing(
    stack: Stack, edge_kafka: KafkaSettings, gateway: BridgeGateway
) -> None:
    rng = random.Random(16)
    vins = [vin(rng) for _ in range(4)]
    stack.mqtt.register_vehicles({v: "pw-" + v for v in vins})
    bridge = gateway.start()
    kill_edge_kafka(stack)
    assert publish(stack, vins, 2_000, "a") == 8_000
    wait_metric(bridge, "fleetsentry_spooled_records_total", 8_000)
    bridge.kill()  # kill -9 with everything in the spool, none of it in Kafka
    bridge.start().wait_connected()
    assert publish(stack, vins, 2_000, "b") == 8_000  # after the spool's older records
    start_edge_kafka(stack)
    wait_metric(bridge, "fleetsentry_spool_drained_records_total", 100)
    bridge.kill()  # kill -9 in the middle of draining
    bridge.start().wait_connected()
    counts = raw_ids(edge_kafka, set(vins), 16_000)
    assert len(counts) == 16_000, f"{16_000 - len(counts)} acknowledged messages lost"
    # Kafka may have confirmed records the cursor did not yet hold: those come again (at
    # most one drain window), for the enricher's dedup window to drop.
    assert sum(counts.values()) - len(counts) <= 20_000
    # Each vehicle's events stay in the order it sent them.
    order: dict[str, list[str]] = {}
    for rec in read_topic(edge_kafka, "raw.telemetry", idle=2.0):
        doc = msgspec.json.decode(rec.value())
        if doc.get("vin") in vins and doc["event_id"] not in order.setdefault(doc["vin"], []):
            order[doc["vin"]].append(doc["event_id"])
    for v in vins:
        sent = [f"{v}-a{i}" for i in range(2_000)] + [f"{v}-b{i}" for i in range(2_000)]
        assert order[v] == sent


@pytest.mark.parametrize(
    "gateway", ["spool_max_bytes = 400000\nspool_after_s = 1\n"], indirect=True
)
def test_a_full_spool_drops_only_what_it_counts(
    stack: Stack, edge_kafka: KafkaSettings, gateway: BridgeGateway
) -> None:
    rng = random.Random(17)
    vins = [vin(rng) for _ in range(2)]
    stack.mqtt.register_vehicles({v: "pw-" + v for v in vins})
    bridge = gateway.start()
    kill_edge_kafka(stack)
    assert publish(stack, vins, 1_500) == 3_000
    wait_metric(bridge, "fleetsentry_spool_dropped_total", 1)
    deadline = time.monotonic() + 60
    while True:
        text = bridge.scrape()
        spooled = metric(text, "fleetsentry_spooled_records_total")
        dropped = metric(text, "fleetsentry_spool_dropped_total")
        if spooled + dropped >= 3_000 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert spooled + dropped == 3_000
    assert 0 < spooled < 3_000
    start_edge_kafka(stack)
    counts = raw_ids(edge_kafka, set(vins), int(spooled))
    time.sleep(3)  # nothing beyond what was spooled arrives
    counts = raw_ids(edge_kafka, set(vins), int(spooled))
    assert len(counts) == spooled and max(counts.values()) == 1


def test_what_vehicles_publish_while_the_bridge_reconnects_after_a_broker_restart_is_kept(
    stack: Stack, edge_kafka: KafkaSettings, gateway: BridgeGateway
) -> None:
    """Mosquitto restores a persistent session's plain subscriptions after a restart, not its
    shared ones: until the bridge is back, a shared subscription receives nothing, and what
    vehicles publish meanwhile is acknowledged to them and dropped."""
    rng = random.Random(18)
    v = vin(rng)
    stack.mqtt.register_vehicles({v: "pw-" + v})
    gateway.start()
    stack.mqtt.stop()  # a clean stop: the broker saves every session first
    stack.mqtt.start()
    stack.mqtt.wait_healthy()
    car = mqtt_client(stack, v, user=v, password="pw-" + v)
    sent = 0
    try:
        now = time.time()
        # Published right after the restart, over 3 s: the bridge reconnects in that time.
        for burst in range(30):
            msgs = [
                (f"fleet/{v}/telemetry", encode(telemetry(v, f"{v}-r{burst}-{i}", now)))
                for i in range(10)
            ]
            sent += publish_all(car, msgs)
            time.sleep(0.1)
    finally:
        car.disconnect()
        car.loop_stop()
    counts = raw_ids(edge_kafka, {v}, sent)
    assert len(counts) == sent, f"{sent - len(counts)} of {sent} acknowledged messages lost"
