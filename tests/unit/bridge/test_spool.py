"""The bridge's outage spool on its own: order, durability, bounds, crash recovery."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from edge.bridge.spool import CURSOR, Spool, SpoolError


def fill(spool: Spool, n: int, start: int = 0) -> None:
    for i in range(start, start + n):
        assert spool.append(
            f"raw.t{i % 2}",
            None if i % 3 == 0 else f"k{i}".encode(),
            f"value-{i}".encode() * (1 + i % 5),
        )
    spool.sync()


def test_records_come_back_in_order_with_topic_key_and_value(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=10**9, segment_bytes=4096)
    fill(spool, 500)
    got = spool.read(10_000)
    assert [(r.topic, r.key, r.value) for r in got] == [
        (
            f"raw.t{i % 2}",
            None if i % 3 == 0 else f"k{i}".encode(),
            f"value-{i}".encode() * (1 + i % 5),
        )
        for i in range(500)
    ]
    assert spool.caught_up() and not spool.empty()
    assert len(list(tmp_path.glob("*.log"))) > 5  # rolled over several segments


def test_only_confirmed_records_leave_and_a_reopened_spool_resumes_at_the_first_gap(
    tmp_path: Path,
) -> None:
    spool = Spool(tmp_path, max_bytes=10**9, segment_bytes=4096)
    fill(spool, 300)
    got = spool.read(300)
    tickets = [r.ticket for r in got]
    # Kafka confirms across partitions in any order; a gap at record 200 holds the cursor.
    order = tickets[:200] + tickets[201:]
    random.Random(1).shuffle(order)
    for t in order:
        spool.confirm(t)
    spool.save()
    spool.close()
    again = Spool(tmp_path, max_bytes=10**9, segment_bytes=4096)
    rest = again.read(1000)
    assert rest[0].value == b"value-200" * (1 + 200 % 5)
    assert len(rest) == 100
    for r in rest:
        again.confirm(r.ticket)
    again.save()
    assert again.empty()
    assert again.size <= 4096


def test_a_record_cut_short_by_a_crash_is_dropped_and_the_rest_kept(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=10**9)
    fill(spool, 10)
    seg = sorted(tmp_path.glob("*.log"))[-1]
    with open(seg, "ab") as fh:  # a crash in the middle of the 11th record
        fh.write(b"\x40\x00\x00\x00\x01\x02")
    spool.close()
    again = Spool(tmp_path, max_bytes=10**9)
    got = again.read(100)
    assert len(got) == 10
    again.append("raw.t0", None, b"after")
    again.sync()
    assert [r.value for r in again.read(100)] == [b"after"]


def test_unsynced_records_are_not_read_and_a_full_spool_refuses(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=2000)
    assert spool.append("raw.t", b"k", b"x" * 100)
    assert spool.read(10) == []  # not durable yet: never handed to Kafka
    spool.sync()
    assert len(spool.read(10)) == 1
    while spool.append("raw.t", b"k", b"x" * 100):
        pass
    assert 1800 < spool.size <= 2000


def test_an_unreadable_cursor_is_a_clear_error(tmp_path: Path) -> None:
    Spool(tmp_path, max_bytes=1000).close()
    (tmp_path / CURSOR).write_text("garbage")
    with pytest.raises(SpoolError, match="cursor"):
        Spool(tmp_path, max_bytes=1000)


def test_an_unusable_directory_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(SpoolError, match="spool directory"):
        Spool(tmp_path / "file" / "spool", max_bytes=1000)
