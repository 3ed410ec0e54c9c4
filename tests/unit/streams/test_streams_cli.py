"""`fleetsentry streams infer` and `streams check`, through click."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from shared.declarations import load_file
from shared.declarations.cli import streams
from tests.unit.streams.test_infer import fleet_rows, write_csv


def test_infer_writes_a_declaration_that_checks(tmp_path: Path) -> None:
    recording = write_csv(tmp_path / "Trucks 2026.csv", fleet_rows())
    out = tmp_path / "decls" / "trucks.toml"
    out.parent.mkdir()
    result = CliRunner().invoke(
        streams, ["infer", str(recording), "--out", str(out), "--name", "trucks", "--sample", "300"]
    )
    assert result.exit_code == 0, result.output
    assert "trucks: 14 fields, 20 features" in result.output
    assert "from 300 rows" in result.output
    assert load_file(out).device.field == "car"
    again = CliRunner().invoke(streams, ["infer", str(recording), "--out", str(out)])
    assert again.exit_code == 1 and "--force" in again.output
    check = CliRunner().invoke(streams, ["check", str(out.parent)])
    assert check.exit_code == 0, check.output
    assert "trucks.toml: trucks  topic fleet/{car}/trucks  device car" in check.output
    assert "20 features  fs-" in check.output


def test_infer_to_standard_output_names_the_stream_after_the_file(tmp_path: Path) -> None:
    recording = write_csv(tmp_path / "Trucks 2026.csv", fleet_rows(4, 20))
    result = CliRunner().invoke(streams, ["infer", str(recording)])
    assert result.exit_code == 0, result.output
    assert 'name = "trucks_2026"' in result.output


def test_infer_refuses_an_unknown_format_and_missing_columns(tmp_path: Path) -> None:
    odd = tmp_path / "x.dat"
    odd.write_text("a,b\n1,2\n", encoding="utf-8")
    result = CliRunner().invoke(streams, ["infer", str(odd)])
    assert result.exit_code == 1 and "--format" in result.output
    result = CliRunner().invoke(streams, ["infer", str(odd), "--format", "csv", "--device", "nope"])
    assert result.exit_code == 1 and "--device 'nope': no such column" in result.output


def test_check_names_the_file_and_key_of_a_bad_declaration(tmp_path: Path) -> None:
    recording = write_csv(tmp_path / "trucks.csv", fleet_rows(4, 20))
    good = tmp_path / "decls" / "trucks.toml"
    good.parent.mkdir()
    assert CliRunner().invoke(streams, ["infer", str(recording), "--out", str(good)]).exit_code == 0
    bad = good.with_name("reefer.toml")
    bad.write_text(
        good.read_text(encoding="utf-8")
        .replace('name = "trucks"', 'name = "reefer"')
        .replace('topic = "trucks"', 'topic = "reefer"')
        .replace('coolant_temp = ["value"', 'coolant_tmp = ["value"'),
        encoding="utf-8",
    )
    result = CliRunner().invoke(streams, ["check", str(bad)])
    assert result.exit_code == 2
    assert "reefer.toml: features.coolant_tmp" in result.output
    assert "no field 'coolant_tmp'" in result.output
    result = CliRunner().invoke(streams, ["check", str(good.parent)])
    assert result.exit_code == 2 and "reefer.toml: features.coolant_tmp" in result.output
    taken = good.with_name("t.toml")
    taken.write_text(
        good.read_text(encoding="utf-8").replace('name = "trucks"', 'name = "telemetry"'),
        encoding="utf-8",
    )
    result = CliRunner().invoke(streams, ["check", str(taken)])
    assert result.exit_code == 2 and "t.toml: stream.name" in result.output
