"""Inferring a declaration from a recording: a fleet whose columns are its own, as CSV, JSON
lines and Parquet; every inferred declaration loads and its features never read personal data."""

from __future__ import annotations

import csv
import json
import random
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from shared.declarations import DeclarationError, load_text
from shared.declarations.infer import (
    InferError,
    Sample,
    field_name,
    infer,
    luhn,
    read_sample,
    render,
)
from shared.declarations.schema import Stream

START = 1767600000  # 2026-01-05T08:00:00Z
FIRST = ["Ann", "Bert", "Chloe", "Dev", "Eva", "Femi", "Gus", "Hana", "Ivo", "Jo", "Kai", "Lea"]
LAST = ["Smith", "Okafor", "Novak", "Ito", "Berg", "Costa"]
COLUMNS = [
    "time",
    "car",
    "coolant_temp",
    "intake_air_temp",
    "tire_pressure_1_1",
    "driver_name",
    "driver_email",
    "card",
    "lat",
    "lon",
    "mode",
    "Speed (km/h)",
    "door_open",
    "odometer",
]


def _card(rng: random.Random) -> str:
    body = "4" + "".join(rng.choice("0123456789") for _ in range(14))
    return next(body + d for d in "0123456789" if luhn(body + d))


def fleet_rows(n_cars: int = 12, per_car: int = 50, seed: int = 7) -> list[dict[str, Any]]:
    """Typed rows: string ids like TRK-0042, ISO 8601 times, a card, a position, a driver."""
    rng = random.Random(seed)
    rows = []
    for c in range(n_cars):
        car = f"TRK-{42 + c:04d}"
        driver = f"{FIRST[c]} {LAST[c % len(LAST)]}"
        card = _card(rng)
        base = 88.0 + c
        for i in range(per_car):
            ts = datetime.fromtimestamp(START + i * 5 + c, UTC)
            rows.append(
                {
                    "time": ts.isoformat().replace("+00:00", "Z"),
                    "car": car,
                    "coolant_temp": round(base + rng.gauss(0, 2), 2),
                    "intake_air_temp": round(25 + rng.gauss(0, 4), 1),
                    # one car's tyre sensor sometimes reports nothing
                    "tire_pressure_1_1": None
                    if c == 3 and i % 5 == 0
                    else round(230 + rng.gauss(0, 5), 1),
                    "driver_name": driver,
                    "driver_email": f"{FIRST[c].lower()}.{LAST[c % len(LAST)].lower()}@example.com",
                    "card": card,
                    "lat": round(52.37 + c * 0.05 + i * 0.001, 5),
                    "lon": round(4.89 + c * 0.05 - i * 0.001, 5),
                    "mode": ("eco", "normal", "sport")[(c + i // 10) % 3],
                    "Speed (km/h)": round(max(0.0, 60 + rng.gauss(0, 15)), 1),
                    "door_open": i % 17 == 0,
                    "odometer": 120_000 + c * 1000 + i,
                }
            )
    return rows


def write_csv(path: Path, rows: list[dict[str, Any]], delimiter: str = ",") -> Path:
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]), delimiter=delimiter)
        w.writeheader()
        for r in rows:
            w.writerow(
                {
                    k: ("" if v is None else str(v).lower() if isinstance(v, bool) else v)
                    for k, v in r.items()
                }
            )
    return path


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    # a missing value is a key left out, as devices do
    path.write_text(
        "".join(json.dumps({k: v for k, v in r.items() if v is not None}) + "\n" for r in rows),
        encoding="utf-8",
    )
    return path


def write_parquet(path: Path, rows: list[dict[str, Any]]) -> Path:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


WRITERS = {"csv": write_csv, "jsonl": write_jsonl, "parquet": write_parquet}


def _infer_file(path: Path, **kw: Any) -> tuple[str, Stream]:
    decl = infer(read_sample(path), **kw)
    text = render(decl)
    return text, load_text(text, "inferred.toml")


@pytest.fixture(params=sorted(WRITERS))
def fleet(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, str, Stream]:
    fmt = request.param
    path = WRITERS[fmt](tmp_path / f"trucks.{fmt}", fleet_rows())
    text, stream = _infer_file(path)
    return fmt, text, stream


def test_device_and_time_columns_and_units(fleet: tuple[str, str, Stream]) -> None:
    _, text, s = fleet
    assert (s.name, s.device.field, s.device.noun) == ("trucks", "car", "car")
    assert s.device.pattern == "^[A-Z0-9-]{8}$"
    assert all(re.match(s.device.pattern, f"TRK-{42 + c:04d}") for c in range(12))
    assert (s.time.field, s.time.unit) == ("time", "iso8601")
    assert s.fields["time"].type == "str" and s.fields["car"].type == "str"
    assert "# device: 'car' by name ('car')" in text
    assert "# time: 'time' by name ('time'); every value is ISO 8601" in text


def test_types_ranges_and_required(fleet: tuple[str, str, Stream]) -> None:
    _, text, s = fleet
    f = s.fields
    assert f["coolant_temp"].type == "float" and f["odometer"].type == "int"
    assert f["door_open"].type == "bool"
    assert (f["mode"].type, f["mode"].values) == ("enum", ("eco", "normal", "sport"))
    assert f["tire_pressure_1_1"].required is False
    assert all(f[n].required for n in ("coolant_temp", "car", "time", "card"))
    coolant = [r["coolant_temp"] for r in fleet_rows()]
    lo, hi = f["coolant_temp"].range or (0, 0)
    assert lo < min(coolant) and hi > max(coolant)  # widened: an anomaly is not clipped away
    # per-car std (about 2), not the std across cars whose means differ by 11 degrees
    assert 1.5 < (f["coolant_temp"].typical_std or 0) < 2.5
    assert "# type enum: 3 distinct values over 600 rows" in text
    assert "required = false: 10 rows have no value" in text


def test_personal_data_flagged_with_its_handling(fleet: tuple[str, str, Stream]) -> None:
    _, text, s = fleet
    pii = {n: d.pii for n, d in s.fields.items() if d.pii}
    assert pii == {
        "driver_name": "token",
        "card": "token",
        "driver_email": "vault",
        "lat": "cell",
        "lon": "cell",
    }
    assert s.cell == ("lat", "lon") and s.person == "driver_name"
    assert s.fields["card"].type == "str"  # a card number is an identifier, even in CSV
    assert "# pii: 100 % of 600 values are Luhn-valid 12-19 digit numbers (card numbers)" in text
    assert "# pii: 100 % of 600 values are two or more capitalized words: people's names" in text
    assert "# pii: 100 % of 600 values are e-mail addresses" in text
    assert "# cell: 'lat' and 'lon' are named latitude and longitude" in text


def test_features_never_touch_personal_data(fleet: tuple[str, str, Stream]) -> None:
    _, _, s = fleet
    used = {i for feat in s.features for i in feat.inputs}
    assert not used & s.pii_fields
    assert not used & {"car", "time"}
    names = s.feature_names
    for n in (
        "coolant_temp",
        "coolant_temp_z",
        "coolant_temp_rate",
        "speed_km_h_rate",
        "tire_pressure_1_1_z",
        "odometer",
        "door_open",
        "mode_eco",
        "mode_sport",
        "gap_s",
    ):
        assert n in names
    assert "door_open_z" not in names


def test_renamed_column_keeps_its_recording_name(fleet: tuple[str, str, Stream]) -> None:
    _, text, s = fleet
    assert s.fields["speed_km_h"].column == "Speed (km/h)"
    assert s.fields["speed_km_h"].unit == "km/h"
    assert s.columns["Speed (km/h)"] == "speed_km_h" and s.columns["car"] == "car"
    assert "# column: 'Speed (km/h)' (renamed" in text


def test_the_three_formats_agree(tmp_path: Path) -> None:
    rows = fleet_rows()
    streams = {
        fmt: _infer_file(w(tmp_path / f"trucks.{fmt}", rows))[1] for fmt, w in WRITERS.items()
    }
    specs = {s.feature_spec for s in streams.values()}
    assert len(specs) == 1, {f: s.feature_names for f, s in streams.items()}


def test_csv_delimiter_is_sniffed(tmp_path: Path) -> None:
    _, s = _infer_file(write_csv(tmp_path / "semi.csv", fleet_rows(), delimiter=";"))
    assert s.device.field == "car" and s.fields["coolant_temp"].type == "float"


@pytest.mark.parametrize("unit", ["ms", "s"])
def test_epoch_times(tmp_path: Path, unit: str) -> None:
    rows = []
    for i in range(200):
        ts = START + i * 2.5
        rows.append(
            {
                "vehicle_id": f"V{i % 4}",
                "ts": int(ts * 1000) if unit == "ms" else ts,
                "rpm": 900 + (i * 37) % 400,
            }
        )
    text, s = _infer_file(write_jsonl(tmp_path / "engine.jsonl", rows))
    assert (s.time.field, s.time.unit) == ("ts", unit)
    assert s.fields["ts"].type == ("int" if unit == "ms" else "float")
    assert ("epoch milliseconds" if unit == "ms" else "epoch seconds") in text
    assert s.device.field == "vehicle_id" and s.device.noun == "vehicle"
    assert s.fields["rpm"].unit == "rpm"


def test_device_and_time_found_by_content(tmp_path: Path) -> None:
    rows = [
        {"src": f"BX{i % 6:03d}", "when": START * 1000 + i * 1000, "level": i % 7}
        for i in range(120)
    ]
    text, s = _infer_file(write_jsonl(tmp_path / "tanks.jsonl", rows))
    assert (s.device.field, s.time.field, s.time.unit) == ("src", "when", "ms")
    assert "by content" in text


def test_vin_device_is_tokenized_and_numeric_ids_become_text(tmp_path: Path) -> None:
    vins = ["1HGCM82633A004352", "JH4KA8260MC000000", "WVWZZZ1JZXW000001"]
    rows = [{"vin": vins[i % 3], "t": START + i, "x": i * 0.5, "unit": i % 3} for i in range(90)]
    text, s = _infer_file(write_jsonl(tmp_path / "v.jsonl", rows))
    assert s.device.field == "vin" and s.fields["vin"].pii == "token"
    assert s.device.pattern == "^[A-Z0-9]{17}$"
    assert "17-character VINs" in text
    rows = [{"unit": 100 + i % 5, "t": START + i, "x": float(i)} for i in range(50)]
    _, s = _infer_file(write_jsonl(tmp_path / "u.jsonl", rows))
    assert s.fields["unit"].type == "str" and s.device.pattern == "^[0-9]{3}$"


def test_every_string_column_says_whether_it_is_personal(tmp_path: Path) -> None:
    rows = [
        {
            "truck": f"T-{i % 3}",
            "t": START + i,
            "firmware": f"fw-1.{i % 20}",
            "notes": f"checked bay {i}",
            "phone": f"+44 20 7946 {i:04d}",
            "model_name": "RT-200",
        }
        for i in range(60)
    ]
    text, s = _infer_file(write_jsonl(tmp_path / "mixed.jsonl", rows))
    assert s.fields["phone"].pii == "vault" and s.fields["model_name"].pii is None
    firmware = text.split("\nfirmware = ")[0].rsplit("\n# type str", 1)[1]
    assert "not judged personal" in firmware
    notes = text.split("\nnotes = ")[0].rsplit("\n# type str", 1)[1]
    assert "not judged personal" in notes and "free text" in notes


def test_field_names_are_sanitized() -> None:
    assert field_name("Speed (km/h)") == "speed_km_h"
    assert field_name("tire_pressure_1_1") == "tire_pressure_1_1"
    assert field_name("1st gear %") == "f_1st_gear"
    assert field_name("IntakeAirTemp") == "intake_air_temp"


def test_envelope_and_empty_columns_are_skipped_with_a_reason(tmp_path: Path) -> None:
    rows = [
        {"event_id": f"e{i}", "device": f"D{i % 2}", "ts": START + i, "x": i, "empty": None}
        for i in range(20)
    ]
    text, s = _infer_file(write_parquet(tmp_path / "e.parquet", rows))
    assert "event_id" not in s.fields and "empty" not in s.fields
    assert "# skipped column 'event_id': every event carries it" in text


def test_no_device_column_says_what_to_do() -> None:
    sample = Sample(
        "x.csv", "csv", False, {"t": [str(START + i) for i in range(10)], "v": ["1.5"] * 10}
    )
    with pytest.raises(InferError, match="--device COLUMN"):
        infer(sample)


def test_parquet_without_pyarrow_names_the_package(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sys

    path = write_parquet(tmp_path / "p.parquet", fleet_rows(2, 5))
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(InferError, match="pyarrow"):
        read_sample(path)


def test_two_fields_reading_one_column_are_refused() -> None:
    text = """
[stream]
name = "x"
device = { field = "unit", pattern = "^.+$" }
time = { field = "t" }
[fields]
unit = { type = "str" }
t = { type = "float" }
a = { type = "float", column = "A" }
b = { type = "float", column = "A" }
[features]
a = ["value"]
"""
    with pytest.raises(DeclarationError, match=r"x.toml: fields.b.column: column 'A'"):
        load_text(text, "x.toml")


def test_the_devices_interval_is_the_median_gap_between_one_devices_events(
    fleet: tuple[str, str, Stream],
) -> None:
    # Each car sends every 5 s; cars interleave 1 s apart, which a gap over all rows would see.
    _, text, s = fleet
    assert s.interval_s == 5.0
    assert "median time between one car's events" in text


def test_no_interval_when_no_device_sends_twice(tmp_path: Path) -> None:
    once = {r["car"]: r for r in fleet_rows()}  # one row per car
    path = write_jsonl(tmp_path / "once.jsonl", list(once.values()))
    text, s = _infer_file(path, device="car")
    assert s.interval_s is None and "interval_s" not in text
