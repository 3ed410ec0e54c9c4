"""Payment features: amount against the driver's usual, where the card and the vehicle were,
how fast the card is being used, and fuel volume against the tank.

Pure functions: they read a Payment plus the card's, driver's and vehicle's previous states and
return a new dict or a new state.
"""

from __future__ import annotations

import math

from shared.contracts import Payment
from shared.features.catalog import tank_litres
from shared.features.geo import haversine_km
from shared.features.guard import fin, log1p_pos
from shared.features.state import AmountStats, CardState, CardUse, DriverState, VehicleState

CATEGORIES = ("fuel", "charging", "toll", "parking", "in_car")
WINDOWS_S = (("1m", 60.0), ("10m", 600.0), ("1h", 3600.0))
KEEP_S = 3600.0  # the longest window: older uses are dropped from the card state
MAX_RECENT = 64  # bound the card state even under a card-testing burst
TINY_AMOUNT = 2.0  # card testers probe with amounts this small
MIN_TRAVEL_DT_S = 60.0  # two uses a few seconds apart are not a 10,000 km/h journey
NEVER_S = 30 * 86_400.0  # "time since last use" of a card never seen before
MIN_DRIVER_HISTORY = 3
MIN_LOG_STD = 0.25


def amount_features(event: Payment, driver: DriverState | None) -> dict[str, float]:
    log_amount = math.log1p(fin(event.amount, 0.0))
    stats = driver.by_category.get(event.category) if driver else None
    z = 0.0
    n = 0
    if stats is not None:
        n = stats.n
        if n >= MIN_DRIVER_HISTORY:
            std = max(MIN_LOG_STD, math.sqrt(stats.m2 / (n - 1)))
            z = fin((log_amount - stats.mean) / std, -20.0, 20.0)
    return {"log_amount": log_amount, "amount_z": z, "driver_history": log1p_pos(n)}


def position_features(event: Payment, vehicle: VehicleState | None) -> dict[str, float]:
    """How far the payment is from where the vehicle last reported itself."""
    if vehicle is None:
        return {
            "vehicle_distance_km": 0.0,
            "vehicle_fix_age_s": log1p_pos(NEVER_S),
            "vehicle_known": 0.0,
        }
    return {
        "vehicle_distance_km": fin(haversine_km(event.lat, event.lon, vehicle.lat, vehicle.lon)),
        "vehicle_fix_age_s": log1p_pos(abs(event.ts - vehicle.ts), NEVER_S),
        "vehicle_known": 1.0,
    }


def card_features(event: Payment, card: CardState | None, vehicle_token: str) -> dict[str, float]:
    """Velocity of the card: uses per window, tiny probes, merchant repeats, vehicles sharing it."""
    out: dict[str, float] = {}
    recent = card.recent if card else ()
    ages = [event.ts - use.ts for use in recent]
    for label, window in WINDOWS_S:
        out[f"card_uses_{label}"] = float(1 + sum(1 for a in ages if 0 <= a <= window))
    in_10m = [use for use, a in zip(recent, ages, strict=True) if 0 <= a <= 600.0]
    tiny_now = 1 if event.amount < TINY_AMOUNT else 0
    out["tiny_amounts_10m"] = float(tiny_now + sum(1 for u in in_10m if u.amount < TINY_AMOUNT))
    out["merchant_repeats_10m"] = float(sum(1 for u in in_10m if u.merchant == event.merchant_id))
    vehicles = {u.vehicle for u, a in zip(recent, ages, strict=True) if 0 <= a <= 3600.0}
    vehicles.add(vehicle_token)
    out["card_vehicles_1h"] = float(len(vehicles))
    if card is None:
        out.update(
            card_since_last_s=log1p_pos(NEVER_S),
            card_travel_km=0.0,
            card_travel_kmh=0.0,
            card_history=0.0,
        )
        return out
    dt = abs(event.ts - card.last_ts)
    km = haversine_km(event.lat, event.lon, card.last_lat, card.last_lon)
    out["card_since_last_s"] = log1p_pos(dt, NEVER_S)
    out["card_travel_km"] = fin(km)
    out["card_travel_kmh"] = fin(km / (max(dt, MIN_TRAVEL_DT_S) / 3600.0), 0.0, 20_000.0)
    out["card_history"] = log1p_pos(card.n)
    return out


def fuel_features(event: Payment, vehicle: VehicleState | None) -> dict[str, float]:
    """Litres bought against the tank: more than the tank could take is a red flag."""
    tank = tank_litres(vehicle.model) if vehicle else None
    volume = fin(event.volume_l, 0.0) if event.volume_l is not None else None
    if volume is None or tank is None or vehicle is None:
        return {"fuel_tank_ratio": 0.0, "fuel_fill_ratio": 0.0}
    room = max(1.0, tank * (1.0 - vehicle.fuel_pct / 100.0))
    return {
        "fuel_tank_ratio": fin(volume / tank, 0.0, 50.0),
        "fuel_fill_ratio": fin(volume / room, 0.0, 50.0),
    }


def category_onehot(event: Payment) -> dict[str, float]:
    return {f"cat_{c}": 1.0 if event.category == c else 0.0 for c in CATEGORIES}


def payment_features(
    event: Payment,
    card: CardState | None,
    driver: DriverState | None,
    vehicle: VehicleState | None,
    vehicle_token: str,
) -> dict[str, float]:
    """Every payment feature, given the states before this payment."""
    out = amount_features(event, driver)
    out.update(position_features(event, vehicle))
    out.update(card_features(event, card, vehicle_token))
    out.update(fuel_features(event, vehicle))
    out.update(category_onehot(event))
    return out


def update_card(card: CardState | None, event: Payment, vehicle_token: str) -> CardState:
    use = CardUse(
        ts=event.ts,
        amount=fin(event.amount, 0.0),
        merchant=event.merchant_id,
        vehicle=vehicle_token,
    )
    if card is None:
        return CardState(
            n=1, last_ts=event.ts, last_lat=event.lat, last_lon=event.lon, recent=(use,)
        )
    horizon = max(card.last_ts, event.ts) - KEEP_S
    kept = [u for u in card.recent if u.ts >= horizon]
    kept.append(use)
    kept.sort(key=lambda u: u.ts)
    newer = event.ts >= card.last_ts
    return CardState(
        n=card.n + 1,
        last_ts=event.ts if newer else card.last_ts,
        last_lat=event.lat if newer else card.last_lat,
        last_lon=event.lon if newer else card.last_lon,
        recent=tuple(kept[-MAX_RECENT:]),
    )


def update_driver(driver: DriverState | None, event: Payment) -> DriverState:
    x = math.log1p(fin(event.amount, 0.0))
    cats = dict(driver.by_category) if driver else {}
    old = cats.get(event.category)
    if old is None:
        cats[event.category] = AmountStats(n=1, mean=x, m2=0.0)
    else:
        n = old.n + 1
        delta = x - old.mean
        mean = old.mean + delta / n
        cats[event.category] = AmountStats(n=n, mean=mean, m2=old.m2 + delta * (x - mean))
    return DriverState(by_category=cats)
