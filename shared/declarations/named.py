"""Named transforms: features a declaration cannot express, written in Python and registered.

A declaration refers to one with ``feature = { named = "card_uses_1m" }``. Each entry says
which event fields it reads (checked against the declaration when it loads: a named
transform may read personal data, since it runs at the edge and yields only a number), the
function computing it today and the key of its result, and a version that enters the
feature-spec digest: change what a named transform computes and bump its version.

The built-in streams' entries point at today's feature code, which the stages still call
for them. Telemetry's also have a ``step``: the declared streams' engine runs them (a declared
stream with their fields may use them); payments' read state kept by card, driver and vehicle
across streams, which the engine does not keep, so only the built-in code computes them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from shared.errors import ConfigError
from shared.features import payments as pay
from shared.features import telemetry as tel


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


_REGISTRY: dict[str, NamedTransform] = {}


def register(transform: NamedTransform) -> NamedTransform:
    """Add a named transform. Registering a different one under a taken name is an error."""
    existing = _REGISTRY.get(transform.name)
    if existing is not None and existing != transform:
        raise ConfigError(f"named transform {transform.name!r} is already registered")
    _REGISTRY[transform.name] = transform
    return transform


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
                )
            )
        else:
            step = _stateless(_TELEMETRY_STEPS[name])
            register(
                NamedTransform(name, reads, tel.envelope, output, step=step, text_reads=("model",))
            )
    register(
        NamedTransform(
            "amount_vs_driver", ("amount", "category", "driver_id"), pay.amount_features, "amount_z"
        )
    )
    for name, reads in _CARD.items():
        register(NamedTransform(name, reads, pay.card_features, name))
    for name, reads in _VEHICLE.items():
        register(NamedTransform(name, reads, pay.position_features, name))
    for name, reads in _FUEL.items():
        register(NamedTransform(name, reads, pay.fuel_features, name))


_register_builtin()
