"""Telemetry features against the vehicle model's specification and the stuck-sensor count."""

from __future__ import annotations

import math

import msgspec

from shared.contracts import Telemetry
from shared.features import decode_state, model_features
from shared.features import telemetry as tel
from shared.features.state import VehicleState
from shared.fleet_catalog import CATALOG

VAN = CATALOG["citan-van"]  # thermostat 90 °C, tyres 250 kPa
EV = CATALOG["e-transit"]


def frame(i: int, **over: object) -> Telemetry:
    """A van's telemetry frame, with the fields in ``over`` (``model=...`` too) replaced."""
    base: dict[str, object] = dict(
        event_id=f"t{i}",
        ts=1_700_000_000.0 + i,
        vin="WDF00000000000001",
        driver_id="D-1",
        model=VAN.name,
        firmware="1.0.0",
        lat=52.5,
        lon=13.4,
        speed_kmh=50.0 + (i % 3) * 0.37,
        rpm=2000.0 + (i % 7),
        gear=3,
        coolant_c=90.5 + (i % 5) * 0.13,
        intake_c=30.0 + (i % 4) * 0.21,
        oil_kpa=300.0 + (i % 3),
        battery_v=14.15 + (i % 3) * 0.011,
        soc_pct=85.0,
        tyre_fl_kpa=250.0 + (i % 4) * 0.3,
        tyre_fr_kpa=251.0 + (i % 3) * 0.3,
        tyre_rl_kpa=249.0 + (i % 5) * 0.3,
        tyre_rr_kpa=250.5 + (i % 2) * 0.3,
        fuel_pct=60.0,
        odometer_km=12000.0,
        accel_x_g=0.01,
        accel_y_g=0.0,
        accel_z_g=1.0,
        ambient_c=15.0 + (i % 3) * 0.1,
    )
    base.update(over)
    return Telemetry(**base)  # type: ignore[arg-type]


def replay(frames: list[Telemetry]) -> list[dict[str, float]]:
    state: VehicleState | None = None
    out = []
    for f in frames:
        _, feats, state = tel.telemetry_step(f, state)
        out.append(feats)
    return out


def test_the_model_takes_the_envelope_features() -> None:
    names = model_features("telemetry")
    for n in (
        "coolant_over_thermostat_c",
        "coolant_hot_trend",
        "tyre_mean_ratio",
        "tyre_min_ratio",
        "battery_v_low",
        "stuck_frames",
    ):
        assert n in names


def test_coolant_climbing_above_the_thermostat_is_seen_within_seconds() -> None:
    warm = replay([frame(i) for i in range(30)])
    assert warm[-1]["coolant_over_thermostat_c"] < 1.5
    assert warm[-1]["coolant_hot_trend"] == 0.0
    # A failing pump: from 94 °C, +1 °C/s.
    ramp = [frame(i) for i in range(30)] + [frame(30 + k, coolant_c=94.0 + k) for k in range(15)]
    feats = replay(ramp)
    assert feats[-1]["coolant_over_thermostat_c"] >= 17.9
    assert feats[-1]["coolant_hot_trend"] > 0.5  # °C/s, still climbing


def test_warm_up_below_the_thermostat_is_not_a_hot_trend() -> None:
    feats = replay([frame(i, coolant_c=40.0 + 0.7 * i) for i in range(40)])
    assert all(f["coolant_hot_trend"] == 0.0 for f in feats)
    assert all(f["coolant_over_thermostat_c"] == 0.0 for f in feats)


def test_tyre_ratios_against_the_recommended_pressure() -> None:
    low = {t: 0.7 * 250.0 for t in ("tyre_fl_kpa", "tyre_fr_kpa", "tyre_rl_kpa", "tyre_rr_kpa")}
    f = replay([frame(0, **low)])[0]  # a wrong scale factor: every tyre 30 % low
    assert abs(f["tyre_mean_ratio"] - 0.7) < 0.01
    ok = replay([frame(0)])[0]
    assert 0.99 < ok["tyre_mean_ratio"] < 1.01 and 0.99 < ok["tyre_min_ratio"] < 1.01
    leak = replay([frame(0, tyre_rl_kpa=120.0)])[0]
    assert abs(leak["tyre_min_ratio"] - 0.48) < 0.01


def test_low_battery_voltage_against_the_running_range_or_the_resting_floor() -> None:
    running = replay([frame(0, battery_v=12.4)])[0]
    assert abs(running["battery_v_low"] - 1.0) < 0.01  # VAN's range starts at 13.4 V
    resting = dict(speed_kmh=0.0, rpm=0.0, gear=0)
    assert replay([frame(0, battery_v=12.4, **resting)])[0]["battery_v_low"] == 0.0
    flat = replay([frame(0, battery_v=9.9, **resting)])[0]
    assert abs(flat["battery_v_low"] - 1.9) < 0.01


def test_unknown_model_gives_neutral_envelope_values() -> None:
    f = replay([frame(0, model="not-in-catalogue", coolant_c=130.0)])[0]
    assert f["coolant_over_thermostat_c"] == 0.0 and f["tyre_mean_ratio"] == 1.0


def test_stuck_counts_a_flat_sensor_but_not_oil_at_rest() -> None:
    # An EV reads oil pressure 0 all the time: that is no stuck sensor.
    ev = replay([frame(i, model=EV.name, oil_kpa=0.0) for i in range(40)])
    assert ev[-1]["stuck_frames"] < math.log1p(3)
    stuck = replay([frame(i, coolant_c=-40.0) for i in range(40)])  # open circuit
    assert stuck[-1]["stuck_frames"] >= round(math.log1p(38), 3)


def test_state_without_the_trend_still_decodes() -> None:
    _, _, state = tel.telemetry_step(frame(0), None)
    old = msgspec.msgpack.encode(
        ["v", *[getattr(state, f) for f in VehicleState.__struct_fields__[:-1]]]
    )
    back = decode_state(old)
    assert isinstance(back, VehicleState) and back.coolant_trend == 0.0
    assert tel.telemetry_step(frame(1), back)[1]["coolant_hot_trend"] == 0.0


def test_step_leaves_its_inputs_alone() -> None:
    ev = frame(0)
    _, _, state = tel.telemetry_step(ev, None)
    before = msgspec.msgpack.encode(state)
    tel.telemetry_step(frame(1, coolant_c=120.0), state)
    assert msgspec.msgpack.encode(state) == before
