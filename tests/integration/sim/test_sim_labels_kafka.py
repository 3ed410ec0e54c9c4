"""``fleetsentry sim run --labels-kafka``: the labels topic holds exactly the labels file."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path

import msgspec
import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic
from firmware_sim.cli import produce_labels
from firmware_sim.errors import SimError

from shared.contracts import Label
from shared.infra.topics_admin import wait_visible
from shared.topics import LABELS, registry
from tests.conftest import MqttBroker

FLEETSENTRY = str(Path(sys.executable).parent / "fleetsentry")
PASSWORD = "sim-labels-password"


def _create_labels_topic(bootstrap: str) -> None:
    """The labels topic lives in the cloud cluster; this module's one Kafka stands in."""
    spec = next(t for t in registry("cloud") if t.name == LABELS)
    admin = AdminClient({"bootstrap.servers": bootstrap})
    futures = admin.create_topics([NewTopic(LABELS, spec.partitions, 1, config=spec.configs())])
    futures[LABELS].result(30)
    # Created is not yet usable: wait until metadata shows every partition with a leader.
    wait_visible(admin, bootstrap, {LABELS: spec.partitions})


def _create_labels_topic_if_missing(bootstrap: str) -> None:
    meta = AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=10)
    if LABELS not in meta.topics:
        _create_labels_topic(bootstrap)


def _end_offsets(bootstrap: str) -> list[TopicPartition]:
    """Where each partition ends now; the run's records are the ones after it."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"t-{uuid.uuid4()}"})
    try:
        parts = c.list_topics(LABELS, timeout=10).topics[LABELS].partitions
        assert parts, f"{LABELS} has no partitions"
        return [TopicPartition(LABELS, p, _high_watermark(c, p)) for p in parts]
    finally:
        c.close()


_LEADER_MOVING = {
    KafkaError.NOT_LEADER_FOR_PARTITION,
    KafkaError.LEADER_NOT_AVAILABLE,
    KafkaError.UNKNOWN_TOPIC_OR_PART,
}


def _high_watermark(c: Consumer, partition: int) -> int:
    # A topic created a moment ago may have no leader yet: its offsets read as invalid
    # (negative), and assigning those would start at the end and miss everything. While the
    # 3-node cluster settles, leadership may also move under the request: ask again.
    deadline = time.monotonic() + 30
    while True:
        try:
            high = c.get_watermark_offsets(TopicPartition(LABELS, partition), timeout=10)[1]
        except KafkaException as exc:
            if exc.args[0].code() not in _LEADER_MOVING:
                raise
            high = -1
        if high >= 0:
            return int(high)
        assert time.monotonic() < deadline, f"{LABELS}[{partition}] has no leader"
        time.sleep(0.2)


def _consume_from(
    bootstrap: str, start: list[TopicPartition], expect: int, timeout: float = 60.0
) -> list[tuple[bytes, Label]]:
    """(key, label) of every record after ``start``; reads ``expect`` then 2 s more."""
    return [(key, lab) for key, lab, _ in _consume_timed(bootstrap, start, expect, timeout)]


def _consume_timed(
    bootstrap: str, start: list[TopicPartition], expect: int, timeout: float = 60.0
) -> list[tuple[bytes, Label, float]]:
    """(key, label, when produced in epoch seconds) of every record after ``start``."""
    c = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"t-{uuid.uuid4()}",
            "enable.auto.commit": False,
        }
    )
    c.assign(start)
    out: list[tuple[bytes, Label, float]] = []
    deadline = time.monotonic() + timeout
    quiet_until: float | None = None
    try:
        while time.monotonic() < deadline:
            if quiet_until is None and len(out) >= expect:
                quiet_until = time.monotonic() + 2.0  # anything extra would show up now
            if quiet_until is not None and time.monotonic() > quiet_until:
                break
            msg = c.poll(0.2)
            if msg is None or msg.error():
                continue
            key, value = msg.key(), msg.value()
            assert key is not None and value is not None  # labels are keyed, never deleted
            out.append(
                (key, msgspec.json.decode(value, type=Label), msg.timestamp()[1] / 1000)
            )  # the producer's create time
    finally:
        c.close()
    return out


def _file_labels(path: Path) -> list[Label]:
    return [msgspec.json.decode(line, type=Label) for line in path.read_bytes().splitlines()]


def _check_topic_equals_file(records: list[tuple[bytes, Label]], expected: list[Label]) -> None:
    assert expected, "the run produced no labels to compare"
    counts = Counter(lab.event_id for _, lab in records)
    assert not [e for e, n in counts.items() if n != 1], "labels produced more than once"
    assert all(key == lab.event_id.encode() for key, lab in records)
    by_id = {lab.event_id: lab for _, lab in records}
    assert len(expected) == len({lab.event_id for lab in expected})
    want = {lab.event_id for lab in expected}
    assert set(by_id) == want, (
        f"{len(want - set(by_id))} of {len(want)} labels missing "
        f"from the topic, {len(set(by_id) - want)} unexpected"
    )
    # Same kind, stream, episode and episode span for every event.
    assert {lab.event_id: lab for lab in expected} == by_id


@pytest.mark.integration
@pytest.mark.timeout(240)
def test_a_missing_labels_topic_is_named(plain_bootstrap: str) -> None:
    # Runs first in the module: the edge cluster has no labels topic of its own.
    lab = Label(
        event_id="e-1",
        stream="telemetry",
        kind="spikes",
        episode_id="ep-1",
        start_ts=1.0,
        end_ts=2.0,
    )
    with pytest.raises(SimError, match="no `labels` topic"):
        produce_labels(plain_bootstrap, [lab])


@pytest.mark.integration
@pytest.mark.timeout(240)
def test_dry_run_labels_to_kafka_equal_the_labels_file(
    plain_bootstrap: str, tmp_path: Path
) -> None:
    _create_labels_topic_if_missing(plain_bootstrap)
    start = _end_offsets(plain_bootstrap)
    labels_out = tmp_path / "labels.jsonl"
    run = subprocess.run(
        [
            FLEETSENTRY,
            "sim",
            "run",
            "--dry-run",
            "--out",
            str(tmp_path / "events.jsonl"),
            "--labels-out",
            str(labels_out),
            "--labels-kafka",
            plain_bootstrap,
            "--labels-kafka-security",
            "none",
            "--vehicles",
            "15",
            "--duration",
            "1200",
            "--seed",
            "41",
            "--fault-scale",
            "2",
            "--fraud-scale",
            "8",
            "--payment-rate",
            "3",
            "--summary-json",
            str(tmp_path / "summary.json"),
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert run.returncode == 0, run.stderr
    expected = _file_labels(labels_out)
    assert {lab.stream for lab in expected} == {"telemetry", "payments"}
    summary = msgspec.json.decode((tmp_path / "summary.json").read_bytes())
    assert summary["labels_produced"] == summary["labels"] == len(expected)
    _check_topic_equals_file(_consume_from(plain_bootstrap, start, len(expected)), expected)


@pytest.mark.integration
@pytest.mark.timeout(240)
def test_live_run_labels_to_kafka_equal_the_labels_file(
    plain_bootstrap: str, mqtt_broker: MqttBroker, tmp_path: Path
) -> None:
    _create_labels_topic_if_missing(plain_bootstrap)
    start = _end_offsets(plain_bootstrap)
    labels_out = tmp_path / "labels.jsonl"
    run = subprocess.run(
        [
            FLEETSENTRY,
            "sim",
            "run",
            "--mqtt",
            f"{mqtt_broker.host}:{mqtt_broker.port}",
            "--register-with",
            str(mqtt_broker.stack.mqtt.home),
            "--password",
            PASSWORD,
            "--labels-out",
            str(labels_out),
            "--labels-kafka",
            plain_bootstrap,
            "--labels-kafka-security",
            "none",
            "--vehicles",
            "20",
            "--duration",
            "6",
            "--seed",
            "42",
            "--fault-scale",
            "500",
            "--summary-json",
            str(tmp_path / "summary.json"),
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert run.returncode == 0, run.stderr
    expected = _file_labels(labels_out)
    summary = msgspec.json.decode((tmp_path / "summary.json").read_bytes())
    assert summary["drained"] and summary["labels_produced"] == len(expected), summary
    _check_topic_equals_file(_consume_from(plain_bootstrap, start, len(expected)), expected)


@pytest.mark.integration
@pytest.mark.timeout(240)
def test_live_run_labels_reach_kafka_during_the_run_after_their_delay(
    plain_bootstrap: str, mqtt_broker: MqttBroker, tmp_path: Path
) -> None:
    """A label goes out ``--label-delay`` seconds after its episode ends, not at the run's end.

    Faults last 30 s or more, so theirs are still waiting when this 30 s run ends (they go
    then); single-payment frauds (amount_outlier, 10-120 s after the payment that set them
    up) end early enough for a few to be due while the vehicles still drive.
    """
    _create_labels_topic_if_missing(plain_bootstrap)
    start = _end_offsets(plain_bootstrap)
    labels_out = tmp_path / "labels.jsonl"
    delay, duration = 2.0, 30.0
    launched = time.time()
    run = subprocess.run(
        [
            FLEETSENTRY,
            "sim",
            "run",
            "--mqtt",
            f"{mqtt_broker.host}:{mqtt_broker.port}",
            "--register-with",
            str(mqtt_broker.stack.mqtt.home),
            "--password",
            PASSWORD,
            "--labels-out",
            str(labels_out),
            "--labels-kafka",
            plain_bootstrap,
            "--labels-kafka-security",
            "none",
            "--label-delay",
            str(delay),
            "--vehicles",
            "30",
            "--duration",
            str(duration),
            "--seed",
            "1",
            "--fault-scale",
            "200",
            "--fraud-scale",
            "0",
            "--fraud-rate",
            "amount_outlier=0.6",
            "--payment-rate",
            "20000",
            "--summary-json",
            str(tmp_path / "summary.json"),
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=150,
    )
    assert run.returncode == 0, run.stderr
    expected = _file_labels(labels_out)
    records = _consume_timed(plain_bootstrap, start, len(expected))
    # The run's clock starts at launch or later and never runs ahead of the wall clock, so
    # its last tick (launch + duration - 1 s at the earliest) comes after this moment:
    # anything produced before it was produced while the fleet was still generating.
    generating_until = launched + duration - 1.0
    during = [(lab, ts) for _, lab, ts in records if ts < generating_until]
    assert during, (
        f"none of {len(records)} labels reached the topic before the run's "
        f"last tick (first at +{min(ts for *_, ts in records) - launched:.1f} s "
        f"after launch); they all wait for the run to end"
    )
    early = [
        (lab.event_id, round(ts - lab.end_ts, 2))
        for lab, ts in during
        if ts < lab.end_ts + delay - 0.01
    ]
    assert not early, f"labels produced before their episode end + {delay} s: {early[:5]}"
    assert any(lab.stream == "telemetry" for lab in expected), "no fault label to flush"
    summary = msgspec.json.decode((tmp_path / "summary.json").read_bytes())
    assert summary["drained"] and summary["labels_produced"] == len(expected), summary
    _check_topic_equals_file([(key, lab) for key, lab, _ in records], expected)
