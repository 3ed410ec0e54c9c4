"""Hostile vehicles against a real bridge, real Mosquitto and real Kafka.

Each attack is published by a registered vehicle on its own topics (the ACL lets it write
nothing else), next to a well-behaved vehicle whose events must still arrive. The verdict
reconciles what was published with what ``raw.*`` and ``dlq.ingest`` hold afterwards: every
hostile message is a dead letter with its reason, every good event is in ``raw.*``.
Dead letters are read by their ``reason`` only, from the offset the test started at, so the
check holds whatever else a letter carries.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import msgspec
import paho.mqtt.client as mqtt
import pytest
from confluent_kafka import Consumer, KafkaException, TopicPartition

import edge.bridge.bridge as bridge_module
from edge.bridge.bridge import Bridge
from edge.config import load
from edge.dlq import DeadLetters
from shared import topics
from shared.infra.stack import Stack
from shared.kafka_config import KafkaSettings, Target, client_config
from tests.bridge_payloads import encode, telemetry, vin
from tests.bridge_support import (
    BridgeGateway,
    BridgeProcess,
    drop_session,
    mqtt_client,
    publish_all,
    read_topic,
    unique,
    write_edge_toml,
)

pytestmark = pytest.mark.integration

DAY = 86_400.0


@pytest.fixture
def gateway(stack: Stack, tmp_path: Path) -> Iterator[BridgeGateway]:
    gw = BridgeGateway(stack, tmp_path)
    try:
        yield gw
    finally:
        gw.close()


def end_offsets(bootstrap: Target, topic: str, timeout: float = 30.0) -> dict[int, int]:
    """Each partition's end offset; retried while a fresh broker is still electing leaders."""
    c = Consumer(client_config(bootstrap, {"group.id": unique("wm")}))
    deadline = time.monotonic() + timeout
    try:
        while True:
            try:
                meta = c.list_topics(topic, timeout=10)
                return {
                    p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
                    for p in meta.topics[topic].partitions
                }
            except KafkaException:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
    finally:
        c.close()


def reasons_since(
    bootstrap: Target, start: dict[int, int], want: int, timeout: float = 60.0
) -> Counter[str]:
    """Messages per reason in the dead letters written after ``start``, once ``want``
    messages are there (a rate_limited letter stands for ``count`` of them)."""

    def new(records: list) -> Counter[str]:
        out: Counter[str] = Counter()
        for r in records:
            if r.offset() >= start.get(r.partition(), 0):
                doc = msgspec.json.decode(r.value())
                out[doc["reason"]] += doc.get("count", 1)
        return out

    return new(
        read_topic(
            bootstrap,
            topics.DLQ_INGEST,
            done=lambda rs: sum(new(rs).values()) >= want,
            timeout=timeout,
        )
    )


def event_ids(
    bootstrap: Target,
    topic: str,
    vin_: str,
    want: set[str],
    alive: BridgeProcess | None = None,
    timeout: float = 60.0,
    at_least: int = 0,
) -> set[str]:
    """Event ids of ``vin_`` in ``topic``, read until ``want`` (and ``at_least`` ids) are
    there or the bridge is gone."""

    def ids(records: list) -> set[str]:
        out = set()
        for rec in records:
            doc = msgspec.json.decode(rec.value())
            if doc.get("vin") == vin_:
                out.add(doc["event_id"])
        return out

    def done(records: list) -> bool:
        gone = alive is not None and alive.proc is not None and alive.proc.poll() is not None
        got = ids(records)
        return (want <= got and len(got) >= at_least) or gone

    return ids(read_topic(bootstrap, topic, done=done, timeout=timeout))


def metric(text: str, name: str, label: str = "") -> float:
    """The sum of a metric's samples (those whose labels contain ``label``)."""
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name + "{") and label in line
    )


def wait_accounted(bridge: BridgeProcess, messages: int, timeout: float = 60.0) -> str:
    """/metrics once ``messages`` were produced or dead-lettered, and Kafka confirmed each."""
    deadline = time.monotonic() + timeout
    text = ""
    while time.monotonic() < deadline:
        text = bridge.scrape()
        if (
            metric(text, "fleetsentry_messages_out_total")
            + metric(text, "fleetsentry_dlq_messages_total")
            >= messages
        ):
            return text
        time.sleep(0.2)
    raise AssertionError(f"the bridge accounted for fewer than {messages} messages: {text}")


def publish_as(stack: Stack, vin_: str, messages: list[tuple[str, bytes]]) -> None:
    car = mqtt_client(stack, vin_, user=vin_, password="pw-" + vin_)
    try:
        publish_all(car, messages)
    finally:
        car.disconnect()
        car.loop_stop()


def nested(depth: int) -> bytes:
    """A 2 KB object nesting arrays ``depth`` levels deep in a field no contract has."""
    return b'{"x":' + b"[" * depth + b"]" * depth + b"}"


def hostile_payloads(v: str, now: float) -> list[tuple[bytes, str]]:
    """(payload, the reason the bridge must give) for messages on the attacker's own topic."""
    good = telemetry(v, "hostile", now)
    huge_ts = encode(good).replace(f'"ts":{now!r}'.encode(), b'"ts":' + b"9" * 5000)
    far_lat = encode(good).replace(b'"lat":52.52', b'"lat":1e400')
    not_utf8 = encode(good).replace(b"drv-0001", b"drv-\xff\xfe")
    assert len({huge_ts, far_lat, not_utf8, encode(good)}) == 4
    return [
        (nested(1000), "too_deep"),  # the payload that halted ingest
        (b"[" * 1000 + b"]" * 1000, "too_deep"),  # nested arrays, no object at all
        (b'{"a":' + b'{"a":[' * 500 + b"]}" * 500 + b"}", "too_deep"),
        (b"[" * 16_000, "too_deep"),  # never closed, just under the size limit
        (b"[" * 20_000, "oversize"),  # over the size limit: never scanned
        (huge_ts, "invalid_value"),  # a 5,000-digit device time
        (far_lat, "invalid_value"),  # a number past any float
        (not_utf8, "invalid_json"),  # not UTF-8
        (b"", "invalid_json"),
        (b'{"event_id":"\\ud800"}', "invalid_json"),  # a lone UTF-16 surrogate
    ]


def test_hostile_payloads_become_dead_letters_and_the_bridge_keeps_running(
    gateway: BridgeGateway, edge_kafka: KafkaSettings
) -> None:
    rng = random.Random(13)
    attacker, victim = vin(rng), vin(rng)
    gateway.stack.mqtt.register_vehicles({attacker: "pw-" + attacker, victim: "pw-" + victim})
    bridge = gateway.start()
    pid = bridge.proc.pid if bridge.proc else None
    start = end_offsets(edge_kafka, topics.DLQ_INGEST)
    now = time.time()
    hostile = hostile_payloads(attacker, now)
    # Brackets and quotes inside strings nest nothing: these two are valid events.
    brackets = telemetry(attacker, "in-string", now)
    brackets["driver_id"] = "[{" * 60
    quoted = telemetry(attacker, "escaped-quote", now)
    quoted["firmware"] = '\\"' + "[" * 100
    publish_as(
        gateway.stack,
        attacker,
        [(f"fleet/{attacker}/telemetry", p) for p, _ in hostile]
        + [
            (f"fleet/{attacker}/telemetry", encode(brackets)),
            (f"fleet/{attacker}/telemetry", encode(quoted)),
        ],
    )
    publish_as(
        gateway.stack,
        victim,
        [(f"fleet/{victim}/telemetry", encode(telemetry(victim, "victim-1", now)))],
    )

    got = event_ids(edge_kafka, "raw.telemetry", victim, {"victim-1"}, bridge)
    assert bridge.proc is not None and bridge.proc.poll() is None, (
        f"the bridge exited: {bridge.log.read_text()[-1500:]}"
    )
    assert bridge.proc.pid == pid
    assert got == {"victim-1"}, "the well-behaved vehicle's event never reached raw.telemetry"
    assert event_ids(
        edge_kafka, "raw.telemetry", attacker, {"in-string", "escaped-quote"}, bridge
    ) == {"in-string", "escaped-quote"}
    expected = Counter(reason for _, reason in hostile)
    assert reasons_since(edge_kafka, start, len(hostile)) == expected

    # Every dead letter was acknowledged: a restarted bridge gets none of them again.
    bridge.stop()
    bridge.start().wait_connected()
    publish_as(
        gateway.stack,
        victim,
        [(f"fleet/{victim}/telemetry", encode(telemetry(victim, "victim-2", now)))],
    )
    assert "victim-2" in event_ids(edge_kafka, "raw.telemetry", victim, {"victim-2"}, bridge)
    time.sleep(1.0)  # a redelivered letter would have been produced before victim-2
    assert reasons_since(edge_kafka, start, len(hostile), timeout=5) == expected


def test_events_older_than_the_age_limit_are_dead_letters(
    gateway: BridgeGateway, edge_kafka: KafkaSettings
) -> None:
    rng = random.Random(17)
    car = vin(rng)
    gateway.stack.mqtt.register_vehicles({car: "pw-" + car})
    bridge = gateway.start()
    start = end_offsets(edge_kafka, topics.DLQ_INGEST)
    now = time.time()
    old = [
        telemetry(car, "epoch", 1.0),
        telemetry(car, "last-week", now - 7 * DAY),
        telemetry(car, "four-days", now - 4 * DAY),
    ]
    recent = [telemetry(car, "yesterday", now - DAY), telemetry(car, "now", now)]
    publish_as(gateway.stack, car, [(f"fleet/{car}/telemetry", encode(e)) for e in old + recent])
    assert event_ids(edge_kafka, "raw.telemetry", car, {"yesterday", "now"}, bridge) == {
        "yesterday",
        "now",
    }, "an old event reached raw.telemetry, or a recent one did not"
    assert reasons_since(edge_kafka, start, len(old)) == {"too_old": len(old)}


RATE, BURST = 5.0, 20


def test_a_flooding_vehicle_is_rate_limited_and_the_others_still_arrive(
    stack: Stack, tmp_path: Path, edge_kafka: KafkaSettings
) -> None:
    rng = random.Random(19)
    flooder, driver = vin(rng), vin(rng)
    stack.mqtt.register_vehicles({flooder: "pw-" + flooder, driver: "pw-" + driver})
    gw = BridgeGateway(
        stack,
        tmp_path,
        metrics=True,
        extra=f"vehicle_rate_per_s = {RATE}\nvehicle_burst = {BURST}\n",
    )
    try:
        bridge = gw.start()
        start = end_offsets(edge_kafka, topics.DLQ_INGEST)
        began = time.monotonic()
        flood = [
            (f"fleet/{flooder}/telemetry", encode(telemetry(flooder, f"flood-{i}", time.time())))
            for i in range(1000)
        ]
        attack = threading.Thread(target=publish_as, args=(stack, flooder, flood))
        attack.start()
        # The well-behaved vehicle: 12 frames at 4 Hz while the flood goes on.
        car = mqtt_client(stack, driver, user=driver, password="pw-" + driver)
        try:
            for i in range(12):
                car.publish(
                    f"fleet/{driver}/telemetry",
                    encode(telemetry(driver, f"good-{i}", time.time())),
                    qos=1,
                )
                time.sleep(0.25)
        finally:
            attack.join(60)
            car.disconnect()
            car.loop_stop()
        good = {f"good-{i}" for i in range(12)}
        assert event_ids(edge_kafka, "raw.telemetry", driver, good, bridge) == good
        # Every flood message taken and confirmed, produced or dead-lettered (the metrics
        # count both once Kafka confirmed them).
        text = wait_accounted(bridge, 1000 + 12)
        elapsed = time.monotonic() - began
        limited = round(metric(text, "fleetsentry_dlq_messages_total", 'reason="rate_limited"'))
        admitted = event_ids(
            edge_kafka, "raw.telemetry", flooder, set(), bridge, at_least=1000 - limited
        )
        assert len(admitted) == 1000 - limited
        assert BURST <= len(admitted) <= BURST + RATE * elapsed + 1, (
            f"{len(admitted)} of 1000 flood events admitted in {elapsed:.0f}s"
        )
        assert reasons_since(edge_kafka, start, limited) == {"rate_limited": limited}
        text = bridge.scrape()
        token = DeadLetters.load(load(gw.config), create=False).vehicle_token(flooder)
        assert (
            f'fleetsentry_rate_limited_total{{service="bridge",vehicle="{token}"}} '
            f"{float(limited)}" in text
        )
        assert driver not in text and flooder not in text
        assert (
            f'fleetsentry_dlq_messages_total{{reason="rate_limited",service="bridge"}} '
            f"{float(limited)}" in text
        )
    finally:
        gw.close()


def run_in_thread(bridge: Bridge) -> tuple[threading.Event, threading.Thread]:
    stop = threading.Event()
    thread = threading.Thread(target=bridge.run, args=(stop,), daemon=True)
    thread.start()
    return stop, thread


def test_a_message_that_breaks_the_bridge_is_an_acknowledged_dead_letter(
    stack: Stack, tmp_path: Path, edge_kafka: KafkaSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug planted in validation, in a bridge running here against the real brokers."""
    rng = random.Random(23)
    car = vin(rng)
    stack.mqtt.register_vehicles({car: "pw-" + car})
    edge_id = unique("h")
    config = load(write_edge_toml(tmp_path / "edge.toml", stack, edge_id, unique("g")))
    real_check = bridge_module.check

    def planted(spec: Any, topic_vin: str, payload: bytes, now: float, limits: Any) -> Any:
        if b"planted-bug" in payload:
            return 1 // 0
        return real_check(spec, topic_vin, payload, now, limits)

    monkeypatch.setattr(bridge_module, "check", planted)
    bridge = Bridge(config)
    bridge.start()
    stop, thread = run_in_thread(bridge)
    start = end_offsets(edge_kafka, topics.DLQ_INGEST)
    try:
        now = time.time()
        publish_as(
            stack,
            car,
            [
                (f"fleet/{car}/telemetry", encode(telemetry(car, e, now)))
                for e in ("planted-bug", "after-bug")
            ],
        )
        assert event_ids(edge_kafka, "raw.telemetry", car, {"after-bug"}) == {"after-bug"}
        records = read_topic(
            edge_kafka,
            topics.DLQ_INGEST,
            timeout=30,
            done=lambda rs: any(r.offset() >= start[0] for r in rs),
        )
        letters = [msgspec.json.decode(r.value()) for r in records if r.offset() >= start[0]]
        assert [d["reason"] for d in letters] == ["internal_error"]
        # The exception's type and where it was raised, never its text.
        assert letters[0]["detail"].startswith("ZeroDivisionError at test_bridge_hostile.py:")
        assert thread.is_alive()
    finally:
        stop.set()
        thread.join(10)
        bridge.close()
    # Acknowledged: the same session, resumed, is not handed the message again.
    again = Bridge(config)
    again.start()
    stop, thread = run_in_thread(again)
    try:
        publish_as(
            stack,
            car,
            [(f"fleet/{car}/telemetry", encode(telemetry(car, "after-restart", time.time())))],
        )
        event_ids(edge_kafka, "raw.telemetry", car, {"after-restart"})
    finally:
        stop.set()
        thread.join(10)
    # A topic Mosquitto would never pass on (not UTF-8), handed to the bridge directly.
    again._on_message(
        cast(mqtt.Client, None), None, mqtt.MQTTMessage(0, b"fleet/\xff\xfe/telemetry")
    )
    assert again.close() == 0
    drop_session(stack, f"{edge_id}-bridge-0")
    assert reasons_since(edge_kafka, start, 2, timeout=10) == {
        "internal_error": 1,
        "unknown_topic": 1,
    }
