"""The enricher's dedup window and PII selection, without a broker."""

from __future__ import annotations

from edge.enricher.dedup import DedupWindow, event_key
from edge.enricher.expiry import KeyClock
from shared import streams
from shared.contracts import Payment
from shared.features.anonymize import vault_of


def test_window_drops_repeats_and_forgets_the_oldest_deltas() -> None:
    w = DedupWindow(limit=4)
    assert all(w.check_and_add(e) for e in ["a", "b", "c"])
    assert not w.check_and_add("a")
    seq, ids, expired = w.seal()
    assert (seq, ids, expired) == (0, ["a", "b", "c"], [])
    assert w.check_and_add("d") and w.check_and_add("e")
    seq, ids, expired = w.seal()
    assert (seq, ids, expired) == (1, ["d", "e"], [0])  # 5 > 4: the first delta goes
    assert w.check_and_add("a")  # forgotten with its delta
    assert not w.check_and_add("e")
    assert w.seal()[0] == 2
    assert w.seal() == (None, [], [])  # an empty batch writes no delta


def test_restored_window_matches_the_written_one() -> None:
    w = DedupWindow(limit=100)
    w.load(3, ["x", "y"])
    w.load(4, ["z"])
    assert not w.check_and_add("y") and w.check_and_add("w")
    assert w.seal()[0] == 5


def test_the_vault_items_cover_every_identifying_field() -> None:
    p = Payment(
        event_id="e",
        ts=1.0,
        vin="1HGCM82633A004352",
        driver_id="D-1",
        driver_name="Ada",
        card_number="4111111111111111",
        cardholder="ADA",
        merchant_id="M",
        merchant_name="Fuel",
        mcc="5542",
        category="fuel",
        amount=1.0,
        currency="EUR",
        lat=1.0,
        lon=1.0,
    )
    kinds = {k: (v, person) for k, v, person in vault_of(streams.PAYMENTS)(p)}
    assert kinds["vin"] == ("1HGCM82633A004352", None)
    assert kinds["card"] == ("4111111111111111", "D-1")
    assert {"driver", "driver_name", "cardholder"} <= set(kinds)


def test_two_vehicles_may_use_the_same_event_id_and_old_windows_still_load() -> None:
    w = DedupWindow(limit=100)
    w.load(0, ["e-1"])  # written before the vehicle was part of the key
    assert w.check_and_add(event_key("1HGCM82633A004352", "e-1"))
    assert w.check_and_add(event_key("2HGCM82633A004352", "e-1"))
    assert not w.check_and_add(event_key("1HGCM82633A004352", "e-1"))
    assert w.seal()[1] == ["1HGCM82633A004352/e-1", "2HGCM82633A004352/e-1"]


def test_keys_expire_oldest_first_a_bounded_number_at_a_time() -> None:
    clock = KeyClock(ttl_s=10.0)
    clock.touch(["c:1", "c:2", "d:1"], now=100.0)
    clock.touch(["v:1"], now=105.0)
    clock.touch(["c:1"], now=108.0)  # written again: young again
    assert not clock.due(109.0) and clock.expire(109.0, limit=10) == []
    assert clock.due(111.0)
    assert clock.expire(111.0, limit=1) == ["c:2"]
    assert clock.expire(111.0, limit=10) == ["d:1"]
    assert clock.expire(116.0, limit=10) == ["v:1"] and len(clock) == 1
    restored = KeyClock(ttl_s=10.0)
    restored.load({"b": 50.0, "a": 40.0, "c": 60.0})
    assert restored.expire(65.0, limit=10) == ["a", "b"]


def test_past_the_cap_the_least_recently_written_keys_go_first() -> None:
    clock = KeyClock(ttl_s=1000.0, max_keys=3)
    clock.touch(["a", "b", "c"], now=1.0)
    clock.touch(["a"], now=2.0)
    assert not clock.due(3.0)
    clock.touch(["d", "e"], now=3.0)
    assert clock.due(3.0)
    assert clock.expire(3.0, limit=1) == ["b"]
    assert clock.expire(3.0, limit=10) == ["c"] and len(clock) == 3
