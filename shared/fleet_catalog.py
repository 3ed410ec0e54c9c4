"""Vehicle models of the fleet: capacities and normal sensor ranges, keyed by model name.

The ``model`` field of every telemetry frame names one of these entries. Edge features read
capacities from here (fuel volume vs tank, charge vs battery) without importing the simulator,
and the simulator builds its vehicles from the same table, so both agree by construction.

>>> CATALOG["citan-van"].tank_l
55.0
>>> capacity_of("e-transit").battery_kwh
68.0
"""

from __future__ import annotations

from dataclasses import dataclass, field

from shared.errors import ConfigError


@dataclass(frozen=True)
class VehicleModel:
    """One vehicle model. Ranges are (low, high) of healthy readings while driving warm."""

    name: str
    maker: str
    wmi: str  # world manufacturer identifier: the first three VIN characters
    powertrain: str  # "ice" or "ev"
    tank_l: float  # 0 for an EV
    battery_kwh: float  # traction battery; 0 for a combustion vehicle
    mass_kg: float
    power_kw: float
    consumption_per_100km: float  # litres (ice) or kWh (ev)
    tyre_kpa: float  # recommended cold pressure
    thermostat_c: float  # coolant temperature the thermostat regulates to
    idle_rpm: float
    # Normal ranges (warm, driving), for documentation, checks and plausibility features.
    ranges: dict[str, tuple[float, float]] = field(default_factory=dict)
    firmware: str = "1.0.0"
    # Models that only appear when drift is requested (a new model joining the fleet).
    drift_only: bool = False

    @property
    def is_ev(self) -> bool:
        return self.powertrain == "ev"


def _ice_ranges(thermostat: float, tyre: float) -> dict[str, tuple[float, float]]:
    return {
        "coolant_c": (thermostat - 8, thermostat + 9),
        "oil_kpa": (120.0, 450.0),
        "battery_v": (13.4, 14.7),
        "rpm": (0.0, 4500.0),
        "tyre_kpa": (tyre * 0.92, tyre * 1.14),
    }


def _ev_ranges(thermostat: float, tyre: float) -> dict[str, tuple[float, float]]:
    return {
        "coolant_c": (thermostat - 15, thermostat + 10),
        "oil_kpa": (0.0, 0.0),
        "battery_v": (13.6, 14.6),
        "rpm": (0.0, 12000.0),
        "tyre_kpa": (tyre * 0.92, tyre * 1.14),
    }


CATALOG: dict[str, VehicleModel] = {
    m.name: m
    for m in [
        VehicleModel(
            "citan-van",
            "Mercedes-Benz",
            "WDF",
            "ice",
            55.0,
            0.0,
            1500,
            85,
            6.8,
            250.0,
            90.0,
            780,
            _ice_ranges(90.0, 250.0),
            "4.2.1",
        ),
        VehicleModel(
            "golf-estate",
            "Volkswagen",
            "WVW",
            "ice",
            50.0,
            0.0,
            1350,
            96,
            5.9,
            240.0,
            88.0,
            750,
            _ice_ranges(88.0, 240.0),
            "7.1.3",
        ),
        VehicleModel(
            "transit-lorry",
            "Ford",
            "WF0",
            "ice",
            80.0,
            0.0,
            3200,
            125,
            11.5,
            420.0,
            92.0,
            700,
            _ice_ranges(92.0, 420.0),
            "2.8.0",
        ),
        VehicleModel(
            "e-transit",
            "Ford",
            "WF1",
            "ev",
            0.0,
            68.0,
            2600,
            135,
            24.0,
            380.0,
            32.0,
            0,
            _ev_ranges(32.0, 380.0),
            "3.0.4",
        ),
        VehicleModel(
            "kangoo-e",
            "Renault",
            "VF1",
            "ev",
            0.0,
            45.0,
            1650,
            90,
            17.5,
            260.0,
            30.0,
            0,
            _ev_ranges(30.0, 260.0),
            "1.9.2",
        ),
        # Joins the fleet only on `--drift new_model`: a hybrid van running hotter and with
        # higher tyre pressure than anything the first models were trained on.
        VehicleModel(
            "vivaro-hybrid",
            "Opel",
            "W0V",
            "ice",
            45.0,
            0.0,
            1900,
            110,
            5.2,
            300.0,
            103.0,
            850,
            _ice_ranges(103.0, 300.0),
            "5.0.0",
            drift_only=True,
        ),
    ]
}


def capacity_of(model: str) -> VehicleModel:
    """The catalogue entry for ``model``, or a ConfigError naming the known ones."""
    try:
        return CATALOG[model]
    except KeyError:
        raise ConfigError(
            f"unknown vehicle model {model!r}; known: {sorted(CATALOG)}", setting="model"
        ) from None


def base_models() -> list[VehicleModel]:
    """Models in the fleet before any drift."""
    return [m for m in CATALOG.values() if not m.drift_only]
