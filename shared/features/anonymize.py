"""From a raw event (with PII) to its anonymized record: tokens, a coarse cell, features.

``anonymize`` is pure: it reads the per-key states it needs from ``state`` and returns the new
states beside the record; the caller decides when they take effect (the enricher, in the same
Kafka transaction as the record; the trainer, right away through :class:`Anonymizer`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import msgspec

from shared import streams
from shared.contracts import AnonPayment, AnonRecord, AnonTelemetry, decode
from shared.errors import ContractError, FleetsentryError
from shared.features.state import (
    FeatureState,
    KeyState,
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


def anonymize(
    spec: StreamSpec, event: msgspec.Struct, state: Mapping[str, KeyState], tokenizer: Tokenizer
) -> Anonymized:
    """The anonymized record of ``event`` and the per-key states it changes: the stream's
    declaration run by the declarations' engine (a built-in stream's shipped one), the record
    in the stream's record shape.

    Neither ``event`` nor ``state`` is modified. Apply ``result.updates`` to the state before
    anonymizing the next event of the same vehicle, card or driver.
    """
    if not isinstance(event, spec.event):
        raise FeatureError(
            f"stream {spec.name!r} takes {spec.event.__name__} events, not {type(event).__name__}"
        )
    plan = plan_of(spec)
    record, updates = plan.run(event, state, tokenizer)
    return Anonymized(record if plan.shape is None else plan.shape.of(event, record), updates)


_plans: dict[int, Any] = {}


def plan_of(spec: StreamSpec) -> Any:
    """The engine's plan of a stream (built once per spec): its declaration's, or a built-in
    stream's shipped one, whose records take the stream's own record shape."""
    from shared.declarations.anonymize import Plan
    from shared.declarations.loader import builtin

    stream = spec.declaration or builtin()[spec.name]
    plan = _plans.get(id(spec))
    if plan is None or plan.stream is not stream:
        shape = None if spec.anon_event is AnonRecord else spec.anon_event
        plan = _plans[id(spec)] = Plan(stream, shape)
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
