"""anonymize_batch gives, byte for byte, what anonymize gives event by event.

The enricher anonymizes whole batches (vectorised, payments reading the vehicle's state as of
their place in the batch); the cloud trainer and the shipped baseline models use the scalar
path. Any difference in one bit of one feature would be a silent skew
between training and serving, so these tests compare encoded records and encoded states.
"""

from __future__ import annotations

import random

import msgspec
from firmware_sim import Fleet, SimSettings
from hypothesis import given, settings
from hypothesis import strategies as st

from shared import streams
from shared.contracts import Payment, Telemetry, decode, encode
from shared.features import FeatureState, anonymize, encode_state
from shared.features.batch import anonymize_batch, sequential_batch
from shared.features.state import KeyState
from shared.streams import StreamSpec
from tests.unit.test_features import TOK, payment, telemetry

Items = list[tuple[StreamSpec, msgspec.Struct]]


def sim_items(seed: int, vehicles: int = 40, duration_s: float = 240.0) -> Items:
    fleet = Fleet(
        SimSettings(vehicles=vehicles, duration_s=duration_s, seed=seed, payment_rate=200.0)
    )
    items: Items = []
    for topic, payload in fleet.events():
        spec = streams.by_mqtt_suffix(topic.rsplit("/", 1)[-1])
        assert spec is not None
        items.append((spec, decode(spec.event, payload)))
    return items


def spec_of(event: msgspec.Struct) -> StreamSpec:
    return streams.TELEMETRY if isinstance(event, Telemetry) else streams.PAYMENTS


def sequential(items: Items, state: FeatureState) -> tuple[list[bytes], dict[str, bytes]]:
    records: list[bytes] = []
    for spec, event in items:
        result = anonymize(spec, event, state, TOK)
        state.apply(result.updates)
        records.append(encode(result.record))
    return records, encoded(state)


def batched(
    items: Items, state: FeatureState, sizes: list[int]
) -> tuple[list[bytes], dict[str, bytes]]:
    records: list[bytes] = []
    i = 0
    for size in sizes:
        chunk = items[i : i + size]
        i += size
        result = anonymize_batch(chunk, state, TOK)
        out = [encode(r) for r in result.records]
        assert len(out) == len(chunk)
        # The enricher's path: keys and bytes without record objects, from a fresh batch.
        wire = list(anonymize_batch(chunk, state, TOK).wire)
        assert [data for _, data in wire] == out
        assert [key for key, _ in wire] == [
            getattr(r, "card_token", None) or r.vehicle_token  # type: ignore[attr-defined]
            for r in map(decode_anon, out, chunk)
        ]
        state.apply(result.updates)
        records += out
    assert i >= len(items)
    return records, encoded(state)


def decode_anon(data: bytes, item: tuple[StreamSpec, msgspec.Struct]) -> msgspec.Struct:
    return decode(item[0].anon_event, data)


def encoded(state: FeatureState) -> dict[str, bytes]:
    return {key: encode_state(value) for key, value in state.items()}


def chunk_sizes(total: int, rng: random.Random, top: int) -> list[int]:
    sizes: list[int] = []
    while sum(sizes) < total:
        sizes.append(rng.randint(1, top))
    return sizes


def test_seeded_fleet_batches_match_event_by_event() -> None:
    items = sim_items(seed=5)
    assert sum(1 for s, _ in items if s is streams.PAYMENTS) > 20  # payments interleave
    expect = sequential(items, FeatureState())
    rng = random.Random(3)
    for top in (len(items), 2000, 300, 40):
        assert batched(items, FeatureState(), chunk_sizes(len(items), rng, top)) == expect, top


def test_batches_continue_a_restored_state() -> None:
    items = sim_items(seed=9, vehicles=25, duration_s=180.0)
    head, tail = items[:1500], items[1500:]
    warm = FeatureState()
    sequential(head, warm)
    expect = sequential(tail, FeatureState(dict(warm.items())))
    got = batched(tail, FeatureState(dict(warm.items())), [len(tail)])
    assert got == expect


def test_odd_frames_match() -> None:
    """Out-of-order and repeated frames, stuck sensors, unknown models, wild values, a
    payment before its vehicle's first frame, a state of the wrong kind under a key."""
    rng = random.Random(11)
    events: list[msgspec.Struct] = [payment(0, ts=1_700_000_000.0)]
    for i in range(60):
        vin = f"VIN{i % 4:014d}"
        over: dict[str, object] = {"vin": vin, "ts": 1_700_000_000.0 + i // 4 + rng.random()}
        if i % 7 == 0:
            over["ts"] = 1_700_000_000.0 + rng.uniform(-30, 30)  # late or early
        if i % 5 == 0:
            over["model"] = "NoSuchModel"
        if i % 11 == 0:
            over.update(coolant_c=1e9, gear=10**12, tyre_fl_kpa=-5e7, speed_kmh=0.0, rpm=0.0)
        if i % 3 == 0:
            over["coolant_c"] = 90.0  # a stuck sensor repeats its value
        events.append(telemetry(i, **over))
        if i % 9 == 4:
            events.append(
                payment(
                    i,
                    vin=vin,
                    ts=float(over["ts"]) + 0.5,  # type: ignore[arg-type]
                    amount=rng.choice([0.5, 30.0, 900.0]),
                )
            )
    events.append(events[3])  # the same frame again
    items: Items = [(spec_of(e), e) for e in events]
    rogue: dict[str, KeyState] = {}
    first = anonymize(streams.PAYMENTS, events[0], FeatureState(), TOK)
    # A card state where a vehicle state belongs must read as "no state", in both paths.
    vehicle_key = next(iter(anonymize(streams.TELEMETRY, events[1], FeatureState(), TOK).updates))
    rogue[vehicle_key] = next(iter(first.updates.values()))
    expect = sequential(items, FeatureState(rogue))
    for sizes in ([len(items)], [9] * 8, [30, 1, 40]):
        assert batched(items, FeatureState(rogue), sizes) == expect, sizes


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 5), st.floats(-5, 5), st.floats(0, 300), st.booleans()),
        min_size=1,
        max_size=60,
    ),
    st.integers(1, 60),
)
def test_random_frames_match(frames: list[tuple[int, float, float, bool]], size: int) -> None:
    events: list[msgspec.Struct] = []
    for i, (vehicle, dt, coolant, pay) in enumerate(frames):
        vin = f"VIN{vehicle:014d}"
        ts = 1_700_000_000.0 + i + dt
        events.append(telemetry(i, vin=vin, ts=ts, coolant_c=coolant, accel_x_g=dt / 3))
        if pay:
            events.append(payment(i, vin=vin, ts=ts, card_number=f"41111111111111{vehicle:02d}"))
    items: Items = [(spec_of(e), e) for e in events]
    expect = sequential(items, FeatureState())
    assert batched(items, FeatureState(), [size] * (len(items) // size + 1)) == expect


def test_input_is_left_untouched() -> None:
    events = [telemetry(i, vin=f"VIN{i % 3:014d}") for i in range(30)] + [payment(1)]
    before = [msgspec.json.encode(e) for e in events]
    state = FeatureState()
    list(anonymize_batch([(spec_of(e), e) for e in events], state, TOK).records)
    assert [msgspec.json.encode(e) for e in events] == before
    assert len(state) == 0
    assert isinstance(events[-1], Payment)


def test_a_gateway_upgraded_in_place_keeps_its_vehicles_positions_for_payments() -> None:
    # Its changelog holds the state the telemetry code kept under the vehicle's key (a
    # VehicleState). Payments read its position, model and fuel level until the vehicle's next
    # frame; that frame starts the engine's state afresh (rolling features as for a new
    # vehicle) and keeps the position on.
    from shared.features import payments as pay
    from shared.features import telemetry as tel
    from shared.features.state import VehicleState, VehicleStreamState, state_key
    from tests.unit.test_features import VIN

    _reads, _features, old = tel.telemetry_step(telemetry(0, lat=51.5, lon=-0.1), None)
    key = state_key("v", TOK.token("vin", VIN))
    state = FeatureState({key: old})
    paid = payment(0, ts=1_700_000_030.0, lat=51.6, lon=-0.1)
    features = anonymize(streams.PAYMENTS, paid, state, TOK).record.features
    by_code = pay.position_features(paid, old)
    for name in ("vehicle_known", "vehicle_distance_km", "vehicle_fix_age_s"):
        assert features[name] == round(by_code[name], 3), name
    assert features["vehicle_known"] == 1.0 and features["vehicle_distance_km"] > 10
    frame = telemetry(40, lat=51.7, lon=-0.2)
    # With other vehicles' frames: vectorised, as the enricher runs it, and one by one.
    others = [telemetry(i, vin=f"VIN{i:014d}") for i in range(10)]
    items = [(streams.TELEMETRY, e) for e in [frame, *others]]
    fresh = list(anonymize_batch(items, FeatureState(), TOK).wire)
    assert list(anonymize_batch(items, state, TOK).wire) == fresh  # as a vehicle's first frame
    assert list(sequential_batch(items, state, TOK).wire) == fresh
    after = anonymize(streams.TELEMETRY, frame, state, TOK).updates[key]
    assert isinstance(after, VehicleStreamState) and not isinstance(after, VehicleState)
    assert (after.lat, after.lon, after.model) == (51.7, -0.2, frame.model)
