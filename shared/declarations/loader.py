"""Load stream declarations: one TOML file per stream, validated before anything runs."""

from __future__ import annotations

import functools
import math
import re
import tomllib
from importlib import resources
from pathlib import Path
from typing import Any

import msgspec

from shared.declarations import features as feats
from shared.declarations.convert import convert
from shared.declarations.digest import feature_spec
from shared.declarations.errors import DeclarationError
from shared.declarations.schema import (
    THRESHOLD_MODES,
    EpisodeAlerts,
    FieldDecl,
    FileDecl,
    Stream,
    StreamDecl,
    TrainingDecl,
    token_field,
)
from shared.errors import ConfigError

NAME_PATTERN = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
FIELD_PATTERN = re.compile(r"^[a-z_][a-z0-9_]{0,63}$")
# Every event carries these (contracts.Event); a declaration does not repeat them.
ENVELOPE = ("schema", "event_id")
# The anonymized record's own fields, which no token field may take.
_ANON_TAKEN = ("schema", "event_id", "cell", "features", "readings")
_TIME_TYPES = {"s": ("float", "int"), "ms": ("float", "int"), "iso8601": ("str",)}


def load_text(text: str, source: str) -> Stream:
    """A stream from declaration text; ``source`` names it in errors (a file name)."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise DeclarationError(source, "", f"not valid TOML: {exc}") from None
    decl = convert(data, FileDecl, source, "")
    fields = {name: _field(source, name, body) for name, body in decl.fields.items()}
    for name in decl.stream.cell or ():
        if name in fields and fields[name].pii is None:  # the pair is personal data
            fields[name] = msgspec.structs.replace(fields[name], pii="cell")
    refs = {
        name: convert(body, dict[str, float], source, f"refs.{name}")
        for name, body in decl.refs.items()
    }
    _check_columns(source, fields)
    ctx = feats.Context(file=source, stream=decl.stream, fields=fields, refs=refs)
    _check_stream(ctx)
    _check_pii(ctx)
    features = feats.resolve(ctx, decl.features)
    if not features:
        raise DeclarationError(source, "features", "a stream needs at least one feature")
    head = decl.stream
    return Stream(
        source=source,
        name=head.name,
        topic=head.topic or head.name,
        device=head.device,
        time=head.time,
        alerts=head.alerts,
        decision=head.decision,
        cell=head.cell,
        anon_key=head.anon_key or head.device.field,
        person=head.person,
        fields=fields,
        refs=refs,
        features=tuple(features),
        feature_spec=feature_spec(head.device.field, features),
        training=_training(source, decl.training),
        interval_s=head.interval_s,
        shares=head.shares,
    )


def parse_threshold(text: str) -> tuple[str, float]:
    """``MODE=NUMBER`` as (mode, value); ValueError saying what is wrong."""
    mode, _sep, value = text.partition("=")
    mode = mode.strip()
    try:
        number = float(value)
    except ValueError:
        raise ValueError(
            f"{text!r}: expected MODE=NUMBER with MODE one of {', '.join(THRESHOLD_MODES)}"
        ) from None
    if mode not in THRESHOLD_MODES:
        raise ValueError(f"{text!r}: MODE must be one of {', '.join(THRESHOLD_MODES)}")
    if number < 0 or (mode != "false_episodes" and number >= 1) or number != number:
        raise ValueError(f"{text!r}: {mode} takes a number from 0 (below 1 but for episodes)")
    return mode, number


def _training(source: str, training: TrainingDecl) -> TrainingDecl:
    try:
        parse_threshold(training.threshold)
    except ValueError as exc:
        raise DeclarationError(source, "training.threshold", str(exc)) from None
    if not training.input_range > 0:
        raise DeclarationError(source, "training.input_range", "must be above 0")
    return training


def load_file(path: str | Path) -> Stream:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DeclarationError(path.name, "", f"cannot read {path}: {exc}") from None
    return load_text(text, path.name)


def load_dir(directory: str | Path) -> dict[str, Stream]:
    """Every ``*.toml`` of ``directory`` (by file name), keyed by stream name.

    Two streams with the same name or MQTT topic suffix are refused, naming both files.
    """
    if not Path(directory).is_dir():
        raise ConfigError(
            f"no stream declaration directory {directory}: create it, or "
            "point the setting at the one holding the *.toml declarations"
        )
    paths = sorted(Path(directory).glob("*.toml"))
    return _unique([load_file(p) for p in paths])


@functools.cache
def builtin() -> dict[str, Stream]:
    """The streams shipped in the package (``shared/declarations/builtin``), loaded once."""
    folder = resources.files("shared.declarations") / "builtin"
    loaded = [
        load_text(item.read_text(encoding="utf-8"), item.name)
        for item in sorted(folder.iterdir(), key=lambda i: i.name)
        if item.name.endswith(".toml")
    ]
    return _unique(loaded)


def _unique(loaded: list[Stream]) -> dict[str, Stream]:
    by_name: dict[str, Stream] = {}
    by_topic: dict[str, Stream] = {}
    for stream in loaded:
        for seen, key, what in ((by_name, stream.name, "name"), (by_topic, stream.topic, "topic")):
            other = seen.get(key)
            if other is not None:
                raise DeclarationError(
                    stream.source,
                    f"stream.{what}",
                    f"{key!r} is already declared by {other.source}",
                )
            seen[key] = stream
    return by_name


def _field(source: str, name: str, body: Any) -> FieldDecl:
    key = f"fields.{name}"
    if not FIELD_PATTERN.match(name):
        raise DeclarationError(source, key, f"a field name matches {FIELD_PATTERN.pattern}")
    if name in ENVELOPE:
        raise DeclarationError(
            source, key, f"every event carries {', '.join(ENVELOPE)}: do not declare them"
        )
    decl = convert(body, FieldDecl, source, key)
    if decl.range is not None and not decl.range[0] < decl.range[1]:
        raise DeclarationError(
            source, f"{key}.range", f"lo must be below hi, got {list(decl.range)}"
        )
    if (decl.type == "enum") != (decl.values is not None):
        raise DeclarationError(
            source, f"{key}.values", "an enum field lists its values, and only an enum field does"
        )
    if decl.values is not None and (not decl.values or len(set(decl.values)) < len(decl.values)):
        raise DeclarationError(source, f"{key}.values", "values must be distinct, at least one")
    if decl.pattern is not None:
        if decl.type != "str":
            raise DeclarationError(source, f"{key}.pattern", "only a str field has a pattern")
        _regex(source, f"{key}.pattern", decl.pattern)
    if (decl.token_field or decl.token_kind) and decl.pii != "token":
        raise DeclarationError(source, key, 'token_field and token_kind need pii = "token"')
    if decl.typical_std is not None and not decl.typical_std > 0:
        raise DeclarationError(source, f"{key}.typical_std", "must be above 0")
    return decl


def _check_columns(source: str, fields: dict[str, FieldDecl]) -> None:
    """Each recording column fills one field: no two fields read the same column."""
    seen: dict[str, str] = {}
    for name, decl in fields.items():
        column = decl.column or name
        if decl.column is not None and not decl.column:
            raise DeclarationError(source, f"fields.{name}.column", "a column name is not empty")
        if column in seen:
            raise DeclarationError(
                source,
                f"fields.{name}.column",
                f"column {column!r} is already read by field {seen[column]!r}",
            )
        seen[column] = name


def _regex(source: str, key: str, pattern: str) -> None:
    try:
        re.compile(pattern)
    except re.error as exc:
        raise DeclarationError(source, key, f"not a valid regular expression: {exc}") from None


def _check_stream(ctx: feats.Context) -> None:
    head: StreamDecl = ctx.stream
    for key, value in (("stream.name", head.name), ("stream.topic", head.topic)):
        if value is not None and not NAME_PATTERN.match(value):
            raise ctx.fail(key, f"{value!r} does not match {NAME_PATTERN.pattern}")
    device = ctx.field(head.device.field, "stream.device.field")
    if device.type != "str" or not device.required:
        raise ctx.fail(
            "stream.device.field",
            f"the device field {head.device.field!r} must "
            f"be a required str (it is {device.type!r})",
        )
    if device.pii not in (None, "token"):
        raise ctx.fail(
            "stream.device.field",
            'the device field is either not personal or tokenized (pii = "token")',
        )
    _regex(ctx.file, "stream.device.pattern", head.device.pattern)
    time = ctx.field(head.time.field, "stream.time.field")
    if time.type not in _TIME_TYPES[head.time.unit] or not time.required:
        raise ctx.fail(
            "stream.time.field",
            f"a time in {head.time.unit!r} is a required "
            f"{' or '.join(_TIME_TYPES[head.time.unit])} field, "
            f"not {time.type!r}",
        )
    if isinstance(head.alerts, EpisodeAlerts):
        _check_episodes(ctx)
        if head.decision:
            raise ctx.fail(
                "stream.decision",
                "a decision answers each event as it is scored: it needs alerts = "
                '{ kind = "event" }, not episodes',
            )
    if head.person is not None:
        ctx.field(head.person, "stream.person")
    if head.interval_s is not None and not (0 < head.interval_s < math.inf):
        raise ctx.fail("stream.interval_s", f"{head.interval_s} is no number of seconds above 0")
    if head.anon_key is not None:
        decl = ctx.field(head.anon_key, "stream.anon_key")
        if decl.pii != "token":
            raise ctx.fail("stream.anon_key", "the anonymized key is a tokenized field")
    if head.shares is not None:
        _check_shares(ctx, head.shares)


def _check_shares(ctx: feats.Context, name: str) -> None:
    from shared.declarations.named import SHARED

    shared = SHARED.get(name)
    if shared is None:
        raise ctx.fail("stream.shares", f"{name!r} is no shared state; known: {sorted(SHARED)}")
    device = ctx.fields[ctx.stream.device.field]
    if (ctx.stream.device.field, device.pii, device.token_kind or shared.field) != (
        shared.field,
        "token",
        shared.token_kind,
    ):
        raise ctx.fail(
            "stream.shares",
            f"the {name}'s state is kept by its {shared.field}: the device field must be "
            f'{shared.field} = {{ pii = "token", token_kind = "{shared.token_kind}" }}',
        )
    for field, types in shared.reads.items():
        decl = ctx.fields.get(field)
        if decl is None or decl.type not in types or not decl.required:
            raise ctx.fail(
                "stream.shares",
                f"the {name}'s state keeps {field}: it must be a required "
                f"{' or '.join(types)} field",
            )


def _check_episodes(ctx: feats.Context) -> None:
    alerts = ctx.stream.alerts
    assert isinstance(alerts, EpisodeAlerts)
    for key in ("open_events", "window_s", "quiet_s"):
        if not getattr(alerts, key) > 0:
            raise ctx.fail(f"stream.alerts.{key}", "must be above 0")


def _check_pii(ctx: feats.Context) -> None:
    pair = ctx.stream.cell
    marked = [n for n, f in ctx.fields.items() if f.pii == "cell"]
    if pair is not None:
        for i, name in enumerate(pair):
            decl = ctx.field(name, f"stream.cell[{i}]")
            if decl.type != "float" or decl.pii not in (None, "cell"):
                raise ctx.fail(
                    f"stream.cell[{i}]",
                    f"{name!r} must be a float field without another pii setting",
                )
        if pair[0] == pair[1]:
            raise ctx.fail("stream.cell", "latitude and longitude are two fields")
    for name in marked:
        if pair is None or name not in pair:
            hint = ", ".join(f'"{n}"' for n in marked) if len(marked) == 2 else '"<lat>", "<lon>"'
            raise ctx.fail(
                f"fields.{name}.pii",
                'pii = "cell" is for the latitude and '
                "longitude pair named, in that order, in "
                f"[stream] cell = [{hint}]",
            )
    taken: dict[str, str] = {}
    for name, decl in ctx.fields.items():
        if decl.pii != "token":
            continue
        out = token_field(name, decl)
        if not FIELD_PATTERN.match(out):
            raise ctx.fail(
                f"fields.{name}.token_field", f"{out!r} does not match {FIELD_PATTERN.pattern}"
            )
        if out in taken or out in ctx.fields or out in _ANON_TAKEN:
            raise ctx.fail(
                f"fields.{name}.token_field", f"{out!r} is taken (by a field or another token)"
            )
        taken[out] = name
