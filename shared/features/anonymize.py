"""From a raw event (with PII) to its anonymized record: tokens, a coarse cell, features.

``anonymize`` is pure: it reads the per-key states it needs from ``state`` and returns the new
states beside the record; the caller decides when they take effect (the enricher, in the same
Kafka transaction as the record; the trainer, right away through :class:`Anonymizer`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import msgspec

from shared import streams
from shared.contracts import AnonPayment, AnonRecord, AnonTelemetry, Payment, Telemetry, decode
from shared.errors import ContractError, FleetsentryError
from shared.features import telemetry as tel
from shared.features.geo import cell
from shared.features.state import (
    VEHICLE,
    FeatureState,
    KeyState,
    VehicleState,
    state_key,
)
from shared.streams import StreamSpec
from shared.tokens import Tokenizer

# Token namespaces: a value is only ever compared with values of the same kind.
VIN = "vin"
DRIVER_ID = "driver"
CARD_NUMBER = "card"


class FeatureError(FleetsentryError):
    """An event cannot be anonymized with the given stream spec."""


class Anonymized(NamedTuple):
    record: AnonTelemetry | AnonPayment | AnonRecord
    # state key -> the key's new state, to apply once the record is accepted.
    updates: dict[str, KeyState]


def _get(state: Mapping[str, KeyState], key: str, kind: type) -> Any:
    value = state.get(key)
    return value if isinstance(value, kind) else None


def _telemetry(event: Telemetry, state: Mapping[str, KeyState], tok: Tokenizer) -> Anonymized:
    vehicle_token = tok.token(VIN, event.vin)
    key = state_key(VEHICLE, vehicle_token)
    before: VehicleState | None = _get(state, key, VehicleState)
    reads, features, after = tel.telemetry_step(event, before)
    record = AnonTelemetry(
        event_id=event.event_id,
        ts=event.ts,
        vehicle_token=vehicle_token,
        driver_token=tok.token(DRIVER_ID, event.driver_id),
        model=event.model,
        firmware=event.firmware,
        cell=cell(event.lat, event.lon),
        readings=reads,
        features=features,  # telemetry_step rounds as it goes
    )
    return Anonymized(record, {key: after})


def _payment(event: Payment, state: Mapping[str, KeyState], tok: Tokenizer) -> Anonymized:
    """The shipped payments declaration, run by the declarations' engine (its named
    transforms keep the card's and the driver's state and read the vehicle's), in the
    record shape of ``anon.payments``."""
    plan = _shipped_plan(streams.PAYMENTS)
    record, updates = plan.run(event, state, tok)
    return Anonymized(shaped(streams.PAYMENTS.anon_event, event, record), updates)


_shipped: dict[str, Any] = {}


def _shipped_plan(spec: StreamSpec) -> Any:
    """The engine's plan of a built-in stream's shipped declaration (built once)."""
    plan = _shipped.get(spec.name)
    if plan is None:
        from shared.declarations.anonymize import Plan
        from shared.declarations.loader import builtin

        stream = builtin()[spec.name]
        leaks = sorted(set(spec.anon_event.__struct_fields__) & stream.pii_fields)
        if leaks:  # the shape would copy these from the event
            raise FeatureError(f"stream {spec.name!r}: its record shape names personal {leaks}")
        plan = _shipped[spec.name] = Plan(stream)
    return plan


def shaped(kind: type[msgspec.Struct], event: Any, record: AnonRecord) -> Any:
    """``record`` (the engine's) in a built-in stream's own record shape ``kind``: each of
    its fields by name, from the record's tokens, cell and features, or the event's own
    value (a field the shape has and the declaration does not make personal data)."""
    tokens = record.tokens
    out: dict[str, Any] = {}
    for name in kind.__struct_fields__:
        if name in tokens:
            out[name] = tokens[name]
        elif name in _RECORD_FIELDS:
            out[name] = getattr(record, name)
        else:
            out[name] = getattr(event, name)
    return kind(**out)


_RECORD_FIELDS = frozenset({"schema", "event_id", "ts", "cell", "features"})


_BY_STREAM: dict[str, Callable[[Any, Mapping[str, KeyState], Tokenizer], Anonymized]] = {
    "telemetry": _telemetry,
    "payments": _payment,
}


def anonymize(
    spec: StreamSpec, event: msgspec.Struct, state: Mapping[str, KeyState], tokenizer: Tokenizer
) -> Anonymized:
    """The anonymized record of ``event`` and the per-key states it changes.

    Neither ``event`` nor ``state`` is modified. Apply ``result.updates`` to the state before
    anonymizing the next event of the same vehicle, card or driver.
    """
    if not isinstance(event, spec.event):
        raise FeatureError(
            f"stream {spec.name!r} takes {spec.event.__name__} events, not {type(event).__name__}"
        )
    if spec.declaration is not None:
        return _declared(spec, event, state, tokenizer)
    fn = _BY_STREAM.get(spec.name)
    if fn is None:
        raise FeatureError(f"no anonymizer for stream {spec.name!r}")
    return fn(event, state, tokenizer)


_plans: dict[int, Any] = {}


def plan_of(spec: StreamSpec) -> Any:
    """The generic anonymizer of a declared stream (built once per spec)."""
    from shared.declarations.anonymize import Plan

    plan = _plans.get(id(spec))
    if plan is None or plan.stream is not spec.declaration:
        assert spec.declaration is not None
        plan = _plans[id(spec)] = Plan(spec.declaration)
    return plan


_vaults: dict[int, tuple[Any, Any]] = {}


def vault_of(spec: StreamSpec) -> Any:
    """What the vault keeps of a stream's events (a ``VaultItems``, built once per spec):
    from its declaration, the built-in streams' from the shipped ones."""
    cached = _vaults.get(id(spec))
    if cached is None or cached[0] is not spec.declaration:
        from shared.declarations.anonymize import VaultItems
        from shared.declarations.loader import builtin

        items = VaultItems(spec.declaration or builtin()[spec.name])
        cached = _vaults[id(spec)] = (spec.declaration, items)
    return cached[1]


def _declared(
    spec: StreamSpec, event: msgspec.Struct, state: Mapping[str, KeyState], tok: Tokenizer
) -> Anonymized:
    record, updates = plan_of(spec).run(event, state, tok)
    return Anonymized(record, updates)


class Anonymizer:
    """Anonymize a sequence of events with state carried along (training, replay, tests).

    >>> from shared.tokens import Tokenizer
    >>> a = Anonymizer(Tokenizer(b"0123456789abcdef"))
    >>> # a.message("fleet/<VIN>/telemetry", payload) -> AnonTelemetry
    """

    def __init__(self, tokenizer: Tokenizer, state: FeatureState | None = None) -> None:
        self.tokenizer = tokenizer
        self.state = state if state is not None else FeatureState()

    def anonymize(self, event: msgspec.Struct) -> AnonTelemetry | AnonPayment | AnonRecord:
        spec = _spec_of(event)
        result = anonymize(spec, event, self.state, self.tokenizer)
        self.state.apply(result.updates)
        return result.record

    def message(self, topic: str, payload: bytes) -> AnonTelemetry | AnonPayment | AnonRecord:
        """Decode an MQTT message (``fleet/<VIN>/<stream>``) and anonymize it."""
        suffix = topic.rsplit("/", 1)[-1]
        spec = streams.by_mqtt_suffix(suffix)
        if spec is None:
            raise ContractError(f"topic {topic!r} is not a known stream", field="topic")
        return self.anonymize(decode(spec.event, payload))


def _spec_of(event: msgspec.Struct) -> StreamSpec:
    for spec in streams.all_streams():
        if isinstance(event, spec.event):
            return spec
    raise FeatureError(f"no stream takes {type(event).__name__} events")
