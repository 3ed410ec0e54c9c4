"""Cities, their road networks and the merchants along them.

Each city is a bounding box holding a jittered street grid: ring roads on the edge, arterials
through the middle and slower side streets, so routes look like driving rather than noise.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

EARTH_M = 6_371_000.0


@dataclass(frozen=True)
class City:
    name: str
    lat0: float
    lat1: float
    lon0: float
    lon1: float
    currency: str
    fuel_price: float  # per litre
    charge_price: float  # per kWh
    parking_per_hour: float
    toll: float
    ambient_c: float  # typical daytime temperature of the simulated season


CITIES: tuple[City, ...] = (
    City("berlin", 52.45, 52.58, 13.28, 13.52, "EUR", 1.78, 0.59, 3.0, 4.5, 14.0),
    City("hamburg", 53.52, 53.61, 9.90, 10.12, "EUR", 1.76, 0.57, 2.8, 5.0, 12.0),
    City("munich", 48.10, 48.19, 11.49, 11.65, "EUR", 1.81, 0.62, 3.6, 4.0, 16.0),
    City("london", 51.46, 51.55, -0.19, 0.02, "GBP", 1.47, 0.69, 4.5, 15.0, 13.0),
    City("warsaw", 52.18, 52.28, 20.92, 21.09, "PLN", 6.45, 2.4, 6.0, 20.0, 11.0),
)


def distance_m(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance (haversine), metres."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * EARTH_M * math.asin(min(1.0, math.sqrt(a)))


@dataclass(frozen=True)
class Merchant:
    merchant_id: str
    name: str
    mcc: str
    category: str
    lat: float
    lon: float


@dataclass
class Road:
    """A directed street segment between two grid nodes."""

    a: int
    b: int
    length_m: float
    limit_kmh: float
    heading: float  # radians, for lateral acceleration in turns
    toll: Merchant | None = None


FUEL_BRANDS = ("Aral", "Shell", "TotalEnergies", "Esso", "Orlen", "BP", "Jet")
CHARGE_BRANDS = ("Ionity", "EnBW", "Allego", "Fastned", "Tesla Supercharger")
PARKING_BRANDS = ("APCOA", "Contipark", "Q-Park", "City Parking", "Indigo")
IN_CAR_MERCHANTS = (
    ("Spotify In-Car", "5815"),
    ("Audible", "5815"),
    ("Drive-Thru Coffee", "5814"),
    ("Burger Drive", "5814"),
    ("Nav Maps Premium", "5817"),
    ("CarWash Express", "7542"),
    ("App Store", "5818"),
)
MCC = {"fuel": "5541", "charging": "5552", "parking": "7523", "toll": "4784"}


class CityMap:
    """Street grid and merchants of one city; built deterministically from an rng."""

    def __init__(self, city: City, rng: random.Random, size: int = 7) -> None:
        self.city = city
        self.size = size
        self.nodes: list[tuple[float, float]] = []
        dlat = (city.lat1 - city.lat0) / (size - 1)
        dlon = (city.lon1 - city.lon0) / (size - 1)
        for i in range(size):
            for j in range(size):
                jl = rng.uniform(-0.25, 0.25) if 0 < i < size - 1 else 0.0
                jo = rng.uniform(-0.25, 0.25) if 0 < j < size - 1 else 0.0
                self.nodes.append((city.lat0 + (i + jl) * dlat, city.lon0 + (j + jo) * dlon))
        self.out: list[list[Road]] = [[] for _ in self.nodes]
        self._build_roads(rng)
        self.fuel: dict[int, Merchant] = {}
        self.charging: dict[int, Merchant] = {}
        self.parking: dict[int, Merchant] = {}
        self._place_merchants(rng)

    def _limit(self, i1: int, j1: int, i2: int, j2: int) -> float:
        edge = self.size - 1
        if (i1 == i2 and i1 in (0, edge)) or (j1 == j2 and j1 in (0, edge)):
            return 80.0  # ring road
        if (i1 == i2 and i1 == edge // 2) or (j1 == j2 and j1 == edge // 2):
            return 60.0  # arterial through the centre
        return 40.0 if (i1 + j1) % 2 else 50.0

    def _build_roads(self, rng: random.Random) -> None:
        n = self.size
        for i in range(n):
            for j in range(n):
                for di, dj in ((0, 1), (1, 0)):
                    i2, j2 = i + di, j + dj
                    if i2 >= n or j2 >= n:
                        continue
                    a, b = i * n + j, i2 * n + j2
                    limit = self._limit(i, j, i2, j2)
                    toll = None
                    if limit == 80.0 and rng.random() < 0.12:
                        la, lo = self.midpoint(a, b)
                        toll = Merchant(
                            f"toll-{self.city.name}-{a}-{b}",
                            f"{self.city.name.title()} Tunnel {a}{b}",
                            MCC["toll"],
                            "toll",
                            la,
                            lo,
                        )
                    for x, y in ((a, b), (b, a)):
                        (la1, lo1), (la2, lo2) = self.nodes[x], self.nodes[y]
                        heading = math.atan2(la2 - la1, (lo2 - lo1) * math.cos(math.radians(la1)))
                        self.out[x].append(
                            Road(x, y, distance_m(la1, lo1, la2, lo2), limit, heading, toll)
                        )

    def midpoint(self, a: int, b: int) -> tuple[float, float]:
        (la1, lo1), (la2, lo2) = self.nodes[a], self.nodes[b]
        return (la1 + la2) / 2, (lo1 + lo2) / 2

    def _place_merchants(self, rng: random.Random) -> None:
        cname = self.city.name
        for k, (la, lo) in enumerate(self.nodes):
            if rng.random() < 0.45:
                brand = rng.choice(FUEL_BRANDS)
                self.fuel[k] = Merchant(
                    f"fuel-{cname}-{k}", f"{brand} {cname.title()} {k}", MCC["fuel"], "fuel", la, lo
                )
            if rng.random() < 0.35:
                brand = rng.choice(CHARGE_BRANDS)
                self.charging[k] = Merchant(
                    f"chg-{cname}-{k}",
                    f"{brand} {cname.title()} {k}",
                    MCC["charging"],
                    "charging",
                    la,
                    lo,
                )
            if rng.random() < 0.4:
                brand = rng.choice(PARKING_BRANDS)
                self.parking[k] = Merchant(
                    f"park-{cname}-{k}",
                    f"{brand} {cname.title()} {k}",
                    MCC["parking"],
                    "parking",
                    la,
                    lo,
                )

    def any_merchant(self, rng: random.Random, category: str) -> Merchant:
        table = {"fuel": self.fuel, "charging": self.charging, "parking": self.parking}[category]
        keys = sorted(table)
        return table[keys[rng.randrange(len(keys))]]


def in_car_merchant(rng: random.Random) -> Merchant:
    name, mcc = IN_CAR_MERCHANTS[rng.randrange(len(IN_CAR_MERCHANTS))]
    slug = name.lower().replace(" ", "-")
    return Merchant(f"incar-{slug}", name, mcc, "in_car", 0.0, 0.0)
