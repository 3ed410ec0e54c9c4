"""Stream specs: each stream declares its contract, PII fields, tokens and numeric features.

A new sensor stream is added by declaring a :class:`StreamSpec` and registering it; the bridge,
enricher, scorer and trainer read these specs rather than hard-coding stream names.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import msgspec

from shared import contracts as c
from shared.errors import ConfigError


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


TELEMETRY = StreamSpec(
    name="telemetry",
    event=c.Telemetry,
    anon_event=c.AnonTelemetry,
    mqtt_suffix="telemetry",
    key_field="vin",
    pii_fields=frozenset({"vin", "driver_id", "lat", "lon"}),
    tokens={"vin": "vehicle_token", "driver_id": "driver_token"},
    numeric_fields=(
        "speed_kmh", "rpm", "gear", "coolant_c", "intake_c", "oil_kpa", "battery_v", "soc_pct",
        "tyre_fl_kpa", "tyre_fr_kpa", "tyre_rl_kpa", "tyre_rr_kpa", "fuel_pct", "odometer_km",
        "accel_x_g", "accel_y_g", "accel_z_g", "ambient_c",
    ),
)

PAYMENTS = StreamSpec(
    name="payments",
    event=c.Payment,
    anon_event=c.AnonPayment,
    mqtt_suffix="payments",
    # MQTT -> raw keeps per-vehicle order; the enricher re-keys anon.payments by card token.
    key_field="vin",
    pii_fields=frozenset(
        {"vin", "driver_id", "driver_name", "card_number", "cardholder", "lat", "lon"}
    ),
    tokens={"card_number": "card_token", "vin": "vehicle_token", "driver_id": "driver_token"},
    numeric_fields=("amount", "volume_l"),
)

_REGISTRY: dict[str, StreamSpec] = {}


def register(spec: StreamSpec) -> StreamSpec:
    """Add a stream. Registering a second spec under a taken name is an error."""
    existing = _REGISTRY.get(spec.name)
    if existing is not None and existing is not spec:
        raise ConfigError(f"stream {spec.name!r} is already registered")
    _REGISTRY[spec.name] = spec
    return spec


def get(name: str) -> StreamSpec:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ConfigError(f"unknown stream {name!r}; known: {sorted(_REGISTRY)}") from None


def all_streams() -> list[StreamSpec]:
    return list(_REGISTRY.values())


def by_mqtt_suffix(suffix: str) -> StreamSpec | None:
    for spec in _REGISTRY.values():
        if spec.mqtt_suffix == suffix:
            return spec
    return None


register(TELEMETRY)
register(PAYMENTS)
