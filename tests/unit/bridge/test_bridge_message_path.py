"""The bridge's message path without brokers: which messages become dead letters, and why.

The attacks themselves run against real brokers (tests/integration/bridge/test_bridge_hostile.py);
these pin the corners no broker lets through: a topic that is not UTF-8, a dead letter that
cannot be written, the bounded label set of the per-vehicle metric.
"""

from __future__ import annotations

import os
import time
from typing import Any, cast

import paho.mqtt.client as mqtt
import pytest

import edge.bridge.bridge as bridge_module
from edge import metrics
from edge.bridge.bridge import Bridge
from edge.config import BridgeSettings, EdgeConfig
from edge.dlq import DeadLetters
from shared.tokens import Tokenizer
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


class Letters:
    """What the message path hands to ``Bridge._dead_letter`` (whatever a letter then holds)."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, str, str, bytes]] = []
        self.counts: list[int] = []

    def __call__(
        self,
        msg: mqtt.MQTTMessage,
        reason: str,
        detail: str,
        now: float,
        acks: list[tuple[int, int, int]] | None = None,
    ) -> None:
        self.calls.append((msg.mid, reason, detail, bytes(msg.payload)))
        self.counts.append(len(acks) if acks else 1)

    def reasons(self) -> list[str]:
        """One reason per message the letters stand for."""
        pairs = zip(self.calls, self.counts, strict=True)
        return [call[1] for call, n in pairs for _ in range(n)]


def bridge(**settings: Any) -> tuple[Bridge, Letters]:
    b = Bridge(EdgeConfig(bridge=BridgeSettings(**settings)))
    b._producer = cast(Any, Producer())
    b._letters = DeadLetters(os.urandom(32), Tokenizer(os.urandom(32)))
    letters = Letters()
    b._dead_letter = letters  # type: ignore[method-assign]
    return b, letters


def message(topic: bytes, payload: bytes, mid: int = 1) -> mqtt.MQTTMessage:
    msg = mqtt.MQTTMessage(mid, topic)
    msg.payload = payload
    msg.qos = 1
    return msg


def deliver(b: Bridge, msg: mqtt.MQTTMessage) -> None:
    b._on_message(cast(mqtt.Client, None), None, msg)


def test_a_topic_that_is_not_utf8_is_an_unknown_topic() -> None:
    b, letters = bridge()
    deliver(b, message(b"fleet/\xff\xfe/telemetry", b"{}"))
    assert letters.reasons() == ["unknown_topic"]


def test_any_exception_is_an_internal_error_naming_its_type_not_its_text(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def broken(*_args: Any) -> Any:
        raise KeyError("drv-secret-0001")

    monkeypatch.setattr(bridge_module, "check", broken)
    b, letters = bridge()
    payload = encode(telemetry(VIN, "e", time.time()))
    deliver(b, message(f"fleet/{VIN}/telemetry".encode(), payload, mid=5))
    ((mid, reason, detail, kept),) = letters.calls
    assert (mid, reason, kept) == (5, "internal_error", payload)
    assert detail.startswith("KeyError at test_bridge_message_path.py:")
    assert "drv-secret" not in detail


def test_a_message_that_breaks_dead_lettering_still_leaves_its_reason(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def broken(*_args: Any) -> Any:
        raise ValueError("bug")

    monkeypatch.setattr(bridge_module, "check", broken)
    b, letters = bridge()

    def picky(
        msg: mqtt.MQTTMessage,
        reason: str,
        detail: str,
        now: float,
        acks: list[tuple[int, int, int]] | None = None,
    ) -> None:
        if msg.payload:
            raise UnicodeError("cannot write this one")
        letters(msg, reason, detail, now, acks)

    b._dead_letter = picky  # type: ignore[method-assign]
    deliver(b, message(f"fleet/{VIN}/telemetry".encode(), b'{"x":1}', mid=77))
    # The same MQTT message id (so it is acknowledged), the reason, no payload.
    ((mid, reason, detail, kept),) = letters.calls
    assert (mid, reason, kept) == (77, "internal_error", b"")
    assert "payload not kept" in detail and "UnicodeError" in detail


def test_the_per_vehicle_metric_names_a_bounded_number_of_vehicles(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(metrics, "RATE_LIMITED_VINS", 2)
    b, letters = bridge(vehicle_rate_per_s=1.0, vehicle_burst=1)
    vins = [f"1FAST{n:012d}" for n in range(5)]
    assert b._letters is not None
    tokens = {v: b._letters.vehicle_token(v) for v in vins}
    before = {v: metrics.RATE_LIMITED.labels("bridge", tokens[v])._value.get() for v in vins}
    other = metrics.RATE_LIMITED.labels("bridge", "other")._value.get()
    now = time.time()
    for v in vins:
        for i in range(3):  # one passes, two are over the limit
            deliver(
                b, message(f"fleet/{v}/telemetry".encode(), encode(telemetry(v, f"{v}-{i}", now)))
            )
    assert letters.calls == []  # held for a moment: one letter per vehicle's burst
    b._flush_excess(float("inf"))
    assert letters.reasons() == ["rate_limited"] * 10
    assert letters.counts == [2] * 5  # each vehicle's two excess messages in one letter
    assert len(b._limited) == 2
    named = [
        v for v in vins if metrics.RATE_LIMITED.labels("bridge", tokens[v])._value.get() > before[v]
    ]
    assert named == vins[:2]
    assert metrics.RATE_LIMITED.labels("bridge", "other")._value.get() - other == 6
    # No VIN in any series: the label is the vehicle's keyed token.
    assert not any(v in str(metrics.RATE_LIMITED.collect()) for v in vins)
