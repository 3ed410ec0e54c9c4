"""Loading declarations: a stream that exists only here, and every refusal, by file and key."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.declarations import DeclarationError, load_dir, load_file, load_text
from shared.declarations.schema import EpisodeAlerts
from shared.errors import ConfigError

REEFER = """
[stream]
name = "reefer"
topic = "cold"
device = { field = "unit", pattern = "^[A-Z0-9-]{4,32}$" }
time = { field = "t", unit = "ms" }
alerts = { kind = "episodes", open_events = 3, window_s = 20, quiet_s = 60 }
cell = ["lat", "lon"]

[fields]
unit = { type = "str", label = "Refrigeration unit" }
t = { type = "int", unit = "ms" }
box_temp_c = { type = "float", unit = "°C", range = [-40, 40], label = "Box temperature", typical_std = 2.0 }
setpoint_c = { type = "float", unit = "°C", label = "Setpoint" }
door = { type = "enum", values = ["closed", "open"], label = "Door" }
driver = { type = "str", pii = "token" }
lat = { type = "float", pii = "cell" }
lon = { type = "float", pii = "cell" }

[features]
box_temp_c = ["value", "zscore", "rate", "stuck"]
box_over_setpoint = { diff = ["box_temp_c", "setpoint_c"], then = ["value", "zscore"] }
door = ["onehot"]
gap_s = "gap"
"""


def _write(tmp_path: Path, text: str, name: str = "reefer.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_a_declaration_written_here_loads(tmp_path: Path) -> None:
    stream = load_file(_write(tmp_path, REEFER))
    assert (stream.name, stream.topic, stream.source) == ("reefer", "cold", "reefer.toml")
    assert stream.mqtt_topic("RF-0042") == "fleet/RF-0042/cold"
    assert (stream.raw_topic, stream.anon_topic, stream.scores_topic) == (
        "raw.reefer",
        "anon.reefer",
        "scores.reefer",
    )
    assert (stream.device.field, stream.device.pattern) == ("unit", "^[A-Z0-9-]{4,32}$")
    assert (stream.time.field, stream.time.unit) == ("t", "ms")
    assert stream.alerts == EpisodeAlerts(open_events=3, window_s=20.0, quiet_s=60.0)
    assert stream.decision is False
    assert stream.pii_fields == {"driver", "lat", "lon"}
    assert stream.tokens == {"driver": "driver_token"}
    assert stream.token_kind("driver") == "driver"
    assert stream.cell == ("lat", "lon")
    assert stream.anon_key == "unit"
    assert stream.feature_names == [
        "box_temp_c",
        "box_temp_c_z",
        "box_temp_c_rate",
        "box_temp_c_stuck",
        "box_over_setpoint",
        "box_over_setpoint_z",
        "door_closed",
        "door_open",
        "gap_s",
    ]
    value, z = stream.features[0], stream.features[1]
    assert value.params == {"scale": "linear", "range": [-40.0, 40.0]}
    assert z.params == {"alpha": 0.05, "limit": 20.0, "floor": 0.05, "typical_std": 2.0}
    derived = stream.features[5]
    assert (derived.transform, derived.inputs, derived.then) == (
        "diff",
        ("box_temp_c", "setpoint_c"),
        "zscore",
    )
    assert stream.features[7].params == {"values": ["closed", "open"]}
    assert [f.label for f in stream.features] == [
        "Box temperature",
        "Box temperature vs device's rolling mean",
        "Box temperature rate of change",
        "Events in a row box temperature repeated the exact same value",
        "Box temperature minus setpoint",
        "Box temperature minus setpoint vs device's rolling mean",
        "Door: closed",
        "Door: open",
        "Time since the device's previous event",
    ]
    # Pinned: the digest of a declaration is the same on every machine and every release.
    assert stream.feature_spec == "fs-7b15a4d9a88a"


def test_text_and_file_give_the_same_stream(tmp_path: Path) -> None:
    assert load_file(_write(tmp_path, REEFER)) == load_text(REEFER, "reefer.toml")


def _refused(text: str, tmp_path: Path) -> str:
    with pytest.raises(DeclarationError) as info:
        load_file(_write(tmp_path, text))
    assert isinstance(info.value, ConfigError)
    assert info.value.file == "reefer.toml"
    return str(info.value)


REFUSALS = [
    # (what to replace in REEFER, with what, the message's start)
    (
        '["value", "zscore", "rate", "stuck"]',
        '["value", "zscorr"]',
        "reefer.toml: features.box_temp_c[1]: unknown transform 'zscorr' (known: value, zscore",
    ),
    (
        'gap_s = "gap"',
        "gap_s = { gapp = true }",
        "reefer.toml: features.gap_s.gapp: unknown transform or parameter 'gapp'",
    ),
    ('gap_s = "gap"', 'gap_s = "zscore"', "reefer.toml: features.gap_s: 'zscore' needs inputs"),
    (
        '"box_temp_c", "setpoint_c"]',
        '"box_temp_c", "setpont_c"]',
        "reefer.toml: features.box_over_setpoint.diff[1]: no field 'setpont_c' "
        "(declared: unit, t, box_temp_c, setpoint_c, door, driver, lat, lon)",
    ),
    (
        'box_temp_c = ["value"',
        'box_tmp_c = ["value"',
        "reefer.toml: features.box_tmp_c: no field 'box_tmp_c'",
    ),
    (
        'gap_s = "gap"',
        'driver = ["value"]',
        "reefer.toml: features.driver: 'driver' is personal data (pii = 'token') and can never "
        "be a feature input",
    ),
    (
        'gap_s = "gap"',
        'lat_z = { zscore = "lat" }',
        "reefer.toml: features.lat_z.zscore: 'lat' is personal data (pii = 'cell')",
    ),
    (
        'gap_s = "gap"',
        'far = { diff = ["box_temp_c", "lon"] }',
        "reefer.toml: features.far.diff[1]: 'lon' is personal data",
    ),
    (
        'gap_s = "gap"',
        'door_z = { zscore = "door" }',
        "reefer.toml: features.door_z.zscore: 'zscore' needs a number; 'door' is 'enum'",
    ),
    (
        'gap_s = "gap"',
        'unit_rate = { rate = "unit" }',
        "reefer.toml: features.unit_rate.rate: 'rate' needs a number; 'unit' is 'str'",
    ),
    (
        'door = ["onehot"]',
        'temp = { onehot = "box_temp_c" }',
        "reefer.toml: features.temp.onehot: 'onehot' needs an enum field; 'box_temp_c' is 'float'",
    ),
    (
        "range = [-40, 40]",
        "range = [40, -40]",
        "reefer.toml: fields.box_temp_c.range: lo must be below hi, got [40.0, -40.0]",
    ),
    ("range = [-40, 40]", "range = [5, 5]", "reefer.toml: fields.box_temp_c.range: lo must"),
    (
        'field = "unit", pattern',
        'field = "unt", pattern',
        "reefer.toml: stream.device.field: no field 'unt'",
    ),
    (
        'field = "unit", pattern',
        'field = "t", pattern',
        "reefer.toml: stream.device.field: the device field 't' must be a required str",
    ),
    (
        'field = "t", unit = "ms"',
        'field = "time", unit = "ms"',
        "reefer.toml: stream.time.field: no field 'time'",
    ),
    (
        'field = "t", unit = "ms"',
        'field = "unit", unit = "ms"',
        "reefer.toml: stream.time.field: a time in 'ms' is a required float or int field, "
        "not 'str'",
    ),
    (
        'field = "t", unit = "ms"',
        'field = "t", unit = "iso8601"',
        "reefer.toml: stream.time.field: a time in 'iso8601' is a required str field",
    ),
    (
        '"^[A-Z0-9-]{4,32}$"',
        '"^[A-Z0-9-{4,32}$"',
        "reefer.toml: stream.device.pattern: not a valid regular expression",
    ),
    (
        'topic = "cold"',
        'topic = "cold"\ncolour = "blue"',
        "reefer.toml: stream.colour: unknown key (known: name, topic, device",
    ),
    (
        'label = "Door" }',
        'label = "Door", colour = "blue" }',
        "reefer.toml: fields.door.colour: unknown key (known: type, unit, range",
    ),
    (
        'pattern = "^[A-Z0-9-]{4,32}$" }',
        'pattern = "^[A-Z0-9-]{4,32}$", regex = "x" }',
        "reefer.toml: stream.device.regex: unknown key (known: field, pattern, noun)",
    ),
    (
        "quiet_s = 60 }",
        "quiet_s = 60, quiet = 1 }",
        "reefer.toml: stream.alerts.quiet: unknown key",
    ),
    ("[features]", "[extras]\na = 1\n[features]", "reefer.toml: extras: unknown key"),
    (
        'then = ["value", "zscore"] }',
        "alpha = 0.1 }",
        "reefer.toml: features.box_over_setpoint.alpha: parameter 'alpha' does not apply to 'diff'",
    ),
    (
        'type = "int", unit = "ms"',
        'type = "integer", unit = "ms"',
        "reefer.toml: fields.t.type: Invalid enum value 'integer' "
        "(one of: float, int, str, bool, enum)",
    ),
    (
        'driver = { type = "str", pii = "token" }',
        'driver = { type = "str", pii = "hash" }',
        "reefer.toml: fields.driver.pii: Invalid enum value 'hash' "
        "(one of: token, cell, vault, drop)",
    ),
    (
        'cell = ["lat", "lon"]\n',
        "",
        'reefer.toml: fields.lat.pii: pii = "cell" is for the latitude and longitude pair '
        'named, in that order, in [stream] cell = ["lat", "lon"]',
    ),
    ('name = "reefer"', 'name = "Reefer"', "reefer.toml: stream.name: 'Reefer' does not match"),
    ('values = ["closed", "open"], ', "", "reefer.toml: fields.door.values: an enum field"),
    (
        "[features]",
        '[features]\nbox_temp_c_z = { zscore = "setpoint_c" }',
        "reefer.toml: features.box_temp_c_z: two features are named 'box_temp_c_z'",
    ),
    ("[stream]", "[stream", "reefer.toml: not valid TOML"),
    (
        'then = ["value", "zscore"] }',
        'then = ["value", "zscore"], alpha = 0 }',
        "reefer.toml: features.box_over_setpoint.alpha: out of range: 0 < alpha <= 1",
    ),
    (
        'gap_s = "gap"',
        "gap_s = { gap = true, cap = -1 }",
        "reefer.toml: features.gap_s.cap: out of range: cap > 0",
    ),
    (
        'gap_s = "gap"',
        "frozen = { stuck = [] }",
        "reefer.toml: features.frozen.stuck: 'stuck' takes a field or a list of one or more",
    ),
    (
        'gap_s = "gap"',
        'rel = { ref_ratio = "box_temp_c", by = "setpoint_c", table = "x" }',
        "reefer.toml: features.rel.by: a reference table is keyed by a str, enum, int or bool",
    ),
    (
        'gap_s = "gap"',
        'rel = { ref_ratio = "box_temp_c", by = "driver", table = "x" }',
        "reefer.toml: features.rel.by: 'driver' is personal data",
    ),
    (
        'gap_s = "gap"',
        'rel = { ref_ratio = "box_temp_c", by = "door", table = "x" }',
        "reefer.toml: features.rel.table: no table 'x' in [refs] (declared: none)",
    ),
    (
        'pii = "token" }',
        'pii = "token", token_field = "Driver-Token" }',
        "reefer.toml: fields.driver.token_field: 'Driver-Token' does not match",
    ),
    (
        'pii = "token" }',
        'pii = "token", token_field = "cell" }',
        "reefer.toml: fields.driver.token_field: 'cell' is taken",
    ),
    (
        'driver = { type = "str", pii = "token" }',
        'driver = { type = "str", pii = "token" }\nevent_id = { type = "str" }',
        "reefer.toml: fields.event_id: every event carries schema, event_id",
    ),
    (
        'cell = ["lat", "lon"]',
        'cell = ["lat", "lon"]\nshares = "trailer"',
        "reefer.toml: stream.shares: 'trailer' is no shared state; known: ['vehicle']",
    ),
    (
        'cell = ["lat", "lon"]',
        'cell = ["lat", "lon"]\nshares = "vehicle"',
        "reefer.toml: stream.shares: the vehicle's state is kept by its vin: the device field "
        'must be vin = { pii = "token", token_kind = "vin" }',
    ),
]


@pytest.mark.parametrize(
    ("old", "new", "message"), REFUSALS, ids=[r[2].split(": ")[1] for r in REFUSALS]
)
def test_refusals_name_the_file_and_the_key(
    old: str, new: str, message: str, tmp_path: Path
) -> None:
    assert old in REEFER
    text = _refused(REEFER.replace(old, new, 1), tmp_path)
    assert text.startswith(message), text


def test_a_directory_refuses_two_streams_with_one_name_or_topic(tmp_path: Path) -> None:
    _write(tmp_path, REEFER)
    _write(tmp_path, REEFER.replace('topic = "cold"', 'topic = "frozen"'), "zz-copy.toml")
    with pytest.raises(
        DeclarationError,
        match=r"^zz-copy.toml: stream.name: 'reefer' is "
        r"already declared by reefer.toml$",
    ):
        load_dir(tmp_path)
    _write(tmp_path, REEFER.replace('name = "reefer"', 'name = "freezer"'), "zz-copy.toml")
    with pytest.raises(
        DeclarationError,
        match=r"^zz-copy.toml: stream.topic: 'cold' is "
        r"already declared by reefer.toml$",
    ):
        load_dir(tmp_path)


def test_the_documented_example_loads() -> None:
    page = (Path(__file__).resolve().parents[3] / "docs" / "streams.md").read_text()
    example = page.split("```toml\n", 1)[1].split("```", 1)[0]
    stream = load_text(example, "reefer.toml")
    assert stream.feature_names == [
        "box_temp_c",
        "box_temp_c_z",
        "box_temp_c_rate",
        "box_temp_c_stuck",
        "box_over_setpoint",
        "box_over_setpoint_z",
        "door_closed",
        "door_open",
        "compressor_load",
        "gap_s",
        "hour_sin",
        "hour_cos",
    ]
    assert stream.pii_fields == {"driver", "driver_phone", "lat", "lon"}
    assert stream.label("box_temp_c_z") == "Box temperature vs trailer's rolling mean"
    assert stream.label("gap_s") == "Time since the trailer's previous event"


def test_a_missing_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no stream declaration directory"):
        load_dir(tmp_path / "streams")


def test_the_cell_pair_is_personal_data_without_saying_so(tmp_path: Path) -> None:
    text = REEFER.replace('lat = { type = "float", pii = "cell" }', 'lat = { type = "float" }')
    text = text.replace(', pii = "cell" }', " }")
    assert 'pii = "cell"' not in text
    stream = load_file(_write(tmp_path, text))
    assert stream.pii_fields == {"driver", "lat", "lon"}
    assert stream.fields["lon"].pii == "cell"


def test_a_reference_table_feeds_ref_ratio(tmp_path: Path) -> None:
    text = REEFER.replace(
        'gap_s = "gap"',
        'box_vs_door = { ref_ratio = "box_temp_c", '
        'by = "door", table = "door_temp", missing = 1.0 }',
    )
    stream = load_file(_write(tmp_path, text + "\n[refs]\ndoor_temp = { open = 20, closed = 4 }\n"))
    feature = stream.features[-1]
    assert (feature.name, feature.transform, feature.inputs) == (
        "box_vs_door",
        "ref_ratio",
        ("box_temp_c",),
    )
    assert feature.params == {
        "by": "door",
        "table": "door_temp",
        "missing": 1.0,
        "values": {"closed": 4.0, "open": 20.0},
        "scale": "linear",
    }
    assert feature.label == "Box temperature vs its reference by door"


def test_a_directory_loads_every_declaration(tmp_path: Path) -> None:
    _write(tmp_path, REEFER)
    _write(
        tmp_path,
        REEFER.replace('name = "reefer"', 'name = "freezer"').replace('topic = "cold"', ""),
        "freezer.toml",
    )
    (tmp_path / "notes.txt").write_text("not a declaration")
    streams = load_dir(tmp_path)
    assert sorted(streams) == ["freezer", "reefer"]
    assert streams["freezer"].topic == "freezer"  # the topic suffix defaults to the name


def test_the_training_defaults_are_declared_and_checked(tmp_path: Path) -> None:
    """``[training]``: the trainer's default threshold rule and int8 input range come from the
    declaration (the built-in streams' from the shipped ones); a bad rule names its key."""
    from cloud.trainer.pipeline import TrainSettings
    from cloud.trainer.threshold import ThresholdRule
    from shared import streams

    settings = TrainSettings()
    assert settings.rule_for("telemetry") == ThresholdRule("false_episodes", 0.5)
    assert settings.rule_for("payments") == ThresholdRule("precision", 0.9)
    assert settings.input_range_for("payments") == 8.0
    base = REEFER
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "reefer.toml").write_text(base)
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "reefer.toml").write_text(
        base + '\n[training]\nthreshold = "false_episodes=2"\ninput_range = 6.0\n'
    )
    with streams.scoped():
        streams.use_declarations(tmp_path / "a")
        assert settings.rule_for("reefer") == ThresholdRule("alert_rate", 0.001)
        assert settings.input_range_for("reefer") == 8.0
    with streams.scoped():
        streams.use_declarations(tmp_path / "b")
        assert settings.rule_for("reefer") == ThresholdRule("false_episodes", 2.0)
        assert settings.input_range_for("reefer") == 6.0
    for bad, key in (
        ('threshold = "recall=0.9"', "training.threshold"),
        ('threshold = "alert_rate=2"', "training.threshold"),
        ("input_range = 0", "training.input_range"),
        ("epochs = 3", "training.epochs"),
    ):
        with pytest.raises(DeclarationError, match=rf"reefer.toml: {key}"):
            load_text(base + f"\n[training]\n{bad}\n", "reefer.toml")


VAN = """
[stream]
name = "van"
device = { field = "vin", pattern = "^[A-Z0-9]{17}$" }
time = { field = "ts", unit = "s" }
cell = ["lat", "lon"]
shares = "vehicle"

[fields]
vin = { type = "str", pii = "token" }
ts = { type = "float" }
lat = { type = "float" }
lon = { type = "float" }
model = { type = "str" }
fuel_pct = { type = "float" }
speed_kmh = { type = "float" }

[features]
speed_kmh = ["value", "zscore"]
"""


def test_a_stream_sharing_the_vehicles_state_keeps_what_payments_read(tmp_path: Path) -> None:
    assert load_text(VAN, "van.toml").shares == "vehicle"
    for old, new in (
        ('fuel_pct = { type = "float" }', 'fuel_pct = { type = "float", required = false }'),
        ('model = { type = "str" }', 'model = { type = "int" }'),
    ):
        text = _refused(VAN.replace(old, new), tmp_path)
        field = old.split(" ")[0]
        assert text.startswith(
            f"reefer.toml: stream.shares: the vehicle's state keeps {field}: it must be a required"
        ), text


def test_one_stream_keeps_the_vehicles_state(tmp_path: Path) -> None:
    # The shipped telemetry keeps it: a declared stream keeping it too would overwrite it.
    from shared import streams

    _write(tmp_path, VAN, "van.toml")
    with streams.scoped(), pytest.raises(DeclarationError) as info:
        streams.use_declarations(tmp_path)
    assert str(info.value).startswith(
        "van.toml: stream.shares: the vehicle's state is kept by stream 'telemetry' already"
    ), info.value
