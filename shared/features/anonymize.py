"""From a raw event (with PII) to its anonymized record: tokens, a coarse cell, features.

``anonymize`` is pure: it reads the per-key states it needs from ``state`` and returns the new
states beside the record; the caller decides when they take effect (the enricher, in the same
Kafka transaction as the record; the trainer, right away through :class:`Anonymizer`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import msgspec

from shared import streams
from shared.contracts import AnonPayment, AnonRecord, AnonTelemetry, Payment, Telemetry, decode
from shared.errors import ContractError, FleetsentryError
from shared.features import payments as pay
from shared.features import telemetry as tel
from shared.features.geo import cell
from shared.features.state import (
    CARD,
    DRIVER,
    VEHICLE,
    CardState,
    DriverState,
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


# Numbers leave the gateway with at most 3 decimals: enough for any model input, and no exact
# coordinate (or other identifying digit string) can hide inside a long float.
_floor = math.floor


def _rounded(values: dict[str, float]) -> dict[str, float]:
    return {k: _floor(v * 1000 + 0.5) / 1000 for k, v in values.items()}


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
    vehicle_token = tok.token(VIN, event.vin)
    card_token = tok.token(CARD_NUMBER, event.card_number)
    driver_token = tok.token(DRIVER_ID, event.driver_id)
    card_key, driver_key = state_key(CARD, card_token), state_key(DRIVER, driver_token)
    card: CardState | None = _get(state, card_key, CardState)
    driver: DriverState | None = _get(state, driver_key, DriverState)
    vehicle: VehicleState | None = _get(state, state_key(VEHICLE, vehicle_token), VehicleState)
    record = AnonPayment(
        event_id=event.event_id,
        ts=event.ts,
        card_token=card_token,
        vehicle_token=vehicle_token,
        driver_token=driver_token,
        merchant_id=event.merchant_id,
        mcc=event.mcc,
        category=event.category,
        amount=event.amount,
        currency=event.currency,
        volume_l=event.volume_l,
        cell=cell(event.lat, event.lon),
        features=_rounded(pay.payment_features(event, card, driver, vehicle, vehicle_token)),
    )
    updates: dict[str, KeyState] = {
        card_key: pay.update_card(card, event, vehicle_token),
        driver_key: pay.update_driver(driver, event),
    }
    return Anonymized(record, updates)


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
