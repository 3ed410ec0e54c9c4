"""The bridge against real Mosquitto and Kafka: routing, keys, dead letters, crashes, metrics."""

from __future__ import annotations

import random
import shutil
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest

from shared import contracts, topics
from shared.infra.ports import free_ports
from shared.infra.stack import Stack
from shared.kafka_config import KafkaSettings
from tests.bridge_payloads import encode, malformed, payment, telemetry, vin
from tests.bridge_support import (
    BridgeProcess,
    dead_letters,
    drop_session,
    mqtt_client,
    publish_all,
    read_topic,
    unique,
    vehicle_letters,
    write_edge_toml,
)

pytestmark = pytest.mark.integration


class Setup:
    def __init__(self, stack: Stack, tmp: Path) -> None:
        self.stack = stack
        self.tmp = tmp
        self.edge_id = unique("t")
        self.group = unique("g")
        self.config = write_edge_toml(tmp / "edge.toml", stack, self.edge_id, self.group)
        self.bridges: list[BridgeProcess] = []

    def bridge(self, instance: int = 0, metrics_port: int = 0) -> BridgeProcess:
        b = BridgeProcess(self.config, instance, metrics_port).start()
        self.bridges.append(b)
        return b

    def close(self) -> None:
        for b in self.bridges:
            b.stop()
        for i in {b.instance for b in self.bridges}:
            drop_session(self.stack, f"{self.edge_id}-bridge-{i}")


@pytest.fixture
def setup(stack: Stack, tmp_path: Path) -> Iterator[Setup]:
    s = Setup(stack, tmp_path)
    try:
        yield s
    finally:
        s.close()


def ids_in(records: list, stream_vins: set[str]) -> Counter[str]:
    out: Counter[str] = Counter()
    for rec in records:
        doc = msgspec.json.decode(rec.value())
        if doc.get("vin") in stream_vins:
            out[doc["event_id"]] += 1
    return out


def test_valid_events_from_vehicles_land_in_raw_keyed_by_vin(
    setup: Setup, edge_kafka: KafkaSettings
) -> None:
    rng = random.Random(11)
    vins = [vin(rng) for _ in range(4)]
    setup.stack.mqtt.register_vehicles({v: "pw-" + v for v in vins})
    setup.bridge().wait_connected()
    now = time.time()
    expected: dict[str, tuple[str, str]] = {}  # event_id -> (topic, vin)
    for v in vins:
        car = mqtt_client(setup.stack, v, user=v, password="pw-" + v)
        msgs = []
        for i in range(50):
            tel_id, pay_id = f"{v}-t{i}", f"{v}-p{i}"
            msgs.append((f"fleet/{v}/telemetry", encode(telemetry(v, tel_id, now))))
            expected[tel_id] = ("raw.telemetry", v)
            if i % 5 == 0:
                msgs.append((f"fleet/{v}/payments", encode(payment(v, pay_id, now))))
                expected[pay_id] = ("raw.payments", v)
        publish_all(car, msgs)
        car.disconnect()
        car.loop_stop()

    seen: dict[str, tuple[str, str]] = {}

    def collect(topic: str, want: int) -> None:
        records = read_topic(
            edge_kafka, topic, done=lambda rs: len(ids_in(rs, set(vins))) >= want, timeout=60
        )
        for rec in records:
            doc = msgspec.json.decode(rec.value())
            if doc.get("vin") in vins:
                assert rec.key() == doc["vin"].encode(), "record not keyed by its VIN"
                seen[doc["event_id"]] = (rec.topic(), doc["vin"])
                assert msgspec.json.decode(rec.value()) == doc

    collect("raw.telemetry", sum(1 for t, _ in expected.values() if t == "raw.telemetry"))
    collect("raw.payments", sum(1 for t, _ in expected.values() if t == "raw.payments"))
    assert seen == expected
    # Each VIN stays in one partition, so per-vehicle order holds.
    parts: dict[str, set[int]] = {}
    for rec in read_topic(edge_kafka, "raw.telemetry", idle=1.0):
        doc = msgspec.json.decode(rec.value())
        if doc.get("vin") in vins:
            parts.setdefault(doc["vin"], set()).add(rec.partition())
    assert all(len(p) == 1 for p in parts.values())


def test_fuzz_every_malformed_payload_lands_in_the_dlq_with_its_reason(
    setup: Setup, edge_kafka: KafkaSettings
) -> None:
    rng = random.Random(20240601)
    the_vin = vin(rng)
    setup.bridge().wait_connected()
    now = time.time()
    expected: dict[bytes, str] = {}
    msgs = []
    for i in range(2000):
        topic, payload, reason = malformed(rng, the_vin, f"fz-{i}", now)
        assert payload not in expected
        expected[payload] = reason
        msgs.append((topic, payload))
    valid = [
        (f"fleet/{the_vin}/telemetry", encode(telemetry(the_vin, f"ok-{i}", now)))
        for i in range(100)
    ]
    admin = mqtt_client(setup.stack, unique("fuzz"))
    try:
        publish_all(admin, msgs[:1000] + valid + msgs[1000:], timeout=120)
    finally:
        admin.disconnect()
        admin.loop_stop()

    sealer = dead_letters(setup.config)

    def mine(records: list) -> dict[bytes, contracts.DeadLetter]:
        return vehicle_letters(sealer, the_vin, records)

    records = read_topic(
        edge_kafka, topics.DLQ_INGEST, done=lambda rs: len(mine(rs)) >= len(expected), timeout=120
    )
    letters = mine(records)
    missing = set(expected) - set(letters)
    assert not missing, f"{len(missing)} malformed payloads never reached the DLQ"
    wrong = {p[:80]: (letters[p].reason, r) for p, r in expected.items() if letters[p].reason != r}
    assert not wrong, wrong
    assert all(
        letter.detail and letter.source.startswith("mqtt:fleet/") for letter in letters.values()
    )
    assert all(letter.digest == sealer.digest(p) for p, letter in letters.items())
    # The valid ones went through, and none of the bad ones did.
    raw = ids_in(read_topic(edge_kafka, "raw.telemetry", idle=2.0), {the_vin})
    assert set(raw) == {f"ok-{i}" for i in range(100)}


def test_sigkill_during_a_run_loses_nothing(setup: Setup, edge_kafka: KafkaSettings) -> None:
    rng = random.Random(5)
    the_vin = vin(rng)
    bridge = setup.bridge()
    bridge.wait_connected()
    total = 3000
    published: list[str] = []
    pub_error: list[BaseException] = []
    admin = mqtt_client(setup.stack, unique("crash-pub"))

    def publish() -> None:
        try:
            for i in range(total):
                eid = f"cr-{i}"
                info = admin.publish(
                    f"fleet/{the_vin}/telemetry",
                    encode(telemetry(the_vin, eid, time.time())),
                    qos=1,
                )
                published.append(eid)
                if i % 100 == 99:
                    info.wait_for_publish(10)
                    time.sleep(0.05)  # ~1,500 events/s spread over a couple of seconds
        except BaseException as exc:  # noqa: BLE001  (reported by the test thread)
            pub_error.append(exc)

    pub = threading.Thread(target=publish)
    pub.start()
    kills = 0
    deadline = time.monotonic() + 60
    while pub.is_alive() and time.monotonic() < deadline:
        time.sleep(0.6)
        bridge.kill()
        kills += 1
        time.sleep(0.3)  # messages published now queue in the broker for our session
        bridge = setup.bridge()
        bridge.wait_connected()
    pub.join(30)
    admin.disconnect()
    admin.loop_stop()
    assert not pub_error, pub_error
    assert kills >= 1 and len(published) == total

    want = set(published)
    records = read_topic(
        edge_kafka, "raw.telemetry", done=lambda rs: set(ids_in(rs, {the_vin})) >= want, timeout=90
    )
    got = ids_in(records, {the_vin})
    missing = want - set(got)
    assert not missing, f"{len(missing)} of {total} events lost after {kills} SIGKILLs"


def test_metrics_endpoint_passes_promtool(setup: Setup) -> None:
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: apt-get install prometheus"
    port = free_ports(1)[0]
    bridge = setup.bridge(metrics_port=port)
    bridge.wait_connected()
    rng = random.Random(3)
    the_vin = vin(rng)
    now = time.time()
    admin = mqtt_client(setup.stack, unique("metrics"))
    msgs = [
        (f"fleet/{the_vin}/telemetry", encode(telemetry(the_vin, f"m{i}", now))) for i in range(20)
    ]
    msgs += [(f"fleet/{the_vin}/telemetry", b"{not json")]
    publish_all(admin, msgs)
    admin.disconnect()
    admin.loop_stop()
    deadline = time.monotonic() + 30
    text = ""
    while time.monotonic() < deadline:
        text = bridge.scrape()
        if (
            'fleetsentry_dlq_messages_total{reason="invalid_json",service="bridge"} 1.0' in text
            and 'fleetsentry_messages_out_total{service="bridge",stream="telemetry"} 20.0' in text
        ):
            break
        time.sleep(0.3)
    assert 'fleetsentry_messages_in_total{service="bridge",stream="telemetry"} 21.0' in text
    assert 'fleetsentry_messages_out_total{service="bridge",stream="telemetry"} 20.0' in text
    assert 'fleetsentry_dlq_messages_total{reason="invalid_json",service="bridge"} 1.0' in text
    assert (
        'fleetsentry_end_to_end_latency_seconds_count{service="bridge",stream="telemetry"} '
        "20.0" in text
    )
    assert "fleetsentry_produce_errors_total" in text or "# TYPE fleetsentry_produce_errors" in text
    check = subprocess.run(
        [promtool, "check", "metrics"],
        input=text.encode(),
        check=False,
        capture_output=True,
        timeout=30,
    )
    assert check.returncode == 0 and not check.stdout.strip() and not check.stderr.strip(), (
        check.stdout + check.stderr
    ).decode()
