"""Contracts: typed decode, precise errors naming the field, schema versions, round trips."""

from __future__ import annotations

import json

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared import contracts as c
from shared.errors import ContractError

VIN = "1HGCM82633A004352"


def telemetry(**over: object) -> dict:
    base = dict(
        event_id="e-1",
        vin=VIN,
        ts=1_700_000_000.0,
        driver_id="D1",
        model="Atlas",
        firmware="1.0",
        lat=48.1,
        lon=11.5,
        speed_kmh=50,
        rpm=2000,
        gear=3,
        coolant_c=90,
        intake_c=30,
        oil_kpa=300,
        battery_v=14.1,
        soc_pct=80,
        tyre_fl_kpa=230,
        tyre_fr_kpa=230,
        tyre_rl_kpa=230,
        tyre_rr_kpa=230,
        fuel_pct=50,
        odometer_km=12000,
        accel_x_g=0.1,
        accel_y_g=0.0,
        accel_z_g=1.0,
        ambient_c=12,
    )
    base.update(over)
    return base


def payment(**over: object) -> dict:
    base = dict(
        event_id="p-1",
        vin=VIN,
        ts=1_700_000_000.0,
        driver_id="D1",
        driver_name="Ada Lovelace",
        card_number="4111111111111111",
        cardholder="ADA LOVELACE",
        merchant_id="M1",
        merchant_name="Fuel Stop",
        mcc="5541",
        category="fuel",
        amount=62.5,
        currency="EUR",
        lat=48.1,
        lon=11.5,
        volume_l=35.0,
    )
    base.update(over)
    return base


def test_valid_events_decode_to_typed_objects() -> None:
    t = c.decode(c.Telemetry, json.dumps(telemetry()).encode())
    p = c.decode(c.Payment, json.dumps(payment()).encode())
    assert isinstance(t, c.Telemetry) and t.gear == 3 and t.schema == c.SCHEMA_VERSION
    assert isinstance(p, c.Payment) and p.category == "fuel" and p.volume_l == 35.0


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        (telemetry(speed_kmh="fast"), "speed_kmh"),
        (telemetry(vin="TOO-SHORT"), "vin"),
        (telemetry(vin="1HGCM82633A00435I"), "vin"),  # I is not allowed in VINs
        (telemetry(ts=-5), "ts"),
        (telemetry(lat=123.0), "lat"),
        ({k: v for k, v in telemetry().items() if k != "rpm"}, "rpm"),
        (payment(card_number="4111-1111"), "card_number"),
        (payment(category="casino"), "category"),
        (payment(amount=-1), "amount"),
        (payment(currency="euro"), "currency"),
    ],
)
def test_errors_name_the_field(payload: dict, field: str) -> None:
    kind = c.Payment if "card_number" in payload else c.Telemetry
    with pytest.raises(ContractError) as err:
        c.decode(kind, json.dumps(payload).encode())
    assert err.value.field == field
    assert field in str(err.value)


def test_bad_json_and_oversize_are_contract_errors() -> None:
    with pytest.raises(ContractError, match="not valid JSON"):
        c.decode(c.Telemetry, b"{not json")
    with pytest.raises(ContractError, match="over the"):
        c.decode(c.Telemetry, b" " * (c.MAX_MESSAGE_BYTES + 1))


def test_unsupported_schema_version_is_rejected() -> None:
    with pytest.raises(ContractError) as err:
        c.decode(c.Telemetry, json.dumps(telemetry(schema=99)).encode())
    assert err.value.field == "schema"


def test_records_are_frozen() -> None:
    t = c.decode(c.Telemetry, json.dumps(telemetry()).encode())
    with pytest.raises(AttributeError):
        t.speed_kmh = 1.0  # type: ignore[misc]


@given(
    speed=st.floats(allow_nan=False, allow_infinity=False, width=32),
    gear=st.integers(-1, 8),
    event_id=st.text(min_size=1, max_size=64),
)
def test_round_trip(speed: float, gear: int, event_id: str) -> None:
    t = c.decode(
        c.Telemetry, json.dumps(telemetry(speed_kmh=speed, gear=gear, event_id=event_id)).encode()
    )
    assert c.decode(c.Telemetry, c.encode(t)) == t


def test_every_contract_has_a_schema_field() -> None:
    kinds = [
        c.Telemetry,
        c.Payment,
        c.AnonTelemetry,
        c.AnonPayment,
        c.Score,
        c.Alert,
        c.ModelManifest,
        c.ModelStatus,
        c.DeadLetter,
        c.Label,
        c.Decision,
        c.VehicleStatus,
    ]
    for kind in kinds:
        assert "schema" in kind.__struct_fields__, kind
        assert issubclass(kind, msgspec.Struct)
