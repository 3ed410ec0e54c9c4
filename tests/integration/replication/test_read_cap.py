"""A backlog returns to the cloud no faster than ``max_bytes_per_s``, and returns whole, less
exactly what retention deleted on the gateway before it crossed, which is counted: offsets
never copied (deleted before MirrorMaker first ran) and offsets past where it stopped (deleted
during a second outage).

The cap is a quota the edge broker enforces on MirrorMaker's login, counted in the bytes of
the batches as stored on the edge. The test converts what arrived in the cloud into those
bytes (events x the edge log's bytes per event) and compares them with the cap over a
measured interval: a rate the broker keeps, not a speed of this machine.
"""

from __future__ import annotations

import dataclasses
import json
import time
import uuid
from collections import Counter

import pytest
from confluent_kafka import Consumer, Message, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from shared import contracts, topics
from shared.infra.stack import Stack
from shared.kafka_config import KafkaSettings, Target, client_config

pytestmark = pytest.mark.integration

EDGE_ID = "edge-cap"
TOKEN = "tok" + "1" * 13
BACKLOG = 30_000
# The measured interval, from the first backlog record in the cloud.
WINDOW_S = 30.0
# The cap is set so the backlog needs BACKLOG_CAP_SECONDS of it: far longer than WINDOW_S
# plus the burst a fresh quota window lets through (about 10 s of the cap, see quota.py).
BACKLOG_CAP_SECONDS = 100.0
MARGIN = 1.5
# Offsets of partition 0 that retention deletes before MirrorMaker starts.
RETENTION_DELETES = 1000


def _build_backlog(edge: Target, n: int) -> dict[str, tuple[int, int]]:
    """``n`` scores written the way the scorer writes them (lz4, transactions): event id ->
    (partition, offset) the edge acknowledged."""
    p = Producer(
        client_config(
            edge,
            {
                "transactional.id": f"test-{uuid.uuid4()}",
                "linger.ms": 20,
                "compression.type": "lz4",
            },
        )
    )
    p.init_transactions(30)
    ids, now = [str(uuid.uuid4()) for _ in range(n)], time.time()
    acked: dict[str, tuple[int, int]] = {}

    def delivered(err: object, msg: Message) -> None:
        key, part, offset = msg.key(), msg.partition(), msg.offset()
        if err is None and key is not None and part is not None and offset is not None:
            acked[key.decode()] = (part, offset)

    for start in range(0, n, 2500):
        p.begin_transaction()
        for i, eid in enumerate(ids[start : start + 2500], start):
            p.produce(
                topics.SCORES_TELEMETRY,
                key=eid.encode(),
                on_delivery=delivered,
                value=contracts.encode(
                    contracts.Score(
                        event_id=eid,
                        ts=now + i / 1000,
                        stream="telemetry",
                        token=TOKEN,
                        score=0.1 + (i % 97) / 100,
                        threshold=1.0,
                        model_version="m1",
                        anomalous=False,
                    )
                ),
            )
        p.commit_transaction(60)
    assert len(acked) == n
    return acked


def _retention_deletes(edge: Target, partition: int, before: int) -> None:
    """What retention does past the disk budget: the partition's oldest records go."""
    admin = AdminClient(client_config(edge))
    tp = TopicPartition(topics.SCORES_TELEMETRY, partition, before)
    for future in admin.delete_records([tp]).values():
        future.result(30)


class _Arrivals:
    """A read_committed reader of one cloud topic that notes when each batch arrived."""

    def __init__(self, bootstrap: Target, topic: str) -> None:
        self.got: Counter[str] = Counter()
        self.first: float | None = None
        self.marks: list[tuple[float, int]] = []  # (monotonic time, events read so far)
        self.c = Consumer(
            client_config(
                bootstrap,
                {
                    "group.id": f"test-{uuid.uuid4()}",
                    "enable.auto.commit": False,
                    "isolation.level": "read_committed",
                    "auto.offset.reset": "earliest",
                    "topic.metadata.refresh.interval.ms": 1000,
                },
            )
        )
        self.topic = topic
        self.c.subscribe([topic])

    def take(self, wait: float) -> None:
        for msg in self.c.consume(5000, wait):
            value = msg.value()
            if msg.error() or value is None:
                continue
            self.got[json.loads(value)["event_id"]] += 1
        total = sum(self.got.values())
        if total and self.first is None:
            self.first = time.monotonic()
        if self.first is not None:
            self.marks.append((time.monotonic(), total))

    def read_until(self, wanted: set[str], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not wanted <= self.got.keys():
            self.take(0.5)

    def events_within(self, seconds: float) -> int:
        assert self.first is not None
        return max((n for t, n in self.marks if t - self.first <= seconds), default=0)

    def close(self) -> None:
        self.c.close()


@pytest.mark.timeout(900)
def test_a_capped_backlog_crosses_at_the_cap_then_whole_but_what_retention_deleted(
    stack: Stack, edge_kafka: KafkaSettings, cloud_kafka: KafkaSettings
) -> None:
    # The outage: no MirrorMaker runs while the gateway builds its backlog.
    acked = _build_backlog(edge_kafka, BACKLOG)
    ids = set(acked)
    edge_bytes = stack.edge.topic_bytes(topics.SCORES_TELEMETRY)
    per_event = edge_bytes / BACKLOG
    cap = max(1024, int(edge_bytes / BACKLOG_CAP_SECONDS))
    mirror = dataclasses.replace(stack.mirror(EDGE_ID), max_bytes_per_s=cap)
    print(
        f"\nbacklog {BACKLOG} events, {edge_bytes} bytes on the edge ({per_event:.0f} B/event); "
        f"cap {cap} B/s"
    )
    # Past the gateway's budget, retention deletes the oldest records before they crossed.
    _retention_deletes(edge_kafka, 0, RETENTION_DELETES)
    deleted = {
        eid for eid, (part, offset) in acked.items() if part == 0 and offset < RETENTION_DELETES
    }
    before = mirror.backlog()
    assert before[f"{topics.SCORES_TELEMETRY}-0"]["deleted"] == RETENTION_DELETES
    assert sum(b["deleted"] for b in before.values()) == RETENTION_DELETES
    reader = _Arrivals(cloud_kafka, mirror.cloud_topic(topics.SCORES_TELEMETRY))
    try:
        mirror.start()
        mirror.wait_healthy(240)
        deadline = time.monotonic() + 240
        while reader.first is None and time.monotonic() < deadline:
            reader.take(0.5)
        assert reader.first is not None, "nothing of the backlog reached the cloud"
        while time.monotonic() - reader.first < WINDOW_S:
            reader.take(0.5)
        crossed = reader.events_within(WINDOW_S) * per_event
        allowed = cap * WINDOW_S * MARGIN
        print(
            f"first {WINDOW_S:.0f} s: {reader.events_within(WINDOW_S)} events, "
            f"{crossed:.0f} edge bytes ({crossed / WINDOW_S:.0f} B/s); allowed {allowed:.0f}"
        )
        assert crossed <= allowed, (
            f"{crossed:.0f} bytes crossed in {WINDOW_S:.0f} s, over {MARGIN}x the cap of "
            f"{cap} B/s ({allowed:.0f})"
        )
        assert crossed >= cap * WINDOW_S * 0.3, "the capped mirror barely moved"
        during = mirror.backlog()
        assert sum(b["behind"] for b in during.values()) > BACKLOG / 3, during
        # Nothing more is lost while it copies. A partition it has not copied from yet (under
        # the cap it may reach one partition later than the others) still shows what was
        # deleted before it started; one it has copied from shows none.
        assert all(b["deleted"] <= before[k]["deleted"] for k, b in during.items()), during

        # A second outage, during which retention deletes past where MirrorMaker stopped.
        mirror.stop()
        # Where it stopped, in the partition (not 0, cut before it started) with the most
        # left to copy: the cap bounds the bytes in all, not each partition's share, so one
        # partition may already be drained. Its source offsets commit in the transaction that
        # copies the records (exactly-once source), so a partition with none committed yet
        # had nothing copied: it resumes from the oldest record left.
        copied = mirror.copied_up_to()
        ends = {p: max(o for q, o in acked.values() if q == p) for p in (1, 2)}
        part = max(ends, key=lambda p: ends[p] - copied.get((topics.SCORES_TELEMETRY, p), 0))
        resume = copied.get((topics.SCORES_TELEMETRY, part), 0)
        gone = resume + RETENTION_DELETES // 2
        assert gone < ends[part], f"partitions 1 and 2 drained early: {copied}"
        _retention_deletes(edge_kafka, part, gone)
        deleted |= {
            eid for eid, (p, offset) in acked.items() if p == part and resume <= offset < gone
        }
        assert mirror.backlog()[f"{topics.SCORES_TELEMETRY}-{part}"]["deleted"] == gone - resume

        # Restarted without the cap (start removes the quota), it skips the gap and drains.
        mirror = dataclasses.replace(mirror, max_bytes_per_s=0)
        mirror.start()
        reader.read_until(ids - deleted, timeout=240)
        mirror.wait_healthy(60)
        time.sleep(3)  # a record replayed after the catch-up would arrive within a commit or two
        reader.take(1.0)
        after = mirror.backlog()
    finally:
        mirror.stop()
        reader.close()
    missing = ids - set(reader.got)
    dups = {k: v for k, v in reader.got.items() if v > 1}
    print(
        f"history: {BACKLOG} acknowledged on the edge, {len(deleted)} deleted there by "
        f"retention before they crossed, {sum(reader.got.values())} read in the cloud: {len(missing)} missing, "
        f"{len(dups)} duplicated"
    )
    assert missing == deleted, (
        f"{len(missing - deleted)} lost beyond what retention deleted; "
        f"{len(deleted - missing)} deleted records arrived anyway"
    )
    assert not dups, f"{len(dups)} records duplicated, e.g. {list(dups.items())[:3]}"
    # Drained: what is left behind is the producers' last transaction markers.
    assert all(b["behind"] <= 2 and not b["deleted"] for b in after.values()), after
