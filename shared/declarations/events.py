"""A declared stream's event contract: a msgspec struct built once from its declaration.

The bridge decodes every message of the stream with it (one decoder per stream, built at
start-up), so a wrong type, a missing required field, a value outside an enum or a string
not matching its pattern is refused with the field named, as for the built-in contracts.
A ``range`` is not a validity check: a value outside it is exactly what an anomaly model is
there to see, so it reaches the model clipped (see the ``value`` transform).

>>> from shared.declarations import load_text
>>> s = load_text('''
... [stream]
... name = "door"
... device = { field = "unit", pattern = "^[A-Z0-9-]{4,32}$" }
... time = { field = "t", unit = "ms" }
... [fields]
... unit = { type = "str" }
... t = { type = "int" }
... opens = { type = "int" }
... [features]
... opens = ["value"]
... ''', "door.toml")
>>> from shared.contracts import decode
>>> decode(event_struct(s), b'{"event_id":"e1","unit":"BUS-7","t":1767600000123,"opens":2}').opens
2
>>> event_time(s, decode(event_struct(s), b'{"event_id":"e1","unit":"BUS-7","t":1767600000123,"opens":2}'))
1767600000.123
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from shared.contracts import SCHEMA_VERSION, EventId
from shared.declarations.schema import FieldDecl, Stream
from shared.declarations.transforms import to_seconds

# A string field's longest value: events are small, and no field needs more.
MAX_STR = 256

_cache: dict[bytes, type[msgspec.Struct]] = {}


def _type(decl: FieldDecl, pattern: str | None) -> Any:
    if decl.type == "float":
        return float
    if decl.type == "int":
        return int
    if decl.type == "bool":
        return bool
    if decl.type == "enum":
        return Literal[tuple(decl.values or ())]
    meta = (
        Meta(min_length=1, max_length=MAX_STR, pattern=pattern)
        if pattern
        else Meta(min_length=1, max_length=MAX_STR)
    )
    return Annotated[str, meta]


def event_struct(stream: Stream) -> type[msgspec.Struct]:
    """The stream's event type (built once per declaration)."""
    key = msgspec.json.encode(stream)
    kind = _cache.get(key)
    if kind is not None:
        return kind
    spec: list[Any] = [("schema", int, SCHEMA_VERSION), ("event_id", EventId)]
    for name, decl in stream.fields.items():
        pattern = stream.device.pattern if name == stream.device.field else decl.pattern
        kind_ = _type(decl, pattern)
        if name == stream.time.field and stream.time.unit != "iso8601":
            kind_ = Annotated[kind_, Meta(gt=0)]
        if decl.required:
            spec.append((name, kind_))
        else:
            spec.append((name, kind_ | None, None))
    kind = msgspec.defstruct(f"{stream.name.capitalize()}Event", spec, kw_only=True, frozen=True)
    _cache[key] = kind
    return kind


def event_time(stream: Stream, event: Any) -> float:
    """The event's device time in epoch seconds; ValueError when it is not a time."""
    seconds = to_seconds(getattr(event, stream.time.field), stream.time.unit)
    if not math.isfinite(seconds):
        raise ValueError(f"field {stream.time.field}: not a finite time")
    return seconds


def device_of(stream: Stream, event: Any) -> str:
    value: str = getattr(event, stream.device.field)
    return value
