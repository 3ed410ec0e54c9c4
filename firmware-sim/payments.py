"""Payments: the legitimate ones a vehicle's situation calls for, and injected fraud.

Each legitimate payment is one opportunity for fraud: with the configured probability per
kind, a fraud episode follows it (the card was skimmed at that station, the vehicle's wallet
was compromised...). Fraud events are labelled; the legitimate payment never is.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from firmware_sim.geo import CITIES, CityMap, Merchant, in_car_merchant
from firmware_sim.vehicle import Intent, Vehicle

# A planned payment: (ts, vehicle that publishes it, fields that differ from a normal one).
Planned = tuple[float, Vehicle, dict[str, object]]
ONLINE_TEST_MERCHANTS = (
    ("Digital Gift Shop", "5815"),
    ("Game Credits Online", "5816"),
    ("Web Services Ltd", "5818"),
    ("Ticket Resale", "5999"),
)


@dataclass
class FraudContext:
    rng: random.Random
    t: float
    vehicle: Vehicle
    intent: Intent
    others: Callable[[], Vehicle]  # another vehicle of the fleet, chosen by the rng
    maps: dict[str, CityMap]


def normal_fields(v: Vehicle, intent: Intent) -> dict[str, object]:
    """Payment fields of a legitimate payment by ``v``'s driver with their own card."""
    m = intent.merchant
    lat, lon = (m.lat, m.lon) if m.category != "in_car" else v.pos
    return {
        "vin": v.vin,
        "driver_id": v.driver.driver_id,
        "driver_name": v.driver.name,
        "card_number": v.driver.card,
        "cardholder": v.driver.name,
        "merchant_id": m.merchant_id,
        "merchant_name": m.name,
        "mcc": m.mcc,
        "category": intent.category,
        "amount": intent.amount,
        "currency": v.cmap.city.currency,
        "lat": round(lat, 6),
        "lon": round(lon, 6),
        "volume_l": intent.volume_l,
    }


def _merchant_fields(m: Merchant, category: str) -> dict[str, object]:
    return {
        "merchant_id": m.merchant_id,
        "merchant_name": m.name,
        "mcc": m.mcc,
        "category": category,
    }


def card_testing(c: FraudContext) -> list[Planned]:
    """A burst of tiny charges checking whether a stolen card number works."""
    rng, v = c.rng, c.vehicle
    name, mcc = ONLINE_TEST_MERCHANTS[rng.randrange(len(ONLINE_TEST_MERCHANTS))]
    m = Merchant(f"web-{name.lower().replace(' ', '-')}", name, mcc, "in_car", 0.0, 0.0)
    t = c.t + rng.uniform(20, 120)
    out: list[Planned] = []
    for _ in range(rng.randint(4, 8)):
        amount = rng.choice((0.5, 0.99, 1.0, 1.49, 1.99, 2.0))
        out.append((t, v, {**_merchant_fields(m, "in_car"), "amount": amount, "volume_l": None}))
        t += rng.uniform(2, 12)
    return out


def impossible_travel(c: FraudContext) -> list[Planned]:
    """The driver's card charged in another city minutes after a payment here."""
    rng, v = c.rng, c.vehicle
    far = [name for name in c.maps if name != v.cmap.city.name]
    if not far:  # a one-city fleet: use a city outside it
        far_city = next(city for city in CITIES if city.name != v.cmap.city.name)
        cmap = CityMap(far_city, random.Random(far_city.name))
    else:
        cmap = c.maps[far[rng.randrange(len(far))]]
    category = rng.choice(("fuel", "parking"))
    m = cmap.any_merchant(rng, category)
    if category == "fuel":
        litres = round(rng.uniform(20, 45), 2)
        amount, vol = round(litres * cmap.city.fuel_price, 2), litres
    else:
        amount, vol = round(rng.uniform(1, 3) * cmap.city.parking_per_hour, 2), None
    fields = {
        **_merchant_fields(m, category),
        "amount": amount,
        "volume_l": vol,
        "currency": cmap.city.currency,
        "lat": round(m.lat, 6),
        "lon": round(m.lon, 6),
    }
    return [(c.t + rng.uniform(30, 300), v, fields)]


def amount_outlier(c: FraudContext) -> list[Planned]:
    """An in-car charge many times what this driver ever spends."""
    rng, v = c.rng, c.vehicle
    usual = random.Random(v.driver.favourite_in_car)
    m = in_car_merchant(usual)
    d = v.driver
    amount = round(rng.lognormvariate(d.in_car_mu, 0.2) * rng.uniform(12, 40) + 150, 2)
    return [
        (
            c.t + rng.uniform(10, 120),
            v,
            {**_merchant_fields(m, "in_car"), "amount": amount, "volume_l": None},
        )
    ]


def fuel_over_capacity(c: FraudContext) -> list[Planned]:
    """More fuel bought than the vehicle's tank holds (filling cans or another car)."""
    rng, v = c.rng, c.vehicle
    if v.model.is_ev:
        return []
    m = v.cmap.fuel.get(v.node) or v.cmap.any_merchant(rng, "fuel")
    litres = round(v.model.tank_l * rng.uniform(1.4, 2.5), 2)
    amount = round(litres * v.cmap.city.fuel_price * rng.uniform(0.98, 1.03), 2)
    return [
        (
            c.t + rng.uniform(60, 300),
            v,
            {
                **_merchant_fields(m, "fuel"),
                "amount": amount,
                "volume_l": litres,
                "lat": round(m.lat, 6),
                "lon": round(m.lon, 6),
            },
        )
    ]


def merchant_repeat(c: FraudContext) -> list[Planned]:
    """The same merchant charging the card again and again within minutes."""
    rng, v, intent = c.rng, c.vehicle, c.intent
    m = intent.merchant
    category = intent.category if intent.category in ("parking", "in_car") else "in_car"
    if category != intent.category:
        m = in_car_merchant(rng)
    t = c.t + rng.uniform(5, 30)
    out: list[Planned] = []
    for _ in range(rng.randint(4, 7)):
        amount = round(max(intent.amount, 2.0) * rng.uniform(0.8, 1.2), 2)
        out.append((t, v, {**_merchant_fields(m, category), "amount": amount, "volume_l": None}))
        t += rng.uniform(8, 40)
    return out


def cloned_card(c: FraudContext) -> list[Planned]:
    """This driver's card, cloned, used from another vehicle at about the same time."""
    rng, v = c.rng, c.vehicle
    other = c.others()
    if other is v:
        return []
    out: list[Planned] = []
    t = c.t + rng.uniform(0, 120)
    for _ in range(rng.randint(1, 3)):
        category = rng.choice(("fuel", "parking", "in_car"))
        if category == "in_car":
            m = in_car_merchant(rng)
            amount: float = round(rng.uniform(5, 60), 2)
            vol = None
        else:
            m = other.cmap.any_merchant(rng, category)
            vol = round(rng.uniform(25, 50), 2) if category == "fuel" else None
            amount = round(
                (vol or rng.uniform(1, 3))
                * (other.cmap.city.fuel_price if vol else other.cmap.city.parking_per_hour),
                2,
            )
        lat, lon = other.pos if category == "in_car" else (m.lat, m.lon)
        out.append(
            (
                t,
                other,
                {
                    "vin": other.vin,
                    "driver_id": other.driver.driver_id,
                    "driver_name": other.driver.name,
                    "card_number": v.driver.card,
                    "cardholder": v.driver.name,
                    **_merchant_fields(m, category),
                    "amount": amount,
                    "currency": other.cmap.city.currency,
                    "lat": round(lat, 6),
                    "lon": round(lon, 6),
                    "volume_l": vol,
                },
            )
        )
        t += rng.uniform(30, 240)
    return out


FRAUDS: dict[str, Callable[[FraudContext], list[Planned]]] = {
    "card_testing": card_testing,
    "impossible_travel": impossible_travel,
    "amount_outlier": amount_outlier,
    "fuel_over_capacity": fuel_over_capacity,
    "merchant_repeat": merchant_repeat,
    "cloned_card": cloned_card,
}
