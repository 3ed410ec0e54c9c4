"""A built-in stream's records in their own shape (``anon.telemetry``'s ``AnonTelemetry``,
``anon.payments``' ``AnonPayment``), from what the engine computes for its declaration.

Each field of the shape is found by its name: a token field of the declaration, one of the
record's own (``schema``, ``event_id``, ``ts``, ``cell``, ``features``), ``readings`` (every
number field that is no personal data, as the engine cleans a value: NaN 0, clipped to 1e6,
to 3 decimals), or a field of the event that is no personal data, as sent.
"""

from __future__ import annotations

import math
from typing import Any

import msgspec

from shared.contracts import AnonRecord
from shared.declarations.schema import Stream
from shared.errors import ConfigError
from shared.features.guard import BIG, fin

RECORD = ("schema", "event_id", "ts", "cell", "features")
READINGS = "readings"


def readings_fields(stream: Stream) -> list[str]:
    """The fields ``readings`` holds: every number field that is no personal data, but the
    device and time fields, in declaration order."""
    skip = {stream.device.field, stream.time.field}
    return [
        n
        for n, f in stream.fields.items()
        if f.pii is None and f.type in ("float", "int") and n not in skip
    ]


def sources(kind: type[msgspec.Struct], stream: Stream) -> list[tuple[str, str]]:
    """Per field of ``kind``: where its value comes from, ``(source, name)``; a ConfigError
    when the shape names a field the declaration makes personal data, or none at all."""
    tokens = stream.tokens
    by_token = {t: n for n, t in tokens.items()}
    out: list[tuple[str, str]] = []
    for name in kind.__struct_fields__:
        if name in by_token:
            out.append(("token", name))
        elif name in RECORD:
            out.append(("record", name))
        elif name == READINGS:
            out.append(("readings", name))
        elif name in stream.fields and stream.fields[name].pii is None:
            out.append(("event", name))
        else:
            raise ConfigError(
                f"stream {stream.name!r}: its record shape {kind.__name__} has {name!r}, "
                "which its declaration makes personal data or does not declare"
            )
    return out


def clean(value: Any) -> float:
    """A number as ``readings`` holds it (the engine's ``value``: NaN 0, within 1e6, 3 decimals)."""
    v = float(value) if value is not None else math.nan
    v = v if -BIG < v < BIG else fin(v)
    return math.floor(v * 1000 + 0.5) / 1000


class Shape:
    """How one stream's engine records become its own shape (build once per stream)."""

    def __init__(self, kind: type[msgspec.Struct], stream: Stream) -> None:
        self.kind = kind
        self.sources = sources(kind, stream)
        self.readings = readings_fields(stream)

    def of(self, event: Any, record: AnonRecord) -> Any:
        """``record`` (the engine's, of ``event``) in this shape."""
        out: dict[str, Any] = {}
        for source, name in self.sources:
            if source == "token":
                out[name] = record.tokens[name]
            elif source == "record":
                out[name] = getattr(record, name)
            elif source == "readings":
                out[name] = {n: clean(getattr(event, n)) for n in self.readings}
            else:
                out[name] = getattr(event, name)
        return self.kind(**out)
