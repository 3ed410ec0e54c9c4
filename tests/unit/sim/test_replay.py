"""``sim replay`` without a broker: row conversion, time rebasing, rejections, dry-run files
the trainer reads, labels, and the pacing of a replayed fleet."""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
import pytest
from click.testing import CliRunner
from firmware_sim.cli import sim
from firmware_sim.replay import (
    RebaseMode,
    ReplayError,
    event_id_for,
    load,
    read_rows,
    source_column,
    typed,
)
from firmware_sim.replay_labels import read_labels
from firmware_sim.replay_run import ReplayFleet, events, write_dry_run

from cloud.trainer.data import read_events_file, read_labels_file, records_from_messages
from shared import streams
from shared.declarations import load_text
from shared.declarations.schema import FieldDecl
from tests.declared_stream import REEFER_TOML, generate, write_declaration

NOW = 1_800_000_000.0  # where "now" is in these tests


@pytest.fixture(autouse=True)
def _registry() -> Iterator[None]:
    """The streams a test declares leave the registry with it (other tests count them)."""
    before = dict(streams._REGISTRY)
    yield
    streams._REGISTRY.clear()
    streams._REGISTRY.update(before)


def probe_toml(name: str, unit: str) -> str:
    kind = {"s": "float", "ms": "int", "iso8601": "str"}[unit]
    return f"""\
[stream]
name = "{name}"
device = {{ field = "dev", pattern = "^P-[0-9]{{3}}$" }}
time = {{ field = "t", unit = "{unit}" }}

[fields]
dev = {{ type = "str" }}
t = {{ type = "{kind}" }}
temp = {{ type = "float" }}
count = {{ type = "int", required = false }}
ok = {{ type = "bool" }}
mode = {{ type = "enum", values = ["eco", "boost"] }}
note = {{ type = "str", required = false }}

[features]
temp = ["value"]
"""


def declare(tmp_path: Path, name: str, unit: str) -> streams.StreamSpec:
    d = tmp_path / f"streams-{name}"
    d.mkdir()
    (d / f"{name}.toml").write_text(probe_toml(name, unit))
    streams.use_declarations(d)
    return streams.get(name)


def write_csv(path: Path, rows: list[dict[str, Any]]) -> Path:
    cols = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, cols)
        w.writeheader()
        w.writerows(rows)
    return path


def payloads(rec: Any) -> list[dict[str, Any]]:
    return [json.loads(p) for d in rec.devices.values() for p in d.payloads]


# --- conversion ---------------------------------------------------------------------------


def test_csv_strings_take_the_declared_types() -> None:
    assert typed("21.5", "float") == 21.5
    assert typed(" 7 ", "int") == 7
    assert typed("3.0", "int") == 3  # a pandas export of an int column with gaps
    assert typed(3.0, "int") == 3 and typed(2, "float") == 2.0
    assert typed("TRUE", "bool") is True and typed("0", "bool") is False
    assert typed("eco", "enum") == "eco" and typed("001", "str") == "001"
    # What does not convert stays, so the event contract refuses it and names the field.
    assert typed("warm", "float") == "warm" and typed("3.5", "int") == "3.5"
    assert typed("maybe", "bool") == "maybe"


def test_rows_convert_and_empty_cells_are_missing(tmp_path: Path) -> None:
    spec = declare(tmp_path, "conv", "s")
    path = write_csv(
        tmp_path / "r.csv",
        [
            {
                "dev": "P-001",
                "t": "1700000000.5",
                "temp": "20.25",
                "count": "",
                "ok": "yes",
                "mode": "eco",
                "note": "",
                "extra": "ignored",
            },
            {
                "dev": "P-001",
                "t": "1700000001",
                "temp": "20.5",
                "count": "4",
                "ok": "false",
                "mode": "boost",
                "note": "door 2",
            },
        ],
    )
    rec = load(path, spec, "none", NOW)
    assert rec.accepted == 2 and not rec.rejected
    first, second = payloads(rec)
    assert first == {
        "dev": "P-001",
        "t": 1700000000.5,
        "temp": 20.25,
        "ok": True,
        "mode": "eco",
        "event_id": "P-001-1",
        "schema": 1,
    }
    assert second["count"] == 4 and second["ok"] is False and second["note"] == "door 2"
    # The optional fields left out decode as None with the stream's own contract.
    from shared.contracts import decode

    event = decode(spec.event, rec.devices["P-001"].payloads[0])
    assert event.count is None and event.note is None  # type: ignore[attr-defined]


def test_a_declared_source_column_is_read_instead_of_the_field_name() -> None:
    assert (
        source_column("temp", FieldDecl(type="float", column="Temperature (C)"))
        == "Temperature (C)"
    )
    assert source_column("temp", FieldDecl(type="float")) == "temp"


def test_event_ids_come_from_the_file_or_device_and_row(tmp_path: Path) -> None:
    spec = declare(tmp_path, "ids", "s")
    path = write_csv(
        tmp_path / "r.csv",
        [
            {
                "event_id": "",
                "dev": "P-002",
                "t": "1700000000",
                "temp": "1",
                "ok": "1",
                "mode": "eco",
            },
            {
                "event_id": "mine-7",
                "dev": "P-002",
                "t": "1700000001",
                "temp": "1",
                "ok": "1",
                "mode": "eco",
            },
        ],
    )
    rec = load(path, spec, "none", NOW)
    assert [p["event_id"] for p in payloads(rec)] == ["P-002-1", "mine-7"]
    long = "D" * 64
    assert len(event_id_for(long, 123456)) <= 64
    assert event_id_for(long, 1) == event_id_for(long, 1) != event_id_for(long, 2)


# --- time ---------------------------------------------------------------------------------


def _rows_at(times: list[Any], dev: str = "P-003") -> list[dict[str, Any]]:
    return [{"dev": dev, "t": t, "temp": "1.0", "ok": "true", "mode": "eco"} for t in times]


def test_rebase_now_in_seconds_keeps_relative_timing(tmp_path: Path) -> None:
    spec = declare(tmp_path, "secs", "s")
    path = write_csv(tmp_path / "r.csv", _rows_at(["1700000000.25", "1700000002.75"]))
    rec = load(path, spec, "now", NOW)
    ts = [p["t"] for p in payloads(rec)]
    assert ts == [NOW, NOW + 2.5]
    assert list(rec.devices["P-003"].due) == [0.0, 2.5]


def test_rebase_now_in_milliseconds_is_exact(tmp_path: Path) -> None:
    spec = declare(tmp_path, "millis", "ms")
    path = write_csv(tmp_path / "r.csv", _rows_at(["1700000000123", "1700000001124"]))
    rec = load(path, spec, "now", NOW + 0.0004)
    ts = [p["t"] for p in payloads(rec)]
    assert all(isinstance(t, int) for t in ts)
    assert ts == [1_800_000_000_000, 1_800_000_001_001]


def test_rebase_now_in_iso8601_keeps_the_zone(tmp_path: Path) -> None:
    spec = declare(tmp_path, "isot", "iso8601")
    path = write_csv(
        tmp_path / "r.csv", _rows_at(["2024-03-01T10:00:00+01:00", "2024-03-01T10:00:01.500+01:00"])
    )
    rec = load(path, spec, "now", NOW)
    ts = [p["t"] for p in payloads(rec)]
    moments = [datetime.fromisoformat(t) for t in ts]
    assert moments[0].timestamp() == NOW
    assert (moments[1] - moments[0]).total_seconds() == 1.5
    assert all(t.endswith("+01:00") for t in ts)
    # No zone means UTC, and stays without one.
    path = write_csv(tmp_path / "naive.csv", _rows_at(["2024-03-01T09:00:00"]))
    naive = payloads(load(path, spec, "now", NOW))[0]["t"]
    assert datetime.fromisoformat(naive).replace(tzinfo=UTC).timestamp() == NOW


def test_rebase_end_puts_the_last_time_at_now_and_none_keeps_times(tmp_path: Path) -> None:
    spec = declare(tmp_path, "ends", "s")
    path = write_csv(tmp_path / "r.csv", _rows_at(["1700000000", "1700000010"]))
    assert [p["t"] for p in payloads(load(path, spec, "end", NOW))] == [NOW - 10, NOW]
    assert [p["t"] for p in payloads(load(path, spec, "none", NOW))] == [1700000000.0, 1700000010.0]


# --- rejections ---------------------------------------------------------------------------


def test_rows_that_fail_the_contract_are_counted_with_the_field(tmp_path: Path) -> None:
    spec = declare(tmp_path, "rej", "s")
    good = {"dev": "P-004", "t": "1700000000", "temp": "1.5", "ok": "true", "mode": "eco"}
    path = write_csv(
        tmp_path / "r.csv",
        [
            good,
            {**good, "temp": "warm"},  # row 2: not a number
            {**good, "mode": "turbo"},  # row 3: not an enum value
            {**good, "ok": ""},  # row 4: required and empty
            {**good, "t": "yesterday"},  # row 5: not a time
            {**good, "dev": "bad id"},  # row 6: no MQTT login
            {**good, "dev": "Q-001"},  # row 7: outside the device pattern
            {**good, "temp": "warmer"},  # row 8: same reason as row 2
            {**good, "dev": ""},  # row 9: no device at all
        ],
    )
    rec = load(path, spec, "now", NOW)
    assert rec.accepted == 1 and rec.rows == 9
    reasons = rec.rejected
    assert sum(reasons.values()) == 8
    by_field: dict[str, int] = {}
    for r, n in reasons.items():
        field = r.rsplit("(at ", 1)[-1].rstrip(")")
        by_field[field] = by_field.get(field, 0) + n
    assert by_field == {"temp": 2, "mode": 1, "ok": 1, "t": 1, "dev": 3}
    float_reason = next(r for r in reasons if "(at temp)" in r)
    assert reasons[float_reason] == 2 and rec.first_row[float_reason] == 2
    assert "Expected `float`" in float_reason
    assert rec.no_device.rows == 1


def test_jsonl_lines_that_are_not_objects_are_rejected(tmp_path: Path) -> None:
    spec = declare(tmp_path, "jl", "s")
    path = tmp_path / "r.jsonl"
    path.write_text(
        json.dumps({"dev": "P-005", "t": 1700000000, "temp": 2, "ok": True, "mode": "eco"})
        + "\n\n[1, 2]\n{not json\n"
    )
    rec = load(path, spec, "none", NOW)
    assert rec.accepted == 1
    assert payloads(rec)[0]["temp"] == 2.0  # an int where a float is declared
    assert dict(rec.no_device.rejected) == {"not a JSON object": 1, "not valid JSON": 1}


def test_parquet_is_read_when_pyarrow_is_there(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    spec = declare(tmp_path, "pq", "ms")
    table = pa.table(
        {
            "dev": ["P-006", "P-006"],
            "t": [1700000000000, 1700000000500],
            "temp": [1.0, 2.0],
            "count": [None, 3],
            "ok": [True, False],
            "mode": ["eco", "boost"],
        }
    )
    pq.write_table(table, tmp_path / "r.parquet")
    rec = load(tmp_path / "r.parquet", spec, "now", NOW)
    assert rec.accepted == 2 and [p.get("count") for p in payloads(rec)] == [None, 3]


def test_parquet_without_pyarrow_names_the_package(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    (tmp_path / "r.parquet").write_bytes(b"PAR1")
    with pytest.raises(ReplayError, match="pyarrow"):
        list(read_rows(tmp_path / "r.parquet", "parquet"))


def test_a_built_in_stream_is_refused(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "r.csv", _rows_at(["1"]))
    with pytest.raises(ReplayError, match="built in"):
        load(path, streams.get("telemetry"), "now", NOW)


# --- the reefer recording: dry run, trainer, labels ----------------------------------------

REEFER_COLUMNS = [
    "unit",
    "t",
    "box_temp_c",
    "setpoint_c",
    "compressor_kw",
    "door",
    "driver",
    "lat",
    "lon",
]


@pytest.fixture
def reefer(tmp_path: Path) -> tuple[streams.StreamSpec, Path, Any]:
    directory = tmp_path / "streams"
    write_declaration(directory)
    streams.use_declarations(directory)
    g = generate(devices=4, events=60)
    rows = [{c: p[c] for c in REEFER_COLUMNS} for _, p in g.messages]
    return streams.get("reefer"), write_csv(tmp_path / "reefer.csv", rows), g


def test_dry_run_output_is_what_cloud_train_reads(reefer: Any, tmp_path: Path) -> None:
    spec, path, g = reefer
    rec = load(path, spec, "now", NOW)
    out = tmp_path / "events.jsonl"
    written = write_dry_run(rec, out)
    assert sum(written.values()) == rec.accepted == len(g.messages)
    lines = list(read_events_file(out))
    assert len(lines) == len(g.messages)
    assert lines == list(events(rec))
    assert all(topic.startswith("fleet/RT-") and topic.endswith("/reefer") for topic, _ in lines)
    ts = [msgspec.json.decode(p)["t"] for _, p in lines]
    assert ts == sorted(ts) and ts[0] == int(NOW * 1000)
    # The trainer anonymizes them as the gateway would, refusing none.
    records = records_from_messages(lines, [])["reefer"]
    assert len(records) == len(g.messages) and records.rejected == 0


def test_paced_order_keeps_each_devices_file_order(tmp_path: Path) -> None:
    spec = declare(tmp_path, "order", "s")
    rows = _rows_at(["100", "105", "103", "110"], "P-007") + _rows_at(["104"], "P-008")
    rec = load(write_csv(tmp_path / "r.csv", rows), spec, "none", NOW)
    # P-007's third row was recorded before its second: it follows it, at once.
    assert list(rec.devices["P-007"].due) == [0.0, 5.0, 5.0, 10.0]
    order = [(d.device, json.loads(d.payloads[i])["t"]) for d, i in rec.in_time_order()]
    assert order == [
        ("P-007", 100.0),
        ("P-008", 104.0),
        ("P-007", 105.0),
        ("P-007", 103.0),
        ("P-007", 110.0),
    ]
    fleet = ReplayFleet(rec, speed=10.0)
    fleet.started_at = 0.0
    out: list[Any] = []
    fleet._due(4.5, out)  # 4.5 recorded seconds in (0.45 s of wall time at speed 10)
    assert [e.vehicle for e in out] == [0, 1]
    fleet._due(100.0, out)
    assert fleet.done and fleet.handed_out == 5


def test_full_speed_fills_each_device_up_to_its_room(tmp_path: Path) -> None:
    spec = declare(tmp_path, "fill", "s")
    rows = _rows_at([str(100 + i) for i in range(10)], "P-009") + _rows_at(["100"], "P-010")
    rec = load(write_csv(tmp_path / "r.csv", rows), spec, "none", NOW)
    fleet = ReplayFleet(rec, speed=None)
    fleet.room = lambda i: 4
    first = fleet.step()
    assert [e.vehicle for e in first] == [0] * 4 + [1]
    assert len(fleet.step()) == 4 and len(fleet.step()) == 2 and fleet.done


def test_labels_by_event_and_by_time_range(reefer: Any, tmp_path: Path) -> None:
    spec, path, g = reefer
    rt3 = next(n for n, (_, p) in enumerate(g.messages, 1) if p["unit"] == "RT-0003")
    labels_csv = tmp_path / "labels.csv"
    labels_csv.write_text(
        "device,start,end,kind,event_id\n"
        "RT-0001,2026-01-05T08:01:00Z,2026-01-05T08:02:00Z,compressor_failure,\n"
        "RT-0002,1767600000000,1767600030000,sensor_spike,\n"
        f",,,door_left_open,RT-0003-{rt3}\n"
        "RT-0009,1767600000000,1767600030000,ghost,\n"
    )
    assert spec.declaration is not None
    label_set = read_labels(labels_csv, spec.declaration)
    rec = load(path, spec, "now", NOW, on_accepted=label_set.match)
    labels = label_set.labels(rec.rebase.offset_s)
    assert label_set.unmatched == ["RT-0009@2026-01-05T08:00:00Z"]
    by_kind: dict[str, list[Any]] = {}
    for lab in labels:
        by_kind.setdefault(lab.kind, []).append(lab)
    # Which rows the ranges cover, from the recording itself (recorded ms).
    recorded = {f"{p['unit']}-{n}": (p["unit"], p["t"]) for n, (_, p) in enumerate(g.messages, 1)}
    expect_cf = {
        e
        for e, (u, t) in recorded.items()
        if u == "RT-0001" and 1767600060000 <= t <= 1767600120000
    }
    assert {lab.event_id for lab in by_kind["compressor_failure"]} == expect_cf
    assert len(by_kind["sensor_spike"]) >= 1
    assert [lab.event_id for lab in by_kind["door_left_open"]] == [f"RT-0003-{rt3}"]
    cf = by_kind["compressor_failure"][0]
    assert cf.stream == "reefer"
    assert cf.start_ts == pytest.approx(1767600060.0 + rec.rebase.offset_s)
    assert cf.end_ts - cf.start_ts == pytest.approx(60.0)
    # The repository's labels file, as the trainer and `fleetsentry eval` read it.
    from firmware_sim.replay_labels import write_labels

    write_labels(tmp_path / "labels.jsonl", labels)
    assert read_labels_file(tmp_path / "labels.jsonl") == labels


def test_a_labels_row_without_a_kind_or_a_target_is_an_error(reefer: Any, tmp_path: Path) -> None:
    spec, _, _ = reefer
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"event_id": "x"}\n')
    with pytest.raises(ReplayError, match=r"bad.jsonl:1: no kind"):
        read_labels(bad, spec.declaration)
    bad.write_text('{"kind": "x", "device": "RT-0001", "start": "later", "end": 3}\n')
    with pytest.raises(ReplayError, match="start and end"):
        read_labels(bad, spec.declaration)


# --- the command --------------------------------------------------------------------------


def test_cli_dry_run_writes_events_labels_and_summary(reefer: Any, tmp_path: Path) -> None:
    _, path, g = reefer
    first = f"{g.messages[0][1]['unit']}-1"
    (tmp_path / "edge.toml").write_text(f'[streams]\ndir = "{tmp_path / "streams"}"\n')
    (tmp_path / "labels.jsonl").write_text(json.dumps({"event_id": first, "kind": "k"}) + "\n")
    out = tmp_path / "out" / "events.jsonl"
    result = CliRunner().invoke(
        sim,
        [
            "replay",
            str(path),
            "--stream",
            "reefer",
            "--config",
            str(tmp_path / "edge.toml"),
            "--dry-run",
            "--out",
            str(out),
            "--labels",
            str(tmp_path / "labels.jsonl"),
            "--summary-json",
            str(tmp_path / "summary.json"),
        ],
    )
    assert result.exit_code == 0, result.output
    assert len(list(read_events_file(out))) == len(g.messages)
    assert [lab.event_id for lab in read_labels_file(out.with_name("labels.jsonl"))] == [first]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["written"] == len(g.messages) and summary["rejected"] == 0
    assert {d["device"] for d in summary["per_device"]} == {f"RT-000{i}" for i in range(1, 5)}


def test_cli_fails_when_nothing_could_be_sent(tmp_path: Path) -> None:
    directory = tmp_path / "streams"
    write_declaration(directory)
    path = write_csv(tmp_path / "r.csv", [{"unit": "RT-0001", "t": "soon"}])
    result = CliRunner().invoke(
        sim,
        [
            "replay",
            str(path),
            "--stream",
            "reefer",
            "--streams-dir",
            str(directory),
            "--dry-run",
            "--out",
            str(tmp_path / "o.jsonl"),
        ],
    )
    assert result.exit_code != 0
    assert "nothing was written" in result.output and "(at t)" in result.output


def test_cli_names_unknown_streams(tmp_path: Path) -> None:
    directory = tmp_path / "streams"
    write_declaration(directory)
    path = write_csv(tmp_path / "r.csv", [{"unit": "RT-0001"}])
    result = CliRunner().invoke(
        sim,
        [
            "replay",
            str(path),
            "--stream",
            "reefr",
            "--streams-dir",
            str(directory),
            "--dry-run",
            "--out",
            str(tmp_path / "o.jsonl"),
        ],
    )
    assert result.exit_code == 2 and "unknown stream 'reefr'" in result.output


def test_declaration_text_parses() -> None:
    # The probe declaration used above is a valid one for each time unit.
    for unit in ("s", "ms", "iso8601"):
        load_text(probe_toml(f"p{unit[:2]}", unit), "p.toml")
    assert "reefer" in REEFER_TOML


def test_the_gateways_bridge_accepts_what_is_replayed(reefer: Any) -> None:
    from edge.bridge.errors import Rejected
    from edge.bridge.validate import Limits, validate

    spec, path, g = reefer
    limits = Limits.from_registry()
    rec = load(path, spec, "now", NOW)
    assert rec.span_s > 300  # longer than the bridge lets an event be ahead of its clock
    for d, i in rec.in_time_order():
        topic, payload = rec.topic(d.device), d.payloads[i]
        sent_at = NOW + d.due[i]  # at speed 1
        assert validate(topic, payload, sent_at, limits).vin == d.device
    # At full speed the last ones arrive from the bridge's future: --rebase end fixes that.
    last = max(rec.devices.values(), key=lambda d: d.due[-1])
    with pytest.raises(Rejected, match="future_timestamp"):
        validate(rec.topic(last.device), last.payloads[-1], NOW + 1, limits)
    end = load(path, spec, "end", NOW)
    for topic, payload in events(end):
        validate(topic, payload, NOW + 1, limits)
    # As recorded (January 2026), the same events are far too old for it.
    old = load(path, spec, "none", NOW)
    topic, payload = next(events(old))
    with pytest.raises(Rejected, match="too_old"):
        validate(topic, payload, NOW, limits)


def test_a_live_replay_warns_when_the_bridge_would_refuse_its_times(reefer: Any) -> None:
    import time as clock

    from firmware_sim.replay_cli import _warn_bridge_window
    from rich.console import Console

    spec, path, _ = reefer

    def warnings(rebase: RebaseMode, speed: float | None) -> str:
        console = Console(record=True, width=400)
        _warn_bridge_window(load(path, spec, rebase, clock.time()), speed, console)
        return console.export_text()

    assert "ahead" in warnings("now", None)  # ~10 minutes of recording at once
    assert warnings("now", 1.0) == "" and warnings("end", None) == ""
    assert "days old" in warnings("none", 1.0)
