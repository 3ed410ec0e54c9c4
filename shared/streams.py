"""Stream specs: each stream's contract, PII fields, tokens and topics, as the stages use them.

The built-in ``telemetry`` and ``payments`` specs are read from their shipped declarations,
with the two contracts each names (below). An operator's streams come from
declaration files (docs/streams.md): :func:`use_declarations` loads a directory at a
service's start-up and registers a spec per declared stream, whose event contract is built
from its declaration; the bridge, enricher, scorer and trainer then find it here beside the
built-in ones.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from shared import contracts as c
from shared.errors import ConfigError

if TYPE_CHECKING:
    from shared.declarations.schema import Stream


@dataclass(frozen=True)
class StreamSpec:
    """Everything stage code needs to know about one stream."""

    name: str
    event: type[msgspec.Struct]
    anon_event: type[msgspec.Struct]
    mqtt_suffix: str
    key_field: str
    pii_fields: frozenset[str]
    # PII field -> token field in the anonymized record.
    tokens: dict[str, str] = field(default_factory=dict)
    # Numeric, non-PII sensor/amount fields carried through and fed to models.
    numeric_fields: tuple[str, ...] = ()
    # A declared stream's declaration (None for the built-in streams, whose code is their own).
    declaration: Stream | None = None
    # The scorer answers each event with a decision to its device (approve or decline).
    decides: bool = False
    # The anon record's field its anon.* and scores.* records are keyed by, and its alerts.
    anon_key: str = "key"

    @property
    def device_field(self) -> str:
        """The field naming the device (the MQTT topic's middle level)."""
        return self.key_field

    def event_time(self, event: Any) -> float:
        """The event's device time in epoch seconds (ValueError when it is none)."""
        if self.declaration is None:
            ts: float = getattr(event, "ts")  # noqa: B009
            return ts
        from shared.declarations.events import event_time

        return event_time(self.declaration, event)

    @property
    def raw_topic(self) -> str:
        return f"raw.{self.name}"

    @property
    def anon_topic(self) -> str:
        return f"anon.{self.name}"

    @property
    def scores_topic(self) -> str:
        return f"scores.{self.name}"

    def mqtt_topic(self, vin: str) -> str:
        return f"fleet/{vin}/{self.mqtt_suffix}"

    def __post_init__(self) -> None:
        fields = set(self.event.__struct_fields__)
        unknown = (self.pii_fields | set(self.tokens) | set(self.numeric_fields)) - fields
        if unknown:
            raise ConfigError(
                f"stream {self.name!r} declares fields its event lacks: {sorted(unknown)}"
            )
        if self.key_field not in fields:
            raise ConfigError(f"stream {self.name!r}: key field {self.key_field!r} not in event")
        if self.decides and self.declaration is None and self.key_field not in self.tokens:
            raise ConfigError(
                f"stream {self.name!r} sends decisions but does not tokenize its device field "
                f"{self.key_field!r} (the scorer finds the device from that token)"
            )
        if self.anon_key not in self.anon_event.__struct_fields__:
            raise ConfigError(
                f"stream {self.name!r}: anon key {self.anon_key!r} not in its anon record"
            )


def _shipped(
    name: str, event: type[msgspec.Struct], anon_event: type[msgspec.Struct]
) -> StreamSpec:
    """A built-in stream's spec, from its shipped declaration (``shared/declarations/builtin``):
    its topic, device field, personal fields, tokens, readings and decision are the file's.
    Only its two contracts are named here: the struct the bridge decodes its events with (a
    test holds it to the declaration field by field) and the shape of its anon records, which
    the stages and models downstream read."""
    from shared.declarations.loader import builtin

    stream = builtin()[name]
    tokens = stream.tokens
    return StreamSpec(
        name=stream.name,
        event=event,
        anon_event=anon_event,
        mqtt_suffix=stream.topic,
        key_field=stream.device.field,
        pii_fields=stream.pii_fields,
        tokens=tokens,
        numeric_fields=_readings(stream),
        decides=stream.decision,
        anon_key=tokens[stream.anon_key or stream.device.field],
    )


def _readings(stream: Stream) -> tuple[str, ...]:
    """The stream's non-personal number fields but its time, in declaration order."""
    return tuple(
        n
        for n, f in stream.fields.items()
        if f.pii is None and f.type in ("float", "int", "bool") and n != stream.time.field
    )


# The scorer keys a stream's episode state ``<group id>@<stream>/<token>`` in scorer.episodes.
# Scorers before 0.2 keyed telemetry's ``<group id>/<token>``: a scorer reads such a key as this
# stream's, writes the state under the stream's key and deletes the old one.
BARE_EPISODE_KEYS = "telemetry"

_REGISTRY: dict[str, StreamSpec] = {}
_BUILTIN: dict[str, StreamSpec] = {}


def _builtins() -> dict[str, StreamSpec]:
    """The built-in specs, read from the shipped declarations on first use and registered
    first. Not at import: the declarations' loader imports the feature code, which imports
    this module."""
    if not _BUILTIN:
        _BUILTIN["telemetry"] = _shipped("telemetry", c.Telemetry, c.AnonTelemetry)
        _BUILTIN["payments"] = _shipped("payments", c.Payment, c.AnonPayment)
        # Every write to the registry goes through _registry() first: it is still empty.
        _REGISTRY.update(_BUILTIN)
    return _BUILTIN


def _registry() -> dict[str, StreamSpec]:
    _builtins()
    return _REGISTRY


def __getattr__(name: str) -> StreamSpec:
    """``TELEMETRY`` and ``PAYMENTS``: the built-in specs."""
    if name in ("TELEMETRY", "PAYMENTS"):
        return _builtins()[name.lower()]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def register(spec: StreamSpec) -> StreamSpec:
    """Add a stream. Registering a second spec under a taken name is an error."""
    existing = _registry().get(spec.name)
    if existing is not None and existing is not spec:
        raise ConfigError(f"stream {spec.name!r} is already registered")
    _REGISTRY[spec.name] = spec
    return spec


def get(name: str) -> StreamSpec:
    try:
        return _registry()[name]
    except KeyError:
        raise ConfigError(f"unknown stream {name!r}; known: {sorted(_REGISTRY)}") from None


@contextmanager
def scoped() -> Iterator[None]:
    """Streams registered inside the block are forgotten at its end (the built-in ones and
    those registered before stay): tests that declare streams leave none behind."""
    before = dict(_registry())
    try:
        yield
    finally:
        _REGISTRY.clear()
        _REGISTRY.update(before)


def find(name: str) -> StreamSpec | None:
    """The stream registered as ``name``, or None."""
    return _registry().get(name)


def declaration_of(name: str) -> Stream:
    """The declaration of a registered stream: a declared stream's own, or the shipped one of
    a built-in stream (whose stages run its own code, but whose defaults it declares)."""
    spec = get(name)
    if spec.declaration is not None:
        return spec.declaration
    from shared.declarations.loader import builtin

    return builtin()[name]


def all_streams() -> list[StreamSpec]:
    return list(_registry().values())


def by_mqtt_suffix(suffix: str) -> StreamSpec | None:
    for spec in _registry().values():
        if spec.mqtt_suffix == suffix:
            return spec
    return None


def from_declaration(stream: Stream) -> StreamSpec:
    """The spec of a declared stream: its event contract is built from the declaration."""
    from shared.contracts import AnonRecord
    from shared.declarations.events import event_struct

    return StreamSpec(
        name=stream.name,
        event=event_struct(stream),
        anon_event=AnonRecord,
        mqtt_suffix=stream.topic,
        key_field=stream.device.field,
        pii_fields=stream.pii_fields,
        tokens=stream.tokens,
        numeric_fields=_readings(stream),
        declaration=stream,
        decides=stream.decision,
    )


def _check_shares(stream: Stream) -> None:
    """One stream keeps a shared state (the vehicle's, under ``v:<token>``): two would
    overwrite each other's."""
    if stream.shares is None:
        return
    from shared.declarations.errors import DeclarationError

    for other in list(_registry().values()):
        if other.name != stream.name and declaration_of(other.name).shares == stream.shares:
            raise DeclarationError(
                stream.source,
                "stream.shares",
                f"the {stream.shares}'s state is kept by stream {other.name!r} already; one "
                "stream keeps it",
            )


def use_declarations(directory: str | Path | None) -> list[StreamSpec]:
    """Load the declarations of ``directory`` (None: none) and register their streams.

    Called by each service at start-up; a bad declaration raises a ConfigError naming its
    file and key. Registering the same declarations again is a no-op. Returns the specs of
    every stream, built-in and declared.
    """
    from shared.declarations.catalog import declared

    for stream in declared(directory):
        _check_shares(stream)
        existing = _registry().get(stream.name)
        if existing is not None and existing.declaration is not None:
            if existing.declaration == stream:
                continue
            del _REGISTRY[stream.name]  # the directory's file changed since it was loaded
        register(from_declaration(stream))
    return all_streams()
