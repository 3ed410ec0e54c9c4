"""Which features each model takes, in order, and their plain names for alert explanations.

``FEATURE_SPEC_VERSION`` changes whenever a name, an order or a meaning changes: a model trained
on one spec is refused by an edge computing another.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from shared.errors import ConfigError
from shared.features import payments as pay
from shared.features import telemetry as tel

if TYPE_CHECKING:  # numpy is imported where vectors are built: the enricher never needs it
    import numpy as np
    import numpy.typing as npt

FEATURE_SPEC_VERSION = "fs3"

_SENSOR_NAMES = {
    "speed_kmh": "Speed",
    "rpm": "Engine speed (rpm)",
    "gear": "Gear",
    "coolant_c": "Coolant temperature",
    "intake_c": "Intake air temperature",
    "oil_kpa": "Oil pressure",
    "battery_v": "Battery voltage",
    "soc_pct": "Battery charge",
    "tyre_fl_kpa": "Front-left tyre pressure",
    "tyre_fr_kpa": "Front-right tyre pressure",
    "tyre_rl_kpa": "Rear-left tyre pressure",
    "tyre_rr_kpa": "Rear-right tyre pressure",
    "fuel_pct": "Fuel level",
    "odometer_km": "Odometer",
    "accel_x_g": "Longitudinal acceleration",
    "accel_y_g": "Lateral acceleration",
    "accel_z_g": "Vertical acceleration",
    "ambient_c": "Ambient temperature",
}

_TELEMETRY_OTHER = {
    "tyre_spread_kpa": "Pressure spread between the four tyres",
    "tyre_min_dev_kpa": "Lowest tyre pressure vs the vehicle's tyre average",
    "coolant_minus_ambient_c": "Coolant temperature above ambient",
    "intake_minus_ambient_c": "Intake temperature above ambient",
    "accel_g": "Total acceleration",
    "coolant_over_thermostat_c": "Coolant temperature above the model's thermostat",
    "coolant_hot_trend": "Coolant still climbing above the thermostat (°C/s)",
    "tyre_mean_ratio": "Average tyre pressure vs the model's recommended pressure",
    "tyre_min_ratio": "Lowest tyre pressure vs the model's recommended pressure",
    "battery_v_low": "Battery voltage below its healthy floor (model's range when running)",
    "stuck_frames": "Frames a sensor has repeated the exact same value",
    "frame_gap_s": "Time since the vehicle's previous frame",
    "history": "Frames seen from this vehicle",
}

_PAYMENT_NAMES = {
    "log_amount": "Amount (log scale)",
    "amount_z": "Amount vs the driver's usual for this category",
    "driver_history": "Payments seen from this driver in this category",
    "vehicle_distance_km": "Distance between the payment and the vehicle's last position",
    "vehicle_fix_age_s": "Age of the vehicle's last known position",
    "vehicle_known": "Vehicle position known",
    "card_uses_1m": "Card uses in the last minute",
    "card_uses_10m": "Card uses in the last 10 minutes",
    "card_uses_1h": "Card uses in the last hour",
    "tiny_amounts_10m": "Tiny amounts on the card in the last 10 minutes",
    "merchant_repeats_10m": "Repeat payments at the same merchant in 10 minutes",
    "card_vehicles_1h": "Distinct vehicles using the card in the last hour",
    "card_since_last_s": "Time since the card's previous use",
    "card_travel_km": "Distance from the card's previous use",
    "card_travel_kmh": "Travel speed implied since the card's previous use",
    "card_history": "Uses seen of this card",
    "fuel_tank_ratio": "Fuel volume vs the tank size",
    "fuel_fill_ratio": "Fuel volume vs the room left in the tank",
    **{f"cat_{c}": f"Category: {c.replace('_', ' ')}" for c in pay.CATEGORIES},
}


def _telemetry_model_features() -> list[str]:
    names = [r for r in tel.READINGS if r != "odometer_km"]  # grows without bound: no signal
    names += list(_TELEMETRY_OTHER)
    names.remove("history")  # warm-up bookkeeping, not behaviour
    names += [f"{s}_z" for s in tel.ROLLING]
    names += [f"{s}_rate" for s in tel.ROLLING]
    return names


_MODEL_FEATURES: dict[str, list[str]] = {
    "telemetry": _telemetry_model_features(),
    "payments": [n for n in _PAYMENT_NAMES if n not in ("driver_history", "card_history")],
}


def _labels() -> dict[str, str]:
    labels = dict(_SENSOR_NAMES)
    labels.update(_TELEMETRY_OTHER)
    for s in tel.ROLLING:
        labels[f"{s}_z"] = f"{_SENSOR_NAMES[s]} vs vehicle's rolling mean"
        labels[f"{s}_rate"] = f"{_SENSOR_NAMES[s]} rate of change"
    labels.update(_PAYMENT_NAMES)
    return labels


_LABELS = _labels()


def model_features(stream: str) -> list[str]:
    """The ordered feature names the model of ``stream`` takes (a fresh list each call): the
    built-in code's, or a registered declaration's."""
    return list(_names(stream))


# Nominal seconds between two frames of a vehicle (the simulator's and the fleet's 1 Hz).
TELEMETRY_FRAME_S = 1.0


def feature_memory_s(stream: str) -> float:
    """Seconds after an episode ends during which its features still carry it.

    Telemetry: the per-vehicle rolling statistics (``MEMORY_FRAMES`` frames, at the nominal
    frame interval) and the smoothed coolant trend (three time constants), whichever is longer.
    An alert raised that soon after a fault ends reports the fault's tail, not a new event.
    Payments are scored one by one: 0.
    """
    model_features(stream)  # an unknown stream raises
    if stream != "telemetry":
        return 0.0
    return max(tel.MEMORY_FRAMES * TELEMETRY_FRAME_S, 3 * tel.TREND_TAU_S)


def feature_label(name: str) -> str:
    """A plain-language name for a feature, e.g. for "the 3 features that drove this alert"."""
    return _LABELS.get(name, name.replace("_", " "))


def _features_of(record: Any) -> Mapping[str, float]:
    feats = record.get("features", record) if isinstance(record, Mapping) else record.features
    return feats


def feature_vector(stream: str, record: Any) -> npt.NDArray[np.float32]:
    """The model input for one anon record (or its ``features`` dict); missing features are 0."""
    import numpy as np

    feats = _features_of(record)
    return np.array([feats.get(n, 0.0) for n in _names(stream)], dtype=np.float32)


def feature_matrix(stream: str, records: Iterable[Any]) -> npt.NDArray[np.float32]:
    """Model inputs for many records, one row each (shape: n x len(model_features(stream)))."""
    import numpy as np

    names = _names(stream)
    rows = [[_features_of(r).get(n, 0.0) for n in names] for r in records]
    return np.array(rows, dtype=np.float32).reshape(len(rows), len(names))


def _names(stream: str) -> list[str]:
    names = _MODEL_FEATURES.get(stream)
    if names is not None:
        return names
    from shared import streams

    spec = streams.find(stream)
    if spec is None or spec.declaration is None:
        known = sorted({*_MODEL_FEATURES, *(s.name for s in streams.all_streams())})
        raise ConfigError(f"no feature spec for stream {stream!r}; known: {known}")
    return spec.declaration.feature_names
