"""The cloud store against the real cloud Kafka: Parquet by dataset and day, one row per id."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient, NewTopic

from cloud.store.reader import StoreReader
from cloud.store.store import Store
from shared import contracts, topics
from shared.kafka_config import STORE_USER, KafkaSettings, Target, client_config
from tests.support import produce_all

pytestmark = pytest.mark.integration
TOKEN = "tok" + "1" * 13
DAY1, DAY2 = 1_790_000_000.0, 1_790_000_000.0 + 86_400


def _payment(event_id: str, ts: float, vehicle: str = TOKEN) -> bytes:
    return contracts.encode(
        contracts.AnonPayment(
            event_id=event_id,
            ts=ts,
            card_token=TOKEN,
            vehicle_token=vehicle,
            driver_token=TOKEN,
            merchant_id="m-1",
            mcc="5541",
            category="fuel",
            amount=42.0,
            currency="EUR",
            volume_l=None,
            cell="u0yj",
            features={"amount_vs_usual": 1.5},
        )
    )


def _label(event_id: str, ts: float) -> bytes:
    return contracts.encode(
        contracts.Label(
            event_id=event_id,
            stream="payments",
            kind="card_testing",
            episode_id="ep1",
            start_ts=ts,
            end_ts=ts + 1,
        )
    )


def _create(bootstrap: Target, names: list[str]) -> None:
    admin = AdminClient(client_config(bootstrap))
    # Replication factor -1: the cluster's default (3 on three nodes, 1 on one).
    futs = admin.create_topics([NewTopic(n, 3, -1) for n in names])
    for fut in futs.values():
        fut.result(30)


def _run(bootstrap: Target, root: Path, group: str) -> int:
    s = Store(bootstrap, root, group_id=group, batch_records=2000, flush_interval_s=1.0)
    s.start()
    try:
        return s.run(until_idle_s=6.0)
    finally:
        s.close()


def test_store_writes_each_record_once_by_dataset_and_day_across_restarts(
    cloud_kafka: KafkaSettings, cloud_login: Callable[[str], KafkaSettings], tmp_path: Path
) -> None:
    a, b = f"st{uuid.uuid4().hex[:6]}", f"st{uuid.uuid4().hex[:6]}"
    _create(cloud_kafka, [f"{a}.anon.payments", f"{b}.anon.payments"])
    ids = [f"{a}-{i}" for i in range(400)]
    # Day one and day two, and every record twice (a replay), the first 50 also from gateway b.
    first = [(i.encode(), _payment(i, DAY1 if n % 2 else DAY2)) for n, i in enumerate(ids)]
    produce_all(cloud_kafka, f"{a}.anon.payments", first + first)
    produce_all(cloud_kafka, f"{b}.anon.payments", first[:50])
    produce_all(cloud_kafka, f"{a}.anon.payments", [(b"bad", b'{"event_id": 3}')])
    label_id = f"label-{a}"
    produce_all(
        cloud_kafka,
        topics.LABELS,
        [(ids[0].encode(), _label(ids[0], DAY1))] * 2
        + [(label_id.encode(), _label(label_id, DAY1))],
    )
    root, group = tmp_path / "store", f"fleetsentry-store-{a}"
    _run(cloud_login(STORE_USER), root, group)

    reader = StoreReader(root)
    pay = reader.table(topics.ANON_PAYMENTS, ["event_id", "edge_id", "day", "amount"])
    mine = [r for r in pay.to_pylist() if r["event_id"] in set(ids)]
    assert sorted(r["event_id"] for r in mine) == sorted(ids)
    assert {r["day"] for r in mine} == {"2026-09-21", "2026-09-22"}
    assert (root / "anon.payments" / "day=2026-09-21").is_dir()
    assert {r["edge_id"] for r in mine} <= {a, b}
    labels = {lab.event_id for lab in reader.labels()}
    assert {ids[0], label_id} <= labels
    rejected = reader_rejected(root)
    assert any(t == f"{a}.anon.payments" for t in rejected)

    # A restart that re-reads everything (its offsets lost) plus new records: still once each.
    more = [f"{a}-new-{i}" for i in range(30)]
    produce_all(
        cloud_kafka,
        f"{a}.anon.payments",
        first[:100] + [(i.encode(), _payment(i, DAY1)) for i in more],
    )
    (root / "anon.payments" / "day=2026-09-21" / "part-orphan.parquet").write_bytes(b"partial")
    _run(cloud_login(STORE_USER), root, group + "-again")
    assert not (root / "anon.payments" / "day=2026-09-21" / "part-orphan.parquet").exists()
    rows = reader.table(topics.ANON_PAYMENTS, ["event_id"])["event_id"].to_pylist()
    mine_ids = [r for r in rows if r.startswith(f"{a}-")]
    assert sorted(mine_ids) == sorted(ids + more)
    recs = [r for r in reader.anon_records("payments") if r.event_id in set(more)]
    assert len(recs) == 30 and recs[0].features == {"amount_vs_usual": 1.5}


def test_equal_event_ids_from_two_gateways_and_vehicles_are_both_stored(
    cloud_kafka: KafkaSettings, cloud_login: Callable[[str], KafkaSettings], tmp_path: Path
) -> None:
    a, b = f"st{uuid.uuid4().hex[:6]}", f"st{uuid.uuid4().hex[:6]}"
    _create(cloud_kafka, [f"{a}.anon.payments", f"{b}.anon.payments"])
    ids = [f"{a}-{i}" for i in range(20)]
    van_a, van_b = "tok" + "a" * 13, "tok" + "b" * 13
    produce_all(
        cloud_kafka, f"{a}.anon.payments", [(i.encode(), _payment(i, DAY1, van_a)) for i in ids]
    )
    # Another gateway's vehicle happens to (or means to) use the same ids; and a's vehicle
    # roams to gateway b, which replicates some of its events again.
    produce_all(
        cloud_kafka,
        f"{b}.anon.payments",
        [(i.encode(), _payment(i, DAY1, van_b)) for i in ids]
        + [(i.encode(), _payment(i, DAY1, van_a)) for i in ids[:5]],
    )
    root = tmp_path / "store"
    _run(cloud_login(STORE_USER), root, f"fleetsentry-store-{a}")
    rows = StoreReader(root).table(topics.ANON_PAYMENTS, ["event_id", "vehicle_token"])
    mine = sorted(
        (r["event_id"], r["vehicle_token"]) for r in rows.to_pylist() if r["event_id"] in set(ids)
    )
    assert mine == sorted([(i, van_a) for i in ids] + [(i, van_b) for i in ids]), (
        f"{len(mine)} of {2 * len(ids)} rows stored"
    )


def reader_rejected(root: Path) -> list[str]:
    import pyarrow.dataset as pads

    folder = root / "rejected"
    if not folder.is_dir():
        return []
    return pads.dataset(folder, format="parquet").to_table(columns=["topic"])["topic"].to_pylist()
