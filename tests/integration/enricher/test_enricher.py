"""The enricher against the real edge Kafka: exactly once, no PII in anon.*, crash-safe."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import msgspec
import pytest
from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Producer,
    TopicPartition,
)
from firmware_sim import Fleet, SimSettings

from edge import config as edge_config
from edge.enricher import Enricher
from edge.enricher.errors import EnricherError
from edge.transactions import Transactions, Watchdog
from edge.vault.setup import fleet_tokenizer, open_vault
from shared import contracts, streams, topics
from shared.config import convert
from shared.kafka_config import KafkaSettings, Target, client_config
from shared.kafka_write import produce
from tests.support import (
    consume_all,
    kafka_table,
    produce_all,
    producer,
    refusing_large_records,
    value_of,
)

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[3]


def sim_events(tag: str, vehicles: int, duration_s: int, seed: int) -> list[msgspec.Struct]:
    """Simulator events with event ids made unique to this test (topics are shared)."""
    fleet = Fleet(
        SimSettings(vehicles=vehicles, duration_s=duration_s, seed=seed, payment_rate=40.0)
    )
    out: list[msgspec.Struct] = []
    for topic, payload in fleet.events():
        spec = streams.by_mqtt_suffix(topic.rsplit("/", 1)[-1])
        assert spec is not None
        ev = contracts.decode(spec.event, payload)
        assert isinstance(ev, contracts.Event)
        out.append(msgspec.structs.replace(ev, event_id=f"{tag}-{ev.event_id}"))
    return out


def produce_raw(
    bootstrap: Target, events: Sequence[msgspec.Struct], duplicate_every: int = 0
) -> None:
    """Write events to raw.* keyed by VIN, re-sending some (as a redelivering bridge would)."""
    by_topic: dict[str, list[tuple[bytes, bytes]]] = {}
    for i, ev in enumerate(events):
        assert isinstance(ev, contracts.Telemetry | contracts.Payment)  # what raw.* carries
        spec = streams.TELEMETRY if isinstance(ev, contracts.Telemetry) else streams.PAYMENTS
        rec = (ev.vin.encode(), contracts.encode(ev))
        copies = 2 if duplicate_every and i % duplicate_every == 0 else 1
        by_topic.setdefault(spec.raw_topic, []).extend([rec] * copies)
    for topic, recs in by_topic.items():
        produce_all(bootstrap, topic, recs)


def pii_values(events: list[msgspec.Struct]) -> set[bytes]:
    values: set[str] = set()
    for ev in events:
        values.update({ev.vin, ev.driver_id})  # type: ignore[attr-defined]
        if isinstance(ev, contracts.Payment):
            values.update({ev.card_number, ev.driver_name, ev.cardholder})
        raw = json.loads(contracts.encode(ev))
        # Coordinates as the vehicle sent them. One that happens to end after 1-3 decimals
        # ("21.09") is no exact fix and matches ordinary readings, so those are left out.
        for coord in (json.dumps(raw["lat"]), json.dumps(raw["lon"])):
            if len(coord.partition(".")[2]) >= 4:
                values.add(coord)
    return {v.encode() for v in values if len(v) >= 5}


def settings(bootstrap: Target, tmp: Path, batch: int = 2000) -> dict[str, object]:
    return {
        "edge_id": f"t{uuid.uuid4().hex[:10]}",
        "data_dir": str(tmp),
        "kafka": kafka_table(bootstrap),
        "metrics": {"base_port": 0},
        "enricher": {
            "group": f"enricher-{uuid.uuid4().hex[:10]}",
            "batch_size": batch,
            "batch_wait_ms": 50.0,
        },
    }


def read_anon(
    bootstrap: Target, ids: set[str], timeout: float = 90.0, idle: float = 3.0
) -> Counter[str]:
    """Count, per event id of ours, the committed anon records (all of anon.* is read).

    Reads until every id was seen, then ``idle`` seconds more so late duplicates show up.
    """
    c = Consumer(
        client_config(
            bootstrap,
            {
                "group.id": f"t-{uuid.uuid4()}",
                "enable.auto.commit": False,
                "isolation.level": "read_committed",
            },
        )
    )
    parts = [
        TopicPartition(t, p, OFFSET_BEGINNING)
        for t in (topics.ANON_TELEMETRY, topics.ANON_PAYMENTS)
        for p in range(3)
    ]
    c.assign(parts)
    seen: Counter[str] = Counter()
    deadline = time.monotonic() + timeout
    complete_at: float | None = None
    try:
        while time.monotonic() < deadline:
            if complete_at is not None and time.monotonic() - complete_at > idle:
                break
            for msg in c.consume(num_messages=5000, timeout=0.5):
                if msg.error():
                    continue
                eid = msgspec.json.decode(value_of(msg), type=_EventId).event_id
                if eid in ids:
                    seen[eid] += 1
            if complete_at is None and len(seen) == len(ids):
                complete_at = time.monotonic()
    finally:
        c.close()
    return seen


class _EventId(msgspec.Struct):
    event_id: str


def committed_offsets(bootstrap: Target, group: str) -> int:
    """The sum of the group's committed raw.* offsets: grows with every committed batch."""
    c = Consumer(client_config(bootstrap, {"group.id": group, "enable.auto.commit": False}))
    try:
        parts = [TopicPartition(s.raw_topic, p) for s in streams.all_streams() for p in range(3)]
        return sum(max(0, tp.offset) for tp in c.committed(parts, timeout=20))
    except KafkaException:  # the coordinator is still loading the group: nothing to see yet
        return 0
    finally:
        c.close()


def test_exactly_once_without_pii(edge_kafka: KafkaSettings, tmp_path: Path) -> None:
    tag = uuid.uuid4().hex[:8]
    events = sim_events(tag, vehicles=8, duration_s=240, seed=11)
    assert any(isinstance(e, contracts.Payment) for e in events)
    produce_raw(edge_kafka, events, duplicate_every=7)
    cfg = convert(settings(edge_kafka, tmp_path), edge_config.EdgeConfig)
    vault = open_vault(cfg)
    enricher = Enricher(cfg, vault, fleet_tokenizer(cfg))
    enricher.start()
    try:
        deadline = time.monotonic() + 90
        while enricher.produced < len(events) and time.monotonic() < deadline:
            enricher.step()
        assert enricher.duplicates >= len(events) // 7
    finally:
        enricher.close()
    ids = {e.event_id for e in events}  # type: ignore[attr-defined]
    seen = read_anon(edge_kafka, ids)
    assert set(seen) == ids and set(seen.values()) == {1}

    pii = pii_values(events)
    for topic in (topics.ANON_TELEMETRY, topics.ANON_PAYMENTS):
        for msg in consume_all(edge_kafka, topic, idle=2.0):
            blob = (msg.key() or b"") + msg.value()
            leaked = [v for v in pii if v in blob]
            assert not leaked, (topic, leaked[:3])
    # The vault turns an anon token back into the VIN, on the gateway only.
    first = next(e for e in events if isinstance(e, contracts.Payment))
    tok = fleet_tokenizer(cfg)
    assert vault.reveal(tok.token("vin", first.vin), "test") == first.vin
    assert vault.reveal(tok.token("card", first.card_number), "test") == first.card_number
    vault.close()


def test_crash_at_any_point_still_exactly_once(edge_kafka: KafkaSettings, tmp_path: Path) -> None:
    tag = uuid.uuid4().hex[:8]
    events = sim_events(tag, vehicles=15, duration_s=200, seed=23)
    produce_raw(edge_kafka, events, duplicate_every=11)
    conf = tmp_path / "edge.toml"
    s = settings(edge_kafka, tmp_path, batch=200)
    conf.write_text(toml(s))
    ids = {e.event_id for e in events}  # type: ignore[attr-defined]
    rng = random.Random(5)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    argv = [sys.executable, "-m", "edge.cli", "enricher", "--config", str(conf)]
    group = str(s["enricher"]["group"])  # type: ignore[index]
    mid_run_kills = 0
    for _ in range(3):
        before = committed_offsets(edge_kafka, group)
        proc = subprocess.Popen(
            argv, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        # Kill once this run has committed a batch, at a random moment after that: in the
        # middle of consuming, computing, producing or committing the next one.
        deadline = time.monotonic() + 60
        progressed = False
        while proc.poll() is None and time.monotonic() < deadline:
            if committed_offsets(edge_kafka, group) > before:
                progressed = True
                break
            time.sleep(0.2)
        time.sleep(rng.uniform(0.0, 1.0))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            mid_run_kills += progressed
        proc.wait(10)
    assert mid_run_kills >= 1
    proc = subprocess.Popen(
        argv, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        seen = read_anon(edge_kafka, ids, timeout=150)
    finally:
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=30)
    assert set(seen) == ids, f"{len(ids - set(seen))} missing; stderr: {err.decode()[-2000:]}"
    dups = {k: n for k, n in seen.items() if n > 1}
    assert not dups, f"{len(dups)} events duplicated"
    assert proc.returncode == 0, err.decode()[-2000:]


def toml(s: dict[str, object]) -> str:
    lines = []
    tables = {k: v for k, v in s.items() if isinstance(v, dict)}
    for k, v in s.items():
        if not isinstance(v, dict):
            lines.append(f"{k} = {json.dumps(v)}")
    for name, table in tables.items():
        lines.append(f"[{name}]")
        lines += [f"{k} = {json.dumps(v)}" for k, v in table.items()]
    return "\n".join(lines) + "\n"


def raw_ends(bootstrap: Target) -> int:
    """The sum of raw.*'s end offsets: what a caught-up enricher group has committed."""
    c = Consumer(client_config(bootstrap, {"group.id": f"t-{uuid.uuid4()}"}))
    try:
        return sum(
            c.get_watermark_offsets(TopicPartition(s.raw_topic, p), timeout=10)[1]
            for s in streams.all_streams()
            for p in range(3)
        )
    finally:
        c.close()


def catch_up(enricher: Enricher, bootstrap: Target, timeout: float = 90.0) -> None:
    """Run batches until everything in raw.* so far is committed (other tests' records too)."""
    end, group = raw_ends(bootstrap), enricher.settings.group
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if enricher.step() == 0 and committed_offsets(bootstrap, group) >= end:
            return
    raise AssertionError(f"the enricher did not catch up with raw.* in {timeout:.0f}s")


def run_enricher(cfg: edge_config.EdgeConfig) -> Enricher:
    """Start an enricher, run batches until it caught up with raw.*, close it."""
    vault = open_vault(cfg)
    enricher = Enricher(cfg, vault, fleet_tokenizer(cfg))
    enricher.start()
    try:
        catch_up(enricher, cfg.kafka)
    finally:
        enricher.close()
        vault.close()
    return enricher


def produce_to_partition(bootstrap: Target, events: list[contracts.Telemetry]) -> None:
    """Write telemetry keyed by VIN, all into partition 0 (where two vehicles can meet)."""
    p = producer(bootstrap)
    for ev in events:
        p.produce(
            topics.RAW_TELEMETRY, key=ev.vin.encode(), value=contracts.encode(ev), partition=0
        )
    assert p.flush(30) == 0


def test_a_vehicle_reusing_anothers_event_ids_suppresses_nothing(
    edge_kafka: KafkaSettings, tmp_path: Path
) -> None:
    tag = uuid.uuid4().hex[:8]
    telemetry = [
        e
        for e in sim_events(tag, vehicles=2, duration_s=20, seed=31)
        if isinstance(e, contracts.Telemetry)
    ]
    vin_a, vin_b = sorted({e.vin for e in telemetry})
    victim = [e for e in telemetry if e.vin == vin_a]
    # The attacker copies the victim's event ids onto its own frames, in the same partition.
    attacker = [
        msgspec.structs.replace(e, event_id=v.event_id)
        for e, v in zip((e for e in telemetry if e.vin == vin_b), victim, strict=False)
    ]
    assert len(attacker) >= 10
    produce_to_partition(edge_kafka, [*victim, *attacker, *victim[:5]])  # and redeliveries
    cfg = convert(settings(edge_kafka, tmp_path), edge_config.EdgeConfig)
    run_enricher(cfg)
    seen = read_anon(edge_kafka, {e.event_id for e in victim})
    copied = {e.event_id for e in attacker}
    lost = [eid for eid in copied if seen[eid] < 2]
    assert not lost, f"{len(lost)} of {len(copied)} victim events vanished behind the attacker's"
    assert all(n == 1 for eid, n in seen.items() if eid not in copied)
    assert max(seen.values()) == 2  # the victim's redelivered frames were still dropped


def made_up_payments(tag: str, vin: str, n: int) -> list[contracts.Payment]:
    """One vehicle paying with a new driver id and card number every time."""
    now = time.time()
    return [
        contracts.Payment(
            event_id=f"{tag}-fake-{i}",
            ts=now,
            vin=vin,
            driver_id=f"{tag}-drv-{i}",
            driver_name="Nobody",
            card_number=f"4{i:015d}",
            cardholder="NOBODY",
            merchant_id="M-1",
            merchant_name="Fuel",
            mcc="5542",
            category="fuel",
            amount=20.0,
            currency="EUR",
            lat=48.1,
            lon=11.5,
        )
        for i in range(n)
    ]


def test_state_of_made_up_drivers_and_cards_expires_live_in_the_changelog_and_the_vault(
    edge_kafka: KafkaSettings, tmp_path: Path
) -> None:
    tag, ttl_s, n = uuid.uuid4().hex[:8], 6.0, 1500
    s = settings(edge_kafka, tmp_path)
    s["enricher"]["state_ttl_s"] = ttl_s  # type: ignore[index]
    s["vault"] = {"retention_days": ttl_s / 86_400}
    cfg = convert(s, edge_config.EdgeConfig)
    frames = [
        e
        for e in sim_events(tag, vehicles=1, duration_s=20, seed=41)
        if isinstance(e, contracts.Telemetry)
    ]
    flood = made_up_payments(tag, frames[0].vin, n)
    tok = fleet_tokenizer(cfg)
    flood_keys = {f"c:{tok.token('card', p.card_number)}" for p in flood} | {
        f"d:{tok.token('driver', p.driver_id)}" for p in flood
    }
    produce_raw(edge_kafka, flood)
    vault = open_vault(cfg)
    enricher = Enricher(cfg, vault, tok)
    enricher.start()
    try:
        catch_up(enricher, edge_kafka)
        peak = len(flood_keys & set(enricher.state))
        assert peak == 2 * n, peak  # each payment added two states (its card, its driver)
        time.sleep(ttl_s + 0.5)  # nothing written for longer than the TTL
        # Then an ordinary frame arrives, and the flood's states and vault values go.
        produce_raw(edge_kafka, [msgspec.structs.replace(frames[-1], ts=time.time())])
        catch_up(enricher, edge_kafka)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and vault.count() > 2:
            enricher.step()
        live = set(enricher.state)
        leaked = len(live & flood_keys)
        assert leaked == 0, f"{leaked} of the flood's {len(flood_keys)} states still live"
        assert len(live) <= 2, len(live)
        assert vault.count() <= 2, f"{vault.count()} vault values left"
    finally:
        enricher.close()
        vault.close()
    # A restart restores from the changelog: the tombstones keep the flood's states out.
    vault = open_vault(cfg)
    again = Enricher(cfg, vault, tok)
    again.start()
    try:
        restored = len(set(again.state) & flood_keys)
        assert restored == 0, f"a restart brought back {restored} of the flood's states"
        assert set(again.state) <= live
    finally:
        again.close()
        vault.close()


def test_a_batch_the_broker_refuses_is_aborted_rewound_and_written_once_later(
    edge_kafka: KafkaSettings, tmp_path: Path
) -> None:
    """anon.telemetry refuses the records for a while: every batch in that while is aborted
    and consumed again (states rewound to the last commit, the same process going on); once the
    topic takes them, each event reaches anon.* exactly once."""
    tag = uuid.uuid4().hex[:8]
    events = sim_events(tag, vehicles=4, duration_s=60, seed=21)
    produce_raw(edge_kafka, events)
    cfg = convert(settings(edge_kafka, tmp_path, batch=500), edge_config.EdgeConfig)
    vault = open_vault(cfg)
    enricher = Enricher(cfg, vault, fleet_tokenizer(cfg))
    enricher.start()
    try:
        with refusing_large_records(edge_kafka, topics.ANON_TELEMETRY):
            deadline = time.monotonic() + 60
            while enricher._txn.aborted < 2 and time.monotonic() < deadline:
                enricher.step()
            assert enricher._txn.aborted >= 2, "no batch was aborted"
            # Batches without our telemetry (payments, other tests' events it has seen) commit;
            # none of our telemetry is in anon.telemetry while it refuses the records.
            ours = {e.event_id for e in events if isinstance(e, contracts.Telemetry)}
            assert not read_anon(edge_kafka, ours, timeout=5.0)
        catch_up(enricher, edge_kafka)
    finally:
        enricher.close()
        vault.close()
    ids = {e.event_id for e in events}  # type: ignore[attr-defined]
    seen = read_anon(edge_kafka, ids)
    assert set(seen) == ids and set(seen.values()) == {1}


def test_a_record_written_after_the_broker_refused_one_aborts_the_batch_not_the_service(
    edge_kafka: KafkaSettings,
) -> None:
    """The broker's refusal can reach the producer while the batch is still being written; the
    next ``produce`` then fails with ``_STATE`` (the transaction may only be aborted). That
    batch is aborted and rewound like any refused one, and the batches after it commit."""
    tag = uuid.uuid4().hex[:8]
    rewinds: list[int] = []
    txn_producer = Producer(client_config(edge_kafka, {"transactional.id": f"refused-{tag}"}))
    txn_producer.init_transactions(30)
    consumer = Consumer(client_config(edge_kafka, {"group.id": f"refused-{tag}"}))
    consumer.assign([TopicPartition(topics.RAW_TELEMETRY, 0, OFFSET_BEGINNING)])
    txn = Transactions(
        "enricher",
        txn_producer,
        consumer,
        Watchdog("enricher"),
        rewind=lambda: rewinds.append(1),
        fatal=EnricherError,
    )
    refused: list[KafkaError] = []

    def on_delivery(err: KafkaError | None, _msg: object) -> None:
        if err is not None:
            refused.append(err)

    def refused_then_more() -> tuple[None, list[TopicPartition]]:
        txn_producer.produce(
            topics.ANON_TELEMETRY, b"x" * 4096, tag.encode(), on_delivery=on_delivery
        )
        deadline = time.monotonic() + 30
        while not refused and time.monotonic() < deadline:
            txn_producer.poll(0.1)
        assert refused, "the broker took a record over the topic's max.message.bytes"
        produce(txn_producer, topics.ANON_TELEMETRY, b"small", tag.encode())
        return None, []

    def small() -> tuple[str, list[TopicPartition]]:
        produce(txn_producer, topics.ANON_TELEMETRY, b"small", tag.encode())
        return "committed", []

    try:
        with refusing_large_records(edge_kafka, topics.ANON_TELEMETRY):
            assert txn.run(refused_then_more) is None
        assert (txn.aborted, rewinds) == (1, [1])
        # The Kafka client can refuse the first commit after such an abort (the refused
        # record's sequence number is skipped): that batch is aborted too, then they commit.
        assert "committed" in [txn.run(small) for _ in range(3)]
    finally:
        consumer.close()
        txn_producer.flush(10)
