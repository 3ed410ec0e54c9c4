"""MirrorMaker 2 between a gateway and the cloud: what crosses, under which name, exactly once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import (
    AclBindingFilter,
    AclOperation,
    AclPermissionType,
    AdminClient,
    ResourcePatternType,
    ResourceType,
)

from shared import contracts, topics
from shared.infra import jars
from shared.infra.acls import ensure_acls, gateway_acls, gateway_user
from shared.infra.mirror import MAIN_CLASS, TRANSACTION_INTERVAL_MS, Mirror
from shared.infra.mirror_watch import TASK_FAILED_EXIT
from shared.infra.stack import Stack
from shared.kafka_config import KafkaSettings, Target, client_config
from tests.support import consume_all, produce_all, value_of

pytestmark = pytest.mark.integration

TOKEN = "tok" + "0" * 13
# Ten minutes of device time, as a gateway cut off from the cloud would see it.
OUTAGE_DEVICE_SECONDS = 600.0
# Wall seconds the backlog takes to build while the cloud is down. CI compresses the ten
# minutes; FLEETSENTRY_OUTAGE_S=600 runs the outage in real time (the test then takes ~12 min).
OUTAGE_WALL_SECONDS = float(os.environ.get("FLEETSENTRY_OUTAGE_S", "3"))


def _score(event_id: str, ts: float) -> bytes:
    return contracts.encode(
        contracts.Score(
            event_id=event_id,
            ts=ts,
            stream="telemetry",
            token=TOKEN,
            score=0.1,
            threshold=1.0,
            model_version="m1",
            anomalous=False,
        )
    )


def _anon_payment(event_id: str, ts: float) -> bytes:
    return contracts.encode(
        contracts.AnonPayment(
            event_id=event_id,
            ts=ts,
            card_token=TOKEN,
            vehicle_token=TOKEN,
            driver_token=TOKEN,
            merchant_id="m-1",
            mcc="5541",
            category="fuel",
            amount=42.0,
            currency="EUR",
            volume_l=30.0,
            cell="u0yj",
            features={"amount_vs_usual": 1.0},
        )
    )


def _alert(alert_id: str, ts: float) -> bytes:
    return contracts.encode(
        contracts.Alert(
            alert_id=alert_id,
            stream="payments",
            token=TOKEN,
            state="open",
            start_ts=ts,
            peak_ts=ts,
            end_ts=ts,
            peak_score=3.0,
            threshold=1.0,
            event_ids=[alert_id],
            top_features=[],
            model_version="m1",
        )
    )


def _transactional(bootstrap: Target) -> Producer:
    p = Producer(
        client_config(bootstrap, {"transactional.id": f"test-{uuid.uuid4()}", "linger.ms": 10})
    )
    p.init_transactions(30)
    return p


def _produce_in_transactions(
    p: Producer, topic: str, records: Iterable[tuple[str, bytes]], per_txn: int = 250
) -> None:
    batch = 0
    p.begin_transaction()
    for key, value in records:
        p.produce(topic, key=key.encode(), value=value)
        batch += 1
        if batch == per_txn:
            p.commit_transaction(30)
            p.begin_transaction()
            batch = 0
    p.commit_transaction(30)


def _ids(messages: list, field: str = "event_id") -> Counter[str]:
    import json

    return Counter(json.loads(m.value())[field] for m in messages)


def test_names_in_the_cloud_carry_the_edge_id(mirror: Mirror) -> None:
    assert mirror.cloud_topic(topics.ANON_PAYMENTS) == "edge-1.anon.payments"
    assert Mirror.edge_topic(topics.MODELS) == topics.CLOUD_MODELS
    conf = mirror.properties(8083)
    assert conf["cloud.exactly.once.source.support"] == "enabled"
    assert conf["edge-1.consumer.isolation.level"] == "read_committed"
    assert "raw" not in conf["edge-1->cloud.topics"]
    assert conf["edge-1->cloud.transaction.boundary"] == "interval"
    # Offset syncs are off; the source connector refuses to start with any offset-syncs setting.
    assert conf["emit.offset-syncs.enabled"] == "false"
    assert not [k for k in conf if "offset-syncs.topic" in k]


def test_committed_records_arrive_exactly_once_and_aborted_ones_never(
    mirror: Mirror, edge_kafka: KafkaSettings, cloud_kafka: KafkaSettings
) -> None:
    now = time.time()
    sent: dict[str, list[str]] = {}
    p = _transactional(edge_kafka)
    builders = {
        topics.ANON_PAYMENTS: _anon_payment,
        topics.ANON_TELEMETRY: _score,
        topics.SCORES_TELEMETRY: _score,
        topics.SCORES_PAYMENTS: _score,
        topics.ALERTS: _alert,
    }
    for topic, build in builders.items():
        ids = [str(uuid.uuid4()) for _ in range(300)]
        sent[topic] = ids
        _produce_in_transactions(p, topic, ((i, build(i, now)) for i in ids))
    # An aborted transaction must never be seen in the cloud (read_committed end to end).
    aborted = f"aborted-{uuid.uuid4()}"
    p.begin_transaction()
    p.produce(topics.ANON_PAYMENTS, key=aborted.encode(), value=_anon_payment(aborted, now))
    p.flush(10)
    p.abort_transaction(30)
    # A record committed after the aborted one proves the mirror has read past it.
    last = str(uuid.uuid4())
    _produce_in_transactions(p, topics.ANON_PAYMENTS, [(last, _anon_payment(last, now))])
    sent[topics.ANON_PAYMENTS].append(last)

    for topic, ids in sent.items():
        field = "alert_id" if topic == topics.ALERTS else "event_id"
        got = _ids(
            consume_all(cloud_kafka, mirror.cloud_topic(topic), expect=len(ids), timeout=120), field
        )
        assert set(got) == set(ids), f"{topic}: {len(set(ids) - set(got))} missing"
        assert max(got.values()) == 1, f"{topic}: duplicates {got.most_common(3)}"
        assert aborted not in got


def test_raw_topics_never_reach_the_cloud(
    mirror: Mirror, edge_kafka: KafkaSettings, cloud_kafka: KafkaSettings
) -> None:
    marker = f"PII-{uuid.uuid4()}"
    for topic in (topics.RAW_PAYMENTS, topics.RAW_TELEMETRY):
        produce_all(edge_kafka, topic, [(marker.encode(), marker.encode())] * 20)
    # Something replicated, produced after the raw records, shows the mirror got past them.
    sentinel = str(uuid.uuid4())
    produce_all(
        edge_kafka, topics.SCORES_PAYMENTS, [(sentinel.encode(), _score(sentinel, time.time()))]
    )
    got = _ids(_wait_for(cloud_kafka, mirror.cloud_topic(topics.SCORES_PAYMENTS), sentinel))
    assert sentinel in got
    # The raw topics were on the edge before the mirror started (the stack creates every
    # registry topic), and the mirror creates the cloud topics of everything it lists in one go
    # before the tasks that fill them run: had raw.* been listed, its cloud topics would exist
    # by the time the sentinel arrived. The pause covers raw records polled with the sentinel
    # but committed in the following transaction.
    edge_names = AdminClient(client_config(edge_kafka)).list_topics(timeout=15).topics
    assert {topics.RAW_PAYMENTS, topics.RAW_TELEMETRY} <= set(edge_names)
    time.sleep(2 * TRANSACTION_INTERVAL_MS / 1000 + 1)

    meta = AdminClient(client_config(cloud_kafka)).list_topics(timeout=15)
    names = sorted(meta.topics)
    assert not [n for n in names if "raw" in n], names
    assert mirror.cloud_topic(topics.ANON_PAYMENTS) in names
    needle = marker.encode()
    read = 0
    for name, key, value in _read_everything(cloud_kafka, names):
        read += 1
        assert needle not in key + value, name
    assert read > 1500  # the replicated records above were among what was searched


def _read_everything(
    bootstrap: Target, names: list[str], timeout: float = 90.0
) -> Iterable[tuple[str, bytes, bytes]]:
    """Every record of every partition of ``names`` up to its current end, aborted included."""
    c = Consumer(
        client_config(
            bootstrap,
            {
                "group.id": f"test-{uuid.uuid4()}",
                "enable.auto.commit": False,
                "isolation.level": "read_uncommitted",
            },
        )
    )
    try:
        meta = c.list_topics(timeout=15)
        ends: dict[tuple[str, int], int] = {}
        for name in names:
            for part in meta.topics[name].partitions:
                low, high = c.get_watermark_offsets(TopicPartition(name, part), timeout=10)
                if high > low:
                    ends[(name, part)] = high
        c.assign([TopicPartition(t, p, 0) for t, p in ends])
        deadline = time.monotonic() + timeout
        while ends and time.monotonic() < deadline:
            msg = c.poll(0.5)
            if msg is not None and not msg.error():
                topic = msg.topic()
                assert topic is not None  # a record's, not an error's
                yield topic, msg.key() or b"", msg.value() or b""
                continue
            # Transaction markers take offsets too: a partition is done once the consumer's
            # position has reached its end, whatever the last record's offset.
            for tp in c.position([TopicPartition(t, p) for t, p in ends]):
                if tp.offset >= ends[(tp.topic, tp.partition)]:
                    ends.pop((tp.topic, tp.partition))
        assert not ends, f"could not read to the end of {sorted(ends)}"
    finally:
        c.close()


def _wait_for(bootstrap: Target, topic: str, event_id: str, timeout: float = 90.0) -> list:
    deadline = time.monotonic() + timeout
    seen: list = []
    while time.monotonic() < deadline:
        seen = consume_all(bootstrap, topic, timeout=20, idle=2)
        if event_id in _ids(seen):
            break
    return seen


def test_models_flow_from_the_cloud_to_the_edge(
    mirror: Mirror, edge_kafka: KafkaSettings, cloud_kafka: KafkaSettings
) -> None:
    body = f"model-{uuid.uuid4()}".encode()
    produce_all(cloud_kafka, topics.MODELS, [(b"telemetry", body)])
    deadline = time.monotonic() + 120
    found = False
    while time.monotonic() < deadline and not found:
        msgs = consume_all(edge_kafka, Mirror.edge_topic(topics.MODELS), timeout=15, idle=2)
        found = any(m.value() == body and m.key() == b"telemetry" for m in msgs)
    assert found, "the model never reached cloud.models on the edge"


@pytest.mark.timeout(600 + 2 * OUTAGE_WALL_SECONDS)
def test_backlog_built_while_the_cloud_is_down_arrives_exactly_once(
    mirror: Mirror, stack: Stack, edge_kafka: KafkaSettings, cloud_kafka: KafkaSettings
) -> None:
    """The cloud is stopped while the gateway keeps producing a bounded backlog (24,000
    records whose device time spans ten minutes, over OUTAGE_WALL_SECONDS of wall time);
    after the cloud returns, every record is there once."""
    stack.cloud.stop(timeout=10)
    assert stack.cloud.broker_count() == 0
    total, start, outage_started = 24_000, time.time(), time.monotonic()
    ids = [str(uuid.uuid4()) for _ in range(total)]
    p = _transactional(edge_kafka)
    step = OUTAGE_DEVICE_SECONDS / total
    chunks = max(12, int(OUTAGE_WALL_SECONDS / 5))  # traffic over time, not one burst
    size = -(-total // chunks)
    for k, chunk in enumerate(range(0, total, size)):
        part = ids[chunk : chunk + size]
        _produce_in_transactions(
            p,
            topics.SCORES_TELEMETRY,
            ((i, _score(i, start + (chunk + n) * step)) for n, i in enumerate(part)),
        )
        time.sleep(
            max(0.0, outage_started + (k + 1) * OUTAGE_WALL_SECONDS / chunks - time.monotonic())
        )
    print(
        f"\ncloud down for {time.monotonic() - outage_started:.0f} s while {total} records "
        f"were produced"
    )
    assert mirror.pid() is not None, "the mirror must ride out the outage"
    assert stack.cloud.broker_count() == 0, "the whole backlog is built while the cloud is down"

    stack.cloud.start(jars.kafka_libs(quiet=True), jars.java_binary())
    stack.cloud.wait_healthy(120)
    _arrive_exactly_once(
        cloud_kafka, mirror.cloud_topic(topics.SCORES_TELEMETRY), ids, mirror.wait_healthy
    )


def _arrive_exactly_once(
    cloud: Target, topic: str, ids: list[str], settle: Callable[[float], None]
) -> None:
    """Every one of ``ids`` reaches ``topic`` in the cloud, and none twice: read until all are
    there, ``settle`` (the mirror runs again, so everything it had committed is readable), then
    read to the end, so a record replayed after a restart would be counted twice."""
    with _Reader(cloud, topic) as reader:
        reader.read_until(set(ids), timeout=240)
        settle(120)
        got = reader.read_to_end(timeout=60)
    missing = set(ids) - set(got)
    assert not missing, f"{len(missing)} of {len(ids)} records never arrived"
    dups = {k: v for k, v in got.items() if v > 1 and k in set(ids)}
    assert not dups, f"{len(dups)} records duplicated, e.g. {list(dups.items())[:3]}"


class _Reader:
    """One read_committed consumer over every partition of ``topic``, counting event ids."""

    def __init__(self, bootstrap: Target, topic: str) -> None:
        self.bootstrap, self.topic = bootstrap, topic
        self.got: Counter[str] = Counter()

    def __enter__(self) -> _Reader:
        import json

        self._json = json
        self.c = Consumer(
            client_config(
                self.bootstrap,
                {
                    "group.id": f"test-{uuid.uuid4()}",
                    "enable.auto.commit": False,
                    "isolation.level": "read_committed",
                },
            )
        )
        meta = self.c.list_topics(self.topic, timeout=15).topics[self.topic]
        self.parts = [TopicPartition(self.topic, p) for p in meta.partitions]
        self.c.assign([TopicPartition(self.topic, p.partition, 0) for p in self.parts])
        return self

    def __exit__(self, *exc: object) -> None:
        self.c.close()

    def _take(self, wait: float) -> None:
        for msg in self.c.consume(5000, wait):
            if not msg.error():
                self.got[self._json.loads(value_of(msg))["event_id"]] += 1

    def read_until(self, wanted: set[str], timeout: float) -> Counter[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not wanted <= self.got.keys():
            self._take(0.5)
        return self.got

    def read_to_end(self, timeout: float) -> Counter[str]:
        """Read up to each partition's current end (transaction markers included)."""
        ends = {tp.partition: self.c.get_watermark_offsets(tp, timeout=10)[1] for tp in self.parts}
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._take(0.2)
            done = [
                tp
                for tp in self.c.position(self.parts)
                if tp.offset >= ends[tp.partition] or ends[tp.partition] == 0
            ]
            if len(done) == len(self.parts):
                break
        return self.got


def _gateway_write(edge_id: str) -> AclBindingFilter:
    """The gateway's permission to write its prefixed topics in the cloud."""
    return AclBindingFilter(
        ResourceType.TOPIC,
        f"{edge_id}.",
        ResourcePatternType.PREFIXED,
        f"User:{gateway_user(edge_id)}",
        "*",
        AclOperation.WRITE,
        AclPermissionType.ALLOW,
    )


def _wait_failed(mirror: Mirror, timeout: float) -> dict[str, str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        failed = mirror.failed_tasks()
        if failed:
            return failed
        time.sleep(1)
    return {}


@pytest.mark.timeout(600)
def test_a_task_connect_killed_is_restarted_and_its_records_arrive_exactly_once(
    mirror: Mirror, edge_kafka: KafkaSettings, cloud_kafka: KafkaSettings
) -> None:
    """Connect kills a task for good on an error it does not retry, and the process lives on,
    so the partitions that task copied never cross again; seen here when the gateway's write
    permission in the cloud is withdrawn for a while, and in the field when Connect's own
    exactly-once commit trips ("OffsetStorageWriter is already flushing").

    Restoring the permission brings nothing back; ``heal()`` restarts MirrorMaker, and what
    was produced meanwhile arrives, exactly once."""
    admin = AdminClient(client_config(cloud_kafka))
    for fut in admin.delete_acls([_gateway_write(mirror.edge_id)]).values():
        assert fut.result(30), "the gateway's write permission was not there to withdraw"
    ids = [str(uuid.uuid4()) for _ in range(2000)]
    now = time.time()
    _produce_in_transactions(
        _transactional(edge_kafka), topics.ANON_TELEMETRY, ((i, _score(i, now)) for i in ids)
    )
    try:
        failed = _wait_failed(mirror, 180)
        assert failed, f"no task failed: {mirror.task_states()}"
    finally:
        ensure_acls(cloud_kafka, gateway_acls(mirror.edge_id))
    pid = mirror.pid()
    time.sleep(20)  # the permission is back, the process runs: the task stays dead
    assert mirror.pid() == pid
    assert mirror.failed_tasks(), "the task came back by itself"
    assert set(mirror.heal()) == set(failed)
    assert mirror.pid() not in (None, pid), "MirrorMaker was not restarted"
    # The dead task's status stays FAILED until the new process reports; it is the old one's.
    assert mirror.heal() == {}, "a second look right after a restart restarts nothing"
    _arrive_exactly_once(
        cloud_kafka, mirror.cloud_topic(topics.ANON_TELEMETRY), ids, mirror.wait_healthy
    )
    assert mirror.failed_tasks() == {}


def _jvms(config: Path) -> list[int]:
    """Pids of the MirrorMakers running with ``config``."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if str(config).encode() in cmdline and MAIN_CLASS.encode() in cmdline:
            found.append(int(proc.name))
    return found


def _wait_running(mirror: Mirror, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    states: dict[str, str] = {}
    while time.monotonic() < deadline:
        states = mirror.task_states()
        sources = {k: v for k, v in states.items() if "MirrorSource" in k}
        if len(sources) >= 4 and set(sources.values()) == {"RUNNING"}:  # 2 connectors, 2+ tasks
            return
        time.sleep(1)
    raise AssertionError(f"MirrorMaker did not run: {states}")


def _wait_gone(config: Path, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while _jvms(config) and time.monotonic() < deadline:
        time.sleep(0.5)
    return not _jvms(config)


@pytest.mark.timeout(900)
def test_the_watchdog_stops_mirrormaker_on_a_failed_task_and_its_restart_delivers_exactly_once(
    mirror: Mirror, edge_kafka: KafkaSettings, cloud_kafka: KafkaSettings, tmp_path: Path
) -> None:
    """How a gateway installed with Ansible runs MirrorMaker: ``fleetsentry infra mirror run``
    starts the JVM, and when Connect kills a task it stops the JVM and exits 1, for systemd to
    start it again; signals reach the JVM, and the JVM dies with the watchdog."""
    mirror.stop()
    argv = mirror.argv(jars.kafka_libs(quiet=True), jars.java_binary())
    command = [
        str(Path(sys.executable).with_name("fleetsentry")),
        *("infra", "mirror", "run", "--properties", str(mirror.config_path)),
        *("--interval", "2", "--", *argv),
    ]

    log = tmp_path / "watchdog.log"  # the JVM's output too: a pipe nobody reads would fill

    def watchdog() -> subprocess.Popen[bytes]:
        with log.open("ab") as out:
            return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)

    admin = AdminClient(client_config(cloud_kafka))
    wd = watchdog()
    try:
        _wait_running(mirror, 240)
        for fut in admin.delete_acls([_gateway_write(mirror.edge_id)]).values():
            assert fut.result(30)
        ids = [str(uuid.uuid4()) for _ in range(2000)]
        now = time.time()
        _produce_in_transactions(
            _transactional(edge_kafka), topics.SCORES_PAYMENTS, ((i, _score(i, now)) for i in ids)
        )
        rc = wd.wait(timeout=300)
        err = log.read_text(errors="replace")
    finally:
        ensure_acls(cloud_kafka, gateway_acls(mirror.edge_id))
    assert rc == TASK_FAILED_EXIT, err[-3000:]
    said = [line for line in err.splitlines() if line.startswith(f"MirrorMaker {mirror.edge_id}: ")]
    assert any("/task-MirrorSourceConnector-" in line and " failed: " in line for line in said), (
        said
    )
    assert "does not restart a failed task" in said[-1], said
    assert _wait_gone(mirror.config_path, 30), "the JVM outlived its watchdog"

    wd = watchdog()  # as systemd starts it again
    try:
        _arrive_exactly_once(
            cloud_kafka,
            mirror.cloud_topic(topics.SCORES_PAYMENTS),
            ids,
            lambda timeout: _wait_running(mirror, timeout),
        )
        # systemd stops it with SIGTERM: the JVM gets it and exits as it does alone.
        wd.send_signal(signal.SIGTERM)
        assert wd.wait(timeout=90) == 143
        assert _wait_gone(mirror.config_path, 10)
        # A watchdog killed outright takes its JVM with it.
        wd = watchdog()
        deadline = time.monotonic() + 60
        while not _jvms(mirror.config_path) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _jvms(mirror.config_path), "the watchdog started no JVM"
        wd.kill()
        wd.wait(10)
        assert _wait_gone(mirror.config_path, 60), "the JVM outlived a killed watchdog"
    finally:
        if wd.poll() is None:
            wd.kill()
        for pid in _jvms(mirror.config_path):
            os.kill(pid, signal.SIGKILL)
