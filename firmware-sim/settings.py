"""What a simulation run generates: fleet size, rate, duration, seed, fault/fraud rates, drift."""

from __future__ import annotations

from dataclasses import dataclass, field

from firmware_sim.errors import SimSettingsError

FAULT_KINDS = (
    "overheating",
    "tyre_leak",
    "battery_degradation",
    "stuck_sensor",
    "spikes",
    "miscalibration",
)
FRAUD_KINDS = (
    "card_testing",
    "impossible_travel",
    "amount_outlier",
    "fuel_over_capacity",
    "merchant_repeat",
    "cloned_card",
)
DRIFT_KINDS = ("new_model", "firmware_rollout")
# 2026-01-05 08:00 UTC, a Monday morning: dry runs are reproducible because time is fixed.
DEFAULT_START_TS = 1_767_600_000.0


def default_fault_rates() -> dict[str, float]:
    """Episodes per driving vehicle-hour, per kind."""
    return {k: 0.15 for k in FAULT_KINDS}


def default_fraud_rates() -> dict[str, float]:
    """Episodes per legitimate payment, per kind."""
    return {k: 0.012 for k in FRAUD_KINDS}


@dataclass(frozen=True)
class SimSettings:
    """One run. ``start_ts`` None means "now" (live runs); dry runs default to a fixed time."""

    vehicles: int = 100
    rate_hz: float = 1.0
    duration_s: float = 600.0
    seed: int = 0
    start_ts: float | None = DEFAULT_START_TS
    fault_rates: dict[str, float] = field(default_factory=default_fault_rates)
    fraud_rates: dict[str, float] = field(default_factory=default_fraud_rates)
    # Multiplies every driver's habitual payment frequency.
    payment_rate: float = 1.0
    drift: tuple[str, ...] = ()
    # Seconds into the run when drift begins (default: half way).
    drift_at_s: float | None = None
    # Share of the fleet the drift touches (new vehicles added, or firmware updated).
    drift_fraction: float = 0.3
    cities: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not 1 <= self.vehicles <= 1_000_000:
            raise SimSettingsError("must be between 1 and 1,000,000", setting="vehicles")
        if not 0.01 <= self.rate_hz <= 100:
            raise SimSettingsError("must be between 0.01 and 100 Hz", setting="rate_hz")
        if self.duration_s <= 0:
            raise SimSettingsError("must be positive", setting="duration_s")
        if self.payment_rate < 0:
            raise SimSettingsError("must be >= 0", setting="payment_rate")
        _check_rates(self.fault_rates, FAULT_KINDS, "fault_rates", upper=3600.0)
        _check_rates(self.fraud_rates, FRAUD_KINDS, "fraud_rates", upper=1.0)
        if sum(self.fraud_rates.values()) > 1.0:
            raise SimSettingsError(
                "fraud rates add up to more than 1 per payment", setting="fraud_rates"
            )
        for d in self.drift:
            if d not in DRIFT_KINDS:
                raise SimSettingsError(
                    f"unknown drift {d!r}; known: {', '.join(DRIFT_KINDS)}", setting="drift"
                )
        if not 0 < self.drift_fraction <= 1:
            raise SimSettingsError("must be in (0, 1]", setting="drift_fraction")
        from firmware_sim.geo import CITIES

        known = {c.name for c in CITIES}
        for c in self.cities:
            if c not in known:
                raise SimSettingsError(
                    f"unknown city {c!r}; known: {sorted(known)}", setting="cities"
                )

    @property
    def dt(self) -> float:
        return 1.0 / self.rate_hz

    @property
    def ticks(self) -> int:
        return max(1, round(self.duration_s * self.rate_hz))

    @property
    def drift_start_s(self) -> float:
        return self.duration_s / 2 if self.drift_at_s is None else self.drift_at_s


def _check_rates(rates: dict[str, float], kinds: tuple[str, ...], name: str, upper: float) -> None:
    for kind, rate in rates.items():
        if kind not in kinds:
            raise SimSettingsError(
                f"unknown kind {kind!r}; known: {', '.join(kinds)}", setting=f"{name}.{kind}"
            )
        if not 0 <= rate <= upper:
            raise SimSettingsError(f"must be between 0 and {upper}", setting=f"{name}.{kind}")
