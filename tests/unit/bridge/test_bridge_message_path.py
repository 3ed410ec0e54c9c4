"""The bridge's message path without brokers: what reaches the producer, under which reason.

The attacks themselves run against real brokers (tests/integration/bridge/test_bridge_hostile.py);
these pin the corners no broker lets through: a topic that is not UTF-8, a dead letter that
cannot be written, the bounded label set of the per-vehicle metric.
"""

from __future__ import annotations

import time
from typing import Any, cast

import msgspec
import paho.mqtt.client as mqtt
import pytest

import edge.bridge.bridge as bridge_module
from edge import metrics
from edge.bridge.bridge import Bridge
from edge.config import BridgeSettings, EdgeConfig
from tests.bridge_payloads import encode, telemetry

VIN = "1HGCM82633A004352"


class Producer:
    """Stands in for confluent-kafka's: remembers what the bridge produced."""

    def __init__(self) -> None:
        self.records: list[tuple[str, bytes | None, bytes]] = []

    def produce(self, topic: str, value: bytes, key: bytes | None, on_delivery: Any) -> None:
        self.records.append((topic, key, value))

    def poll(self, _timeout: float) -> int:
        return 0

    def reasons(self) -> list[str]:
        return [msgspec.json.decode(v)["reason"] for t, _, v in self.records if t == "dlq.ingest"]


def bridge(**settings: Any) -> tuple[Bridge, Producer]:
    b = Bridge(EdgeConfig(bridge=BridgeSettings(**settings)))
    producer = Producer()
    b._producer = cast(Any, producer)
    return b, producer


def message(topic: bytes, payload: bytes, mid: int = 1) -> mqtt.MQTTMessage:
    msg = mqtt.MQTTMessage(mid, topic)
    msg.payload = payload
    msg.qos = 1
    return msg


def deliver(b: Bridge, msg: mqtt.MQTTMessage) -> None:
    b._on_message(cast(mqtt.Client, None), None, msg)


def test_a_topic_that_is_not_utf8_is_an_unknown_topic() -> None:
    b, producer = bridge()
    deliver(b, message(b"fleet/\xff\xfe/telemetry", b"{}"))
    assert producer.reasons() == ["unknown_topic"]


def test_any_exception_is_an_internal_error_naming_its_type_not_its_text(
        monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*_args: Any) -> Any:
        raise KeyError("drv-secret-0001")

    monkeypatch.setattr(bridge_module, "check", broken)
    b, producer = bridge()
    deliver(b, message(f"fleet/{VIN}/telemetry".encode(),
                       encode(telemetry(VIN, "e", time.time()))))
    (topic, _key, value), = producer.records
    letter = msgspec.json.decode(value)
    assert (topic, letter["reason"]) == ("dlq.ingest", "internal_error")
    assert letter["detail"].startswith("KeyError at test_bridge_message_path.py:")
    assert "drv-secret" not in letter["detail"]


def test_a_message_that_breaks_dead_lettering_still_leaves_its_reason(
        monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*_args: Any) -> Any:
        raise ValueError("bug")

    b, producer = bridge()
    monkeypatch.setattr(bridge_module, "check", broken)
    real = b._dead_letter

    def picky(msg: mqtt.MQTTMessage, reason: str, detail: str, now: float) -> None:
        if msg.payload:
            raise UnicodeError("cannot write this one")
        real(msg, reason, detail, now)

    monkeypatch.setattr(b, "_dead_letter", picky)
    deliver(b, message(f"fleet/{VIN}/telemetry".encode(), b'{"x":1}', mid=77))
    (_topic, _key, value), = producer.records
    letter = msgspec.json.decode(value)
    assert letter["reason"] == "internal_error"
    assert "payload not kept" in letter["detail"] and "UnicodeError" in letter["detail"]


def test_the_per_vehicle_metric_names_a_bounded_number_of_vehicles(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(metrics, "RATE_LIMITED_VINS", 2)
    b, producer = bridge(vehicle_rate_per_s=1.0, vehicle_burst=1)
    vins = [f"1FAST{n:012d}" for n in range(5)]
    before = {v: metrics.RATE_LIMITED.labels("bridge", v)._value.get() for v in vins}
    other = metrics.RATE_LIMITED.labels("bridge", "other")._value.get()
    now = time.time()
    for v in vins:
        for i in range(3):  # one passes, two are over the limit
            deliver(b, message(f"fleet/{v}/telemetry".encode(),
                               encode(telemetry(v, f"{v}-{i}", now))))
    assert producer.reasons().count("rate_limited") == 10
    assert len(b._limited) == 2
    named = [v for v in vins if metrics.RATE_LIMITED.labels("bridge", v)._value.get() > before[v]]
    assert named == vins[:2]
    assert metrics.RATE_LIMITED.labels("bridge", "other")._value.get() - other == 6
