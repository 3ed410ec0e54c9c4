"""Named transforms: features a declaration cannot express, written in Python and registered.

A declaration refers to one with ``feature = { named = "card_uses_1m" }``. Each entry says
which event fields it reads (checked against the declaration when it loads: a named
transform may read personal data, since it runs at the edge and yields only a number), the
function computing it today and the key of its result, and a version that enters the
feature-spec digest: change what a named transform computes and bump its version.

The built-in streams' entries point at their feature code; the engine runs every one of them,
for the built-in streams' declarations as for an operator's:

- telemetry's have a ``step`` over the device's own state (a slot of numbers);
- payments' have a ``keyed`` state: one state shared by every stream and device that names
  the same card or driver (kept under ``c:<card token>``, ``d:<driver token>``), or the
  vehicle's state the stream sharing it keeps (``v:<vehicle token>``; ``Shared``, the shipped
  telemetry), which they only read.
  The engine reads each keyed state once per event, computes its transforms together and
  writes the state back (unless it only reads it); the key is the token of the field the
  state is kept by, so a declaration must tokenize that field in the state's namespace
  (:func:`keyed_field_problem`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from shared.errors import ConfigError
from shared.features import payments as pay
from shared.features import telemetry as tel
from shared.features.guard import fin
from shared.features.state import (
    CARD,
    DRIVER,
    VEHICLE,
    CardState,
    DriverState,
    VehicleState,
    VehicleStreamState,
)


@dataclass(frozen=True)
class Keyed:
    """State kept by a field's token rather than per device, shared by the transforms that
    name it: every stream and device naming the same card (say) reads and writes one state."""

    name: str
    # The state key's prefix (``state_key(prefix, token)``).
    prefix: str
    # The event field whose token keys the state, and the token namespace it must be in.
    field: str
    token_kind: str
    # Every event field its transforms read besides the time (they are computed together),
    # and those of them it takes as text (the others as numbers).
    reads: tuple[str, ...]
    text_reads: tuple[str, ...]
    # (event, its state or None, the device's token) -> every output of the transforms; the
    # event's ``ts`` is its time in epoch seconds, whatever the stream's time field.
    features: Callable[[Any, Any, str], dict[str, float]]
    # (its state or None, event, the device's token) -> its next state; None: another stream
    # keeps this state and these transforms only read it.
    update: Callable[[Any, Any, str], Any] | None
    # The state's types (any other value under the key reads as no state yet).
    kind: type | tuple[type, ...]
    # Who keeps it, for errors: "the card", "the vehicle's telemetry".
    kept_by: str


@dataclass(frozen=True)
class NamedTransform:
    name: str
    # Event fields it reads.
    reads: tuple[str, ...]
    # The function that computes it (its result is a dict holding ``output``).
    compute: Callable[..., Any]
    output: str
    version: int = 1
    # Seconds its result still carries an event after it (a smoothed trend's time constants).
    memory_s: float = 0.0
    # How the declared streams' engine runs it: (event, its time, the feature's slot) ->
    # (value, the slot's next value), over the fields ``reads`` names; None when only the
    # built-in stream's own code computes it (a declared stream cannot use it then).
    step: Callable[[Any, float, Any], tuple[float, Any]] | None = None
    # How many numbers its slot holds (0: it keeps no state).
    slot_width: int = 0
    # The fields of ``reads`` it takes as text (a vehicle model); the step reads the others
    # as numbers, so a declared stream must declare them float, int or bool.
    text_reads: tuple[str, ...] = ()
    # State kept by another field's token than the device's (a card, a driver), or another
    # stream's state of the device (the vehicle's last position): see :class:`Keyed`.
    keyed: Keyed | None = None
    # The one of ``reads`` that stands for the stream's device field, whatever its name (the
    # vehicles a card is used by: the devices, in a declared stream).
    device_read: str | None = None
    # The one of ``reads`` that stands for the stream's time field.
    time_read: str | None = None

    @property
    def runnable(self) -> bool:
        """Whether the declared streams' engine runs it."""
        return self.step is not None or self.keyed is not None


_REGISTRY: dict[str, NamedTransform] = {}


def register(transform: NamedTransform) -> NamedTransform:
    """Add a named transform. Registering a different one under a taken name is an error."""
    existing = _REGISTRY.get(transform.name)
    if existing is not None and existing != transform:
        raise ConfigError(f"named transform {transform.name!r} is already registered")
    _REGISTRY[transform.name] = transform
    return transform


def keyed_field_problem(entry: NamedTransform, fields: dict[str, Any]) -> str | None:
    """Why a declaration's fields cannot key ``entry``'s state (None: they can): its key field
    must be tokenized in the state's namespace, or two streams naming one card would keep two
    states, or a state would be keyed by the raw value."""
    keyed = entry.keyed
    if keyed is None:
        return None
    decl = fields.get(keyed.field)
    kind = getattr(decl, "token_kind", None) or keyed.field
    if decl is None or getattr(decl, "pii", None) != "token" or kind != keyed.token_kind:
        return (
            f"named transform {entry.name!r} keeps its state by {keyed.kept_by}: the "
            f'declaration must have {keyed.field} = {{ pii = "token", token_kind = '
            f'"{keyed.token_kind}" }}'
        )
    return None


def get(name: str) -> NamedTransform | None:
    return _REGISTRY.get(name)


def names() -> list[str]:
    return sorted(_REGISTRY)


_TYRES = ("tyre_fl_kpa", "tyre_fr_kpa", "tyre_rl_kpa", "tyre_rr_kpa")
_ENVELOPE = {  # vs the vehicle model's catalogue entry
    "coolant_over_thermostat": ("coolant_over_thermostat_c", ("coolant_c", "model")),
    "coolant_hot_trend": ("coolant_hot_trend", ("coolant_c", "model", "ts")),
    "tyre_mean_ratio": ("tyre_mean_ratio", (*_TYRES, "model")),
    "tyre_min_ratio": ("tyre_min_ratio", (*_TYRES, "model")),
    "battery_v_low": ("battery_v_low", ("battery_v", "rpm", "speed_kmh", "model")),
}
_CARD = {  # the card's use across every vehicle and merchant
    "card_uses_1m": ("card_number",),
    "card_uses_10m": ("card_number",),
    "card_uses_1h": ("card_number",),
    "tiny_amounts_10m": ("card_number", "amount"),
    "merchant_repeats_10m": ("card_number", "merchant_id"),
    "card_vehicles_1h": ("card_number", "vin"),
    "card_since_last_s": ("card_number", "ts"),
    "card_travel_km": ("card_number", "lat", "lon"),
    "card_travel_kmh": ("card_number", "lat", "lon", "ts"),
}
_VEHICLE = {  # the payment against the paying vehicle's last telemetry
    "vehicle_distance_km": ("vin", "lat", "lon"),
    "vehicle_fix_age_s": ("vin", "ts"),
    "vehicle_known": ("vin",),
}
_FUEL = {"fuel_tank_ratio": ("vin", "volume_l"), "fuel_fill_ratio": ("vin", "volume_l")}


def _vehicle_features(event: Any, vehicle: Any, _device: str) -> dict[str, float]:
    return {**pay.position_features(event, vehicle), **pay.fuel_features(event, vehicle)}


CARD_STATE = Keyed(
    "card",
    CARD,
    "card_number",
    "card",
    ("card_number", "amount", "merchant_id", "lat", "lon"),
    ("card_number", "merchant_id"),
    pay.card_features,
    pay.update_card,
    CardState,
    "the card (across every vehicle and merchant)",
)
DRIVER_STATE = Keyed(
    "driver",
    DRIVER,
    "driver_id",
    "driver",
    ("driver_id", "amount", "category"),
    ("driver_id", "category"),
    lambda event, driver, _device: pay.amount_features(event, driver),
    lambda driver, event, _device: pay.update_driver(driver, event),
    DriverState,
    "the driver (their usual amounts per category)",
)
# The stream that shares the vehicle's state keeps it (the shipped telemetry); payments only
# read it. A gateway upgraded in place still holds the telemetry code's VehicleState there.
VEHICLE_STATE = Keyed(
    "vehicle",
    VEHICLE,
    "vin",
    "vin",
    ("vin", "lat", "lon", "volume_l"),
    ("vin",),
    _vehicle_features,
    None,
    (VehicleStreamState, VehicleState),
    "the vehicle (its last telemetry: position, model, fuel level)",
)


def vehicle_fix(before: Any, event: Any, ts: float) -> tuple[float, float, float, str, float]:
    """The vehicle's (time, latitude, longitude, model, fuel level) after ``event`` at ``ts``:
    the position and fuel level of its newest event, the model of its latest, the fuel level
    clipped to 0-100 %."""
    fuel = fin(event.fuel_pct, 0.0, 100.0)
    if before is None or ts >= before.ts:
        return ts, event.lat, event.lon, event.model, fuel
    return before.ts, before.lat, before.lon, event.model, before.fuel_pct


@dataclass(frozen=True)
class Shared:
    """A state a declared stream keeps as its devices' state for other streams' named
    transforms to read (``[stream] shares = "vehicle"``)."""

    name: str
    # The state key's prefix: the devices' states live under ``<prefix>:<device token>``.
    prefix: str
    # The device field it is kept by, tokenized in this namespace.
    field: str
    token_kind: str
    # Each field it keeps -> the field types it takes.
    reads: dict[str, tuple[str, ...]]
    kind: type[VehicleStreamState]
    # (the device's state before or None, the event, its time) -> the kept values.
    fix: Callable[[Any, Any, float], tuple[float, float, float, str, float]]
    read_by: str


SHARED = {
    "vehicle": Shared(
        "vehicle",
        VEHICLE,
        "vin",
        "vin",
        {"lat": ("float",), "lon": ("float",), "model": ("str",), "fuel_pct": ("float", "int")},
        VehicleStreamState,
        vehicle_fix,
        "payments' vehicle transforms (distance to the vehicle, age of its fix, fuel against "
        "the tank)",
    )
}


def _stateless(fn: Callable[[Any], float]) -> Callable[[Any, float, Any], tuple[float, Any]]:
    def step(event: Any, _ts: float, slot: Any) -> tuple[float, Any]:
        return fn(event), slot

    return step


_TELEMETRY_STEPS: dict[str, Callable[[Any], float]] = {
    "tyre_min_dev": tel.tyre_min_dev,
    "accel_magnitude": tel.accel_magnitude,
    "coolant_over_thermostat": tel.coolant_over_thermostat,
    "tyre_mean_ratio": tel.tyre_mean_ratio,
    "tyre_min_ratio": tel.tyre_min_ratio,
    "battery_v_low": tel.battery_v_low,
}


def _register_builtin() -> None:
    register(
        NamedTransform(
            "tyre_min_dev",
            _TYRES,
            tel.cross_sensor,
            "tyre_min_dev_kpa",
            step=_stateless(tel.tyre_min_dev),
        )
    )
    register(
        NamedTransform(
            "accel_magnitude",
            ("accel_x_g", "accel_y_g", "accel_z_g"),
            tel.cross_sensor,
            "accel_g",
            step=_stateless(tel.accel_magnitude),
        )
    )
    for name, (output, reads) in _ENVELOPE.items():
        if name == "coolant_hot_trend":
            # The coolant trend is smoothed over TREND_TAU_S: three time constants to forget.
            register(
                NamedTransform(
                    name,
                    reads,
                    tel.envelope,
                    output,
                    memory_s=3 * tel.TREND_TAU_S,
                    step=tel.coolant_hot_trend,
                    slot_width=3,
                    text_reads=("model",),
                    time_read="ts",
                )
            )
        else:
            step = _stateless(_TELEMETRY_STEPS[name])
            register(
                NamedTransform(name, reads, tel.envelope, output, step=step, text_reads=("model",))
            )
    _register_payments()


def _register_payments() -> None:
    register(
        NamedTransform(
            "amount_vs_driver",
            ("amount", "category", "driver_id"),
            pay.amount_features,
            "amount_z",
            keyed=DRIVER_STATE,
        )
    )
    for name, reads in _CARD.items():
        device = "vin" if "vin" in reads else None
        time = "ts" if "ts" in reads else None
        register(
            NamedTransform(
                name,
                reads,
                pay.card_features,
                name,
                keyed=CARD_STATE,
                device_read=device,
                time_read=time,
            )
        )
    for name, reads in _VEHICLE.items():
        time = "ts" if "ts" in reads else None
        register(
            NamedTransform(
                name, reads, pay.position_features, name, keyed=VEHICLE_STATE, time_read=time
            )
        )
    for name, reads in _FUEL.items():
        register(NamedTransform(name, reads, pay.fuel_features, name, keyed=VEHICLE_STATE))


_register_builtin()
