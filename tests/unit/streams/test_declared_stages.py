"""A declared stream through the stages' pure parts: the bridge's checks, the anonymizer, the
Mosquitto role and the catalogue's refusals. The declaration exists only here."""

from __future__ import annotations

import json
import math
import random
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import msgspec
import pytest

from edge.bridge.errors import Rejected
from edge.bridge.validate import Limits, validate
from shared import streams
from shared.contracts import AnonRecord, decode, encode
from shared.declarations import DeclarationError, load_text, vector
from shared.declarations import transforms as tf
from shared.declarations.catalog import load_streams
from shared.declarations.vector import anonymize_declared
from shared.features.anonymize import Anonymizer
from shared.features.batch import sequential_batch
from shared.features.state import FeatureState, decode_state, encode_state
from shared.infra.mosquitto import vehicle_role
from shared.tokens import Tokenizer

COLD = """
[stream]
name = "cold"
topic = "cold_box"
device = { field = "unit", pattern = "^[A-Z]{2}-[0-9]{4}$", noun = "trailer" }
time = { field = "at", unit = "iso8601" }
alerts = { kind = "event" }
cell = ["la", "lo"]
person = "driver"

[fields]
unit = { type = "str" }
at = { type = "str" }
box_c = { type = "float", range = [-30, 30], label = "Box temperature", typical_std = 2.0 }
set_c = { type = "float", label = "Setpoint" }
door = { type = "enum", values = ["shut", "open"] }
kw = { type = "float", required = false }
driver = { type = "str", pii = "token", label = "Driver" }
phone = { type = "str", pii = "vault", required = false }
badge = { type = "str", pii = "drop", required = false }
la = { type = "float" }
lo = { type = "float" }

[features]
box_c = ["value", "zscore", "rate", "stuck"]
over = { diff = ["box_c", "set_c"], then = ["value", "delta"] }
door = ["onehot"]
kw = ["value", "zscore"]
gap = { gap = true }
ratio = { ratio = ["box_c", "set_c"], then = ["value", "stuck", "rate"] }
spread = { spread = ["box_c", "set_c", "kw"] }
tod = "time_of_day"
kw_log = { value = "kw", scale = "log1p" }
both_stuck = { stuck = ["box_c", "kw"], scale = "log1p" }
per_door = { ref_ratio = "box_c", by = "door", table = "rated", missing = -1 }

[refs]
rated = { shut = 2.0, open = 0.0 }
"""
NOW = 1_767_600_000.0
SECRET = Tokenizer(b"k" * 32)


@pytest.fixture()
def cold(tmp_path: Path) -> Iterator[streams.StreamSpec]:
    (tmp_path / "cold.toml").write_text(COLD)
    streams.use_declarations(tmp_path)
    yield streams.get("cold")
    streams._REGISTRY.pop("cold", None)


def _event(i: int, **over: object) -> dict[str, object]:
    event: dict[str, object] = {
        "event_id": f"e{i}",
        "unit": "AB-0001",
        "at": f"2026-01-05T07:{i:02d}:00Z",
        "box_c": 3.0 + (i % 3) * 0.5,
        "set_c": 3.0,
        "door": "shut",
        "kw": 4.0,
        "driver": "Jo Driver",
        "phone": "+49 170 5550100",
        "badge": "B-7781",
        "la": 52.52437,
        "lo": 13.41053,
    }
    event.update(over)
    return event


def _check(
    spec: streams.StreamSpec, payload: dict[str, object], topic: str = "fleet/AB-0001/cold_box"
) -> float:
    limits = Limits(streams={spec.mqtt_suffix: spec}, max_past_age_s=10 * 86_400)
    return validate(topic, json.dumps(payload).encode(), NOW, limits).ts


def test_the_bridge_takes_the_declared_fields_and_iso_times(cold: streams.StreamSpec) -> None:
    assert _check(cold, _event(5)) == NOW - 3600 + 5 * 60


@pytest.mark.parametrize(
    ("change", "reason", "named"),
    [
        ({"box_c": "warm"}, "wrong_type", "box_c"),
        ({"door": "ajar"}, "invalid_value", "door"),
        ({"unit": "ab-1"}, "invalid_value", "unit"),
        ({"at": "yesterday"}, "invalid_value", "at"),
        ({"set_c": None}, "wrong_type", "set_c"),
    ],
)
def test_the_bridge_names_the_declared_field_it_refuses(
    cold: streams.StreamSpec, change: dict[str, object], reason: str, named: str
) -> None:
    with pytest.raises(Rejected) as info:
        _check(cold, _event(1, **change))
    assert info.value.reason == reason
    assert named in str(info.value)


def test_a_missing_required_field_and_another_devices_id_are_refused(
    cold: streams.StreamSpec,
) -> None:
    event = _event(1)
    del event["box_c"]
    with pytest.raises(Rejected, match="box_c") as info:
        _check(cold, event)
    assert info.value.reason == "missing_field"
    with pytest.raises(Rejected, match="unit differs") as info:
        _check(cold, _event(1), topic="fleet/AB-0002/cold_box")
    assert info.value.reason == "vin_mismatch"


def test_no_personal_value_leaves_in_the_anonymized_record(cold: streams.StreamSpec) -> None:
    anon = Anonymizer(SECRET)
    payload = json.dumps(_event(1)).encode()
    record = anon.message("fleet/AB-0001/cold_box", payload)
    assert isinstance(record, AnonRecord)
    text = encode(record).decode()
    for secret in ("Jo Driver", "+49 170 5550100", "B-7781", "52.52", "13.41"):
        assert secret not in text
    assert record.tokens["driver_token"] == SECRET.token("driver", "Jo Driver")
    assert record.cell == "c10:525:134"
    assert record.device == record.key == "AB-0001"  # a device id that is not personal data
    assert set(record.values) == {"box_c", "set_c", "door", "kw"}
    assert record.ts == NOW - 3600 + 60


def test_the_vault_keeps_tokens_and_vault_fields_of_the_person(cold: streams.StreamSpec) -> None:
    from shared.features.anonymize import vault_of

    items = vault_of(cold)(decode(cold.event, json.dumps(_event(1)).encode()))
    assert sorted(items) == [
        ("driver", "Jo Driver", "Jo Driver"),
        ("phone", "+49 170 5550100", "Jo Driver"),
    ]


def test_features_follow_the_generic_transforms_per_device(cold: streams.StreamSpec) -> None:
    anon = Anonymizer(SECRET)
    boxes = [3.0, 3.0, 5.0, 11.0]
    z = r = None
    stuck = None
    for i, box in enumerate(boxes):
        other = anon.message(
            "fleet/AB-0002/cold_box", json.dumps(_event(i, unit="AB-0002", box_c=-20.0)).encode()
        )  # another trailer's state
        assert isinstance(other, AnonRecord)
        record = anon.message(
            "fleet/AB-0001/cold_box",
            json.dumps(_event(i, box_c=box, kw=None if i == 2 else 4.0)).encode(),
        )
        assert isinstance(record, AnonRecord)
        ts = NOW - 3600 + i * 60
        want_z, z = tf.zscore_step(z, box, typical_std=2.0)
        want_r, r = tf.rate_step(r, ts, box, typical_std=2.0)
        run, stuck = tf.stuck_step(stuck, box)
        f = record.features
        assert f["box_c"] == box and f["box_c_z"] == round(want_z, 3)
        assert f["box_c_rate"] == round(want_r, 3) and f["box_c_stuck"] == run
        assert f["over"] == box - 3.0
        assert (f["door_shut"], f["door_open"]) == (1.0, 0.0)
        assert f["gap"] == (0.0 if i == 0 else 60.0)
        assert f["kw"] == (0.0 if i == 2 else 4.0)  # an optional field left out reads 0
    assert list(record.features) == cold.declaration.feature_names  # type: ignore[union-attr]


def test_state_survives_the_changelog_and_a_batch_equals_one_by_one(
    cold: streams.StreamSpec,
) -> None:
    events = [
        (cold, decode(cold.event, json.dumps(_event(i, box_c=float(i))).encode())) for i in range(6)
    ]
    one = Anonymizer(SECRET)
    want = [one.anonymize(e) for _, e in events]
    state = FeatureState()
    first = sequential_batch(events[:3], state, SECRET)
    got = list(first.records)
    # Through the changelog's encoding, as a restarted enricher reads it back.
    state = FeatureState({k: decode_state(encode_state(v)) for k, v in first.updates.items()})
    got += list(sequential_batch(events[3:], state, SECRET).records)
    assert got == want
    assert all(math.isfinite(v) for r in got for v in r.features.values())


def test_a_device_may_publish_its_declared_streams(cold: streams.StreamSpec) -> None:
    topics = {
        acl["topic"]
        for acl in vehicle_role("AB-0001")["acls"]
        if acl["acltype"] == "publishClientSend"
    }
    assert topics == {
        "fleet/AB-0001/telemetry",
        "fleet/AB-0001/payments",
        "fleet/AB-0001/cold_box",
        "fleet/AB-0001/status",
    }


@pytest.mark.parametrize(
    ("edit", "key", "message"),
    [
        (('name = "cold"', 'name = "telemetry"'), "stream.name", "built in"),
        (('topic = "cold_box"', 'topic = "payments"'), "stream.topic", "built in"),
        (
            # The vehicle's state is kept by its VIN's token: a raw "vin" could never find it.
            ("gap = { gap = true }", 'gap = { named = "vehicle_known" }'),
            "features.gap",
            'vin = { pii = "token", token_kind = "vin" }',
        ),
        (
            # A card's transforms are computed together: each reads every field of the card's.
            (
                "[features]\n",
                'card_number = { type = "str", pii = "token", token_kind = "card" }\n'
                '[features]\ncard = { named = "card_uses_1m" }\n',
            ),
            "features.card",
            "reads 'amount', which is not declared",
        ),
        (
            # A decision answers one event: an episode comes too late for it.
            ('alerts = { kind = "event" }', 'alerts = { kind = "episodes" }\ndecision = true'),
            "stream.decision",
            'alerts = { kind = "event" }',
        ),
    ],
)
def test_what_the_stages_cannot_run_is_refused_at_start_up(
    tmp_path: Path, edit: tuple[str, str], key: str, message: str
) -> None:
    # The vehicle's fields are declared here so only the stage's refusal is left.
    vehicle = 'vin = { type = "str" }\nlat = { type = "float" }\nlon = { type = "float" }\n'
    text = COLD.replace(*edit).replace("la = {", vehicle + 'volume_l = { type = "float" }\nla = {')
    (tmp_path / "cold.toml").write_text(text)
    with pytest.raises(DeclarationError) as info:
        load_streams(tmp_path)
    assert "cold.toml" in str(info.value) and key in str(info.value)
    assert message in str(info.value)


def test_the_declaration_loads_on_its_own() -> None:
    assert load_text(COLD, "cold.toml").feature_spec.startswith("fs-")


def _random_events(spec: streams.StreamSpec, n: int, seed: int) -> list[tuple[Any, Any]]:
    """Several trailers' events, interleaved, with exact repeats, left-out optional values,
    equal and out-of-order times."""
    rng = random.Random(seed)
    units = [f"AB-{k:04d}" for k in range(7)]
    box = {u: rng.uniform(-5, 8) for u in units}
    minute = {u: 0 for u in units}
    out = []
    for i in range(n):
        u = rng.choice(units)
        if rng.random() < 0.6:
            box[u] = round(box[u] + rng.gauss(0, 1.5), rng.choice((0, 1, 3)))
        minute[u] += rng.choice((1, 1, 1, 0, 3, -1))
        at = f"2026-01-05T{6 + minute[u] // 60 % 12:02d}:{minute[u] % 60:02d}:00Z"
        event = _event(
            i,
            unit=u,
            at=at,
            box_c=box[u],
            set_c=rng.choice((3.0, 3.0, -18.0)),
            door=rng.choice(("shut", "shut", "open")),
            kw=None if rng.random() < 0.2 else round(rng.uniform(0, 9), 1),
            driver=rng.choice(("Jo", "Al")),
        )
        out.append((spec, decode(spec.event, json.dumps(event).encode())))
    return out


def _in_ms_on_the_move(
    items: list[tuple[Any, Any]], spec: streams.StreamSpec, seed: int
) -> list[tuple[Any, Any]]:
    """The same events with times in milliseconds and positions that cross cell borders (on
    both sides of the equator and of Greenwich)."""
    rng = random.Random(seed)
    out = []
    for _spec, event in items:
        raw = json.loads(encode(event))
        raw["at"] = int(datetime.fromisoformat(raw["at"]).timestamp() * 1000) + rng.randrange(1000)
        raw["la"] = rng.choice((0.0, -0.05, 0.1, 52.52437, -33.9, 0.30000000000000004))
        raw["lo"] = rng.uniform(-0.3, 0.3)
        out.append((spec, decode(spec.event, json.dumps(raw).encode())))
    return out


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_the_vectorised_batch_gives_the_event_by_event_records_and_states(
    cold: streams.StreamSpec, seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    _same_records_and_states(_random_events(cold, 600, seed), monkeypatch)


def test_the_vectorised_batch_with_millisecond_times_and_moving_cells(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "iso").mkdir()
    (tmp_path / "iso" / "cold.toml").write_text(COLD)
    streams.use_declarations(tmp_path / "iso")
    items = _random_events(streams.get("cold"), 600, 4)
    streams._REGISTRY.pop("cold", None)
    (tmp_path / "ms").mkdir()
    text = COLD.replace('unit = "iso8601"', 'unit = "ms"').replace(
        'at = { type = "str" }', 'at = { type = "int" }'
    )
    (tmp_path / "ms" / "cold.toml").write_text(text)
    streams.use_declarations(tmp_path / "ms")
    try:
        _same_records_and_states(_in_ms_on_the_move(items, streams.get("cold"), 4), monkeypatch)
    finally:
        streams._REGISTRY.pop("cold", None)


def _same_records_and_states(items: list[tuple[Any, Any]], monkeypatch: pytest.MonkeyPatch) -> None:
    want_state, want = FeatureState(), list[AnonRecord]()
    for start in range(0, len(items), 150):
        chunk = sequential_batch(items[start : start + 150], want_state, SECRET)
        for record in chunk.records:
            assert isinstance(record, AnonRecord)  # a declared stream's
            want.append(record)
        want_state.apply(chunk.updates)

    def fallback(*_args: object) -> None:
        raise AssertionError("the batch went event by event")

    monkeypatch.setattr(vector, "_one_by_one", fallback)
    got_state, got = FeatureState(), []
    for start in range(0, len(items), 150):
        records, updates = anonymize_declared(items[start : start + 150], got_state, SECRET)
        got += records
        got_state.apply(updates)
    assert [encode(r) for r in got] == [encode(r) for r in want]
    wire, _ = anonymize_declared(items[:150], FeatureState(), SECRET, wire=True)
    assert wire == [(r.key, encode(r)) for r in want[:150]]
    assert sorted(got_state) == sorted(want_state)
    # The states to the bit (features are rounded; the states carry on unrounded).
    assert {k: encode_state(v) for k, v in got_state.items()} == {
        k: encode_state(v) for k, v in want_state.items()
    }


def test_the_ansible_role_grants_a_device_what_infra_up_grants(cold: streams.StreamSpec) -> None:
    """The mosquitto role's filter plugin and shared/infra/mosquitto.py write the same role."""
    import importlib.util

    path = (
        Path(__file__).resolve().parents[3]
        / "ansible/roles/mosquitto/filter_plugins/mosquitto_passwd.py"
    )
    spec = importlib.util.spec_from_file_location("mosquitto_passwd", path)
    assert spec is not None and spec.loader is not None
    plugin = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(plugin)
    config = plugin.mosquitto_dynsec(
        {"admin": "a", "bridge": "b"},
        "admin",
        "bridge",
        [{"vin": "AB-0001", "password": "p"}],
        "gw",
        1,
        ["cold_box"],
    )
    role = next(r for r in config["roles"] if r["rolename"] == "vehicle-AB-0001")
    assert sorted(role["acls"], key=str) == sorted(vehicle_role("AB-0001")["acls"], key=str)
    with pytest.raises(ValueError, match="mosquitto_stream_topics"):
        plugin.mosquitto_dynsec({}, "admin", "bridge", [], "gw", 1, ["fleet/#"])


def _telemetry_frames(spec: streams.StreamSpec, vehicles: int, seconds: float) -> list[Any]:
    from firmware_sim import Fleet, SimSettings

    fleet = Fleet(SimSettings(vehicles=vehicles, duration_s=seconds, seed=11))
    frames = [
        decode(spec.event, payload)
        for topic, payload in fleet.events()
        if topic.endswith("/telemetry")
    ]
    # Every 7th frame of a model the catalogue does not know (its envelope is neutral).
    return [
        (spec, msgspec.structs.replace(e, model="no such model") if i % 7 == 0 else e)
        for i, e in enumerate(frames)
    ]


def test_the_whole_telemetry_declaration_runs_in_the_engine_as_its_code_computes_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Named transforms included: the engine's every feature equals the hand-written code's,
    # frame by frame, and the vectorised batch equals the engine event by event.
    from importlib import resources

    from shared.features import telemetry as tel

    shipped = (resources.files("shared.declarations") / "builtin" / "telemetry.toml").read_text()
    # The vehicle's state is the built-in telemetry's to keep.
    (tmp_path / "own.toml").write_text(
        shipped.replace('name = "telemetry"', 'name = "telemetry_own"').replace(
            'shares = "vehicle"', ""
        )
    )
    streams.use_declarations(tmp_path)
    try:
        spec = streams.get("telemetry_own")
        assert spec.declaration is not None
        assert any(f.transform == "named" for f in spec.declaration.features)
        items = _telemetry_frames(spec, vehicles=12, seconds=150)
        names = spec.declaration.feature_names
        by_code: dict[str, Any] = {}
        state = FeatureState()
        for start in range(0, len(items), 200):
            chunk = sequential_batch(items[start : start + 200], state, SECRET)
            state.apply(chunk.updates)
            for (_spec, event), record in zip(
                items[start : start + 200], chunk.records, strict=True
            ):
                _reads, today, by_code[event.vin] = tel.telemetry_step(
                    event, by_code.get(event.vin)
                )
                assert [record.features[n] for n in names] == [today[n] for n in names]
        _same_records_and_states(items, monkeypatch)
    finally:
        streams._REGISTRY.pop("telemetry_own", None)


def _payment_by_hand(event: Any, state: Any, tok: Tokenizer) -> tuple[Any, dict[str, Any]]:
    """An ``anon.payments`` record as the payments feature code composes it
    (``payment_features``, ``update_card``, ``update_driver``): what the engine must give."""
    from shared.contracts import AnonPayment
    from shared.features import payments as pay
    from shared.features.geo import cell
    from shared.features.state import CardState, DriverState, VehicleState, state_key

    def get(key: str, kind: type) -> Any:
        value = state.get(key)
        return value if isinstance(value, kind) else None

    vehicle_token = tok.token("vin", event.vin)
    card_token = tok.token("card", event.card_number)
    driver_token = tok.token("driver", event.driver_id)
    card_key, driver_key = state_key("c", card_token), state_key("d", driver_token)
    card, driver = get(card_key, CardState), get(driver_key, DriverState)
    vehicle = get(state_key("v", vehicle_token), VehicleState)
    features = pay.payment_features(event, card, driver, vehicle, vehicle_token)
    # The code also counts the driver's and the card's history; no model reads those two
    # and the declaration does not declare them.
    del features["driver_history"], features["card_history"]
    record = AnonPayment(
        event_id=event.event_id,
        ts=event.ts,
        card_token=card_token,
        vehicle_token=vehicle_token,
        driver_token=driver_token,
        merchant_id=event.merchant_id,
        mcc=event.mcc,
        category=event.category,
        amount=event.amount,
        currency=event.currency,
        volume_l=event.volume_l,
        cell=cell(event.lat, event.lon),
        features={k: math.floor(v * 1000 + 0.5) / 1000 for k, v in features.items()},
    )
    updates = {
        card_key: pay.update_card(card, event, vehicle_token),
        driver_key: pay.update_driver(driver, event),
    }
    return record, updates


def test_the_whole_payments_declaration_runs_in_the_engine_as_its_code_computes_it(
    tmp_path: Path,
) -> None:
    # Payments' named transforms keep state by card and by driver, across vehicles, and read
    # the vehicle's last telemetry. The built-in payments stream runs its shipped declaration
    # in the engine: through the enricher's batches (payments among the telemetry frames, each
    # reading the vehicle's state as the frames before it left it) its ``anon.payments``
    # records are, byte for byte, those the payments feature code composes against the
    # vehicle states the telemetry code keeps, payment by payment, and it leaves the very card
    # and driver states. A declared copy of the declaration computes every feature alike.
    from importlib import resources

    from firmware_sim import Fleet, SimSettings
    from firmware_sim.settings import default_fraud_rates

    from shared.contracts import AnonPayment, Payment, Telemetry
    from shared.features import telemetry as tel
    from shared.features.batch import anonymize_batch
    from shared.features.state import state_key

    shipped = (resources.files("shared.declarations") / "builtin" / "payments.toml").read_text()
    (tmp_path / "own.toml").write_text(
        shipped.replace('name = "payments"', 'name = "payments_own"')
    )
    streams.use_declarations(tmp_path)
    try:
        own = streams.get("payments_own")
        assert own.declaration is not None
        names = own.declaration.feature_names
        assert sum(f.transform == "named" for f in own.declaration.features) == 15
        rates = {kind: 0.06 for kind in default_fraud_rates()}
        fleet = Fleet(
            SimSettings(vehicles=12, duration_s=600, seed=11, payment_rate=60, fraud_rates=rates)
        )
        builtin_items: list[Any] = []
        engine_items: list[Any] = []
        for topic, payload in fleet.events():
            if topic.endswith("/telemetry"):
                item = (streams.TELEMETRY, decode(Telemetry, payload))
                builtin_items.append(item)
                engine_items.append(item)
            else:
                builtin_items.append((streams.PAYMENTS, decode(Payment, payload)))
                engine_items.append((own, decode(own.event, payload)))
        want_state = FeatureState()
        want: list[Any] = []
        for spec, event in builtin_items:
            if spec is streams.PAYMENTS:
                record, updates = _payment_by_hand(event, want_state, SECRET)
                want.append(record)
            else:  # the telemetry code's vehicle state
                key = state_key("v", SECRET.token("vin", event.vin))
                before = want_state.get(key)
                updates = {key: tel.telemetry_step(event, before)[2]}  # type: ignore[arg-type]
            want_state.apply(updates)
        assert len(want) > 150
        # The built-in stream, as the enricher runs it.
        enriched_state = FeatureState()
        enriched: list[Any] = []
        for start in range(0, len(builtin_items), 200):
            done = anonymize_batch(builtin_items[start : start + 200], enriched_state, SECRET)
            enriched_state.apply(done.updates)
            enriched += [r for r in done.records if isinstance(r, AnonPayment)]
        assert [encode(r) for r in enriched] == [encode(r) for r in want]
        shared_keys = [k for k in want_state if k[:2] in ("c:", "d:")]
        assert shared_keys
        assert {k: v for k, v in enriched_state.items() if k[:2] in ("c:", "d:")} == {
            k: want_state[k] for k in shared_keys
        }
        # The declared copy.
        got_state = FeatureState()
        got: list[AnonRecord] = []
        for start in range(0, len(engine_items), 200):
            done = anonymize_batch(engine_items[start : start + 200], got_state, SECRET)
            got_state.apply(done.updates)
            got += [r for r in done.records if isinstance(r, AnonRecord)]
        assert len(got) == len(want)
        for mine, theirs in zip(got, want, strict=True):
            assert (mine.event_id, mine.key, mine.device) == (
                theirs.event_id,
                theirs.card_token,
                theirs.vehicle_token,
            )
            assert [mine.features[n] for n in names] == [theirs.features[n] for n in names], (
                mine.event_id
            )
        # The values compared are not all trivial: cards used again, across vehicles, near
        # and far from their vehicle, fuel against the tank.
        for name in ("card_uses_10m", "card_vehicles_1h", "vehicle_distance_km", "fuel_fill_ratio"):
            assert len({r.features[name] for r in got}) > 1, name
        assert [got_state[k] for k in shared_keys] == [want_state[k] for k in shared_keys]
    finally:
        streams._REGISTRY.pop("payments_own", None)


@pytest.mark.parametrize(
    ("fields", "refused"),
    [
        ('coolant_c = { type = "float" }\nmodel = { type = "str" }', None),
        ('coolant_c = { type = "str" }\nmodel = { type = "str" }', "'coolant_c'"),
        ('coolant_c = { type = "float" }', "model"),
    ],
)
def test_a_named_transform_reads_numbers_where_it_computes_with_them(
    tmp_path: Path, fields: str, refused: str | None
) -> None:
    text = COLD.replace("la = {", f"{fields}\nla = {{", 1).replace(
        "gap = { gap = true }", 'hot = { named = "coolant_over_thermostat" }'
    )
    (tmp_path / "cold.toml").write_text(text)
    if refused is None:
        assert "hot" in load_streams(tmp_path)["cold"].feature_names
        return
    with pytest.raises(DeclarationError) as info:
        load_streams(tmp_path)
    assert "cold.toml" in str(info.value) and "features.hot" in str(info.value)
    assert refused in str(info.value)


def test_a_new_plan_never_takes_the_record_types_of_a_plan_gone_before_it() -> None:
    # A declaration reloaded with other features gets a new plan; the old one is freed, and
    # Python may give the new one the old one's id. Its records must carry its own fields.
    from shared.declarations.anonymize import Plan

    a, b = (
        load_text(COLD, "cold.toml"),
        load_text(COLD.replace('kw = ["value", "zscore"]\n', ""), "c.toml"),
    )
    assert a.feature_names != b.feature_names
    reused = 0
    for _ in range(50):
        old = Plan(a)
        vector.wire_types(old)
        seen = id(old)
        del old
        new = Plan(b)
        reused += id(new) == seen
        fields = msgspec.structs.fields(vector.wire_types(new).features)
        assert [f.name for f in fields] == new.names
    assert reused  # (CPython hands a freed object's memory to the next one of its size)
