"""raw.* records deleted by retention before the enricher read them are counted, not hidden.

The disk plan bounds raw.* by bytes: an enricher further behind than a partition keeps loses
what retention deletes first. Here the deletion is made exact with DeleteRecords (what
retention does, at a known offset) while the enricher is stopped; the restarted enricher
counts exactly the records it never saw."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient

from edge import config as edge_config
from edge import metrics
from edge.enricher import Enricher
from edge.vault.setup import fleet_tokenizer, open_vault
from shared import streams
from shared.config import convert
from shared.kafka_config import KafkaSettings, Target, client_config
from tests.integration.enricher.test_enricher import produce_raw, settings, sim_events

pytestmark = pytest.mark.integration
RAW = [(s.raw_topic, p) for s in streams.all_streams() for p in range(3)]


def ends(target: Target) -> dict[tuple[str, int], int]:
    c = Consumer(client_config(target, {"group.id": f"w-{uuid.uuid4().hex[:8]}"}))
    try:
        return {tp: c.get_watermark_offsets(TopicPartition(*tp), timeout=10)[1] for tp in RAW}
    finally:
        c.close()


def run_until(enricher: Enricher, consumed: int, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while enricher.consumed < consumed and time.monotonic() < deadline:
        enricher.step()
    assert enricher.consumed >= consumed, (enricher.consumed, consumed)


def test_records_deleted_before_they_were_read_are_counted(
    edge_kafka: KafkaSettings, tmp_path: Path
) -> None:
    tag = uuid.uuid4().hex[:8]
    conf = convert(settings(edge_kafka, tmp_path, batch=500), edge_config.EdgeConfig)
    first = sim_events(tag + "a", vehicles=6, duration_s=60, seed=3)
    produce_raw(edge_kafka, first)
    vault = open_vault(conf)
    enricher = Enricher(conf, vault, fleet_tokenizer(conf))
    enricher.start()
    try:
        run_until(enricher, sum(ends(edge_kafka).values()))
    finally:
        enricher.close()
    assert enricher.skipped == 0

    before = ends(edge_kafka)
    produce_raw(edge_kafka, sim_events(tag + "b", vehicles=6, duration_s=60, seed=4))
    after = ends(edge_kafka)
    cut = {tp: before[tp] + (after[tp] - before[tp]) // 2 for tp in RAW}
    admin = AdminClient(client_config(edge_kafka))
    futures = admin.delete_records(
        [TopicPartition(t, p, cut[(t, p)]) for t, p in RAW if cut[(t, p)] > before[(t, p)]]
    )
    for fut in futures.values():
        fut.result(30)
    deleted = sum(cut[tp] - before[tp] for tp in RAW)
    assert deleted > 100

    counted_before = sum(
        metrics.RECORDS_EXPIRED_UNREAD.labels(service="enricher", topic=t)._value.get()
        for t in {t for t, _ in RAW}
    )
    restarted = Enricher(conf, vault, fleet_tokenizer(conf))
    restarted.start()
    try:
        run_until(restarted, sum(after[tp] - cut[tp] for tp in RAW))
    finally:
        restarted.close()
        vault.close()
    counted = (
        sum(
            metrics.RECORDS_EXPIRED_UNREAD.labels(service="enricher", topic=t)._value.get()
            for t in {t for t, _ in RAW}
        )
        - counted_before
    )
    print(f"deleted before read {deleted}, counted {restarted.skipped}")
    assert restarted.skipped == deleted == counted
