"""One vehicle: its route through a street grid, its stops and what it pays for.

Its continuous state (speed, temperatures, charge...) is a row of the fleet's
:class:`~firmware_sim.physics.FleetArrays`, advanced for every vehicle at once by
:mod:`firmware_sim.physics`; the attributes below read and write that row, so the branchy,
rare decisions here (which road next, where to stop, what to buy) stay plain Python.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Any

from firmware_sim.geo import CityMap, Merchant, Road, in_car_merchant
from firmware_sim.physics import FleetArrays, G

from shared.fleet_catalog import VehicleModel


class _Row:
    """An attribute stored in the vehicle's row of one fleet column."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, obj: Vehicle, owner: type | None = None) -> Any:
        return getattr(obj.arrays, self.name)[obj.index].item()

    def __set__(self, obj: Vehicle, value: Any) -> None:
        getattr(obj.arrays, self.name)[obj.index] = value


@dataclass
class Driver:
    """A driver and their habits: what they pay for, how often and how much."""

    driver_id: str
    name: str
    card: str
    style: float  # 0.75 calm .. 1.3 brisk: acceleration and cruising speed
    fuel_threshold: float  # refuel / recharge below this share of the tank
    full_fill: float  # probability of filling up completely
    park_prob: float  # probability of parking at a node that has a car park
    park_hours_mu: float
    in_car_per_h: float
    in_car_mu: float  # lognormal location of an in-car purchase amount
    in_car_sigma: float
    favourite_in_car: int


@dataclass
class Intent:
    """A payment the vehicle's situation calls for; the fleet turns it into an event."""

    category: str
    merchant: Merchant
    amount: float
    volume_l: float | None = None


class Vehicle:
    """One vehicle; its continuous state lives in row ``index`` of ``arrays``."""

    speed = _Row()
    s = _Row()
    stop_left = _Row()
    coolant = _Row()
    intake = _Row()
    soc = _Row()
    fuel_l = _Row()
    odometer = _Row()
    tyre_temp = _Row()
    load = _Row()
    lateral = _Row()
    turn_left = _Row()
    in_car_due = _Row()
    engine_on = _Row()
    thermostat = _Row()
    oil_gain = _Row()
    tyre_gain = _Row()
    charge_rate = _Row()
    fill_rate = _Row()

    def __init__(
        self,
        index: int,
        vin: str,
        model: VehicleModel,
        driver: Driver,
        cmap: CityMap,
        rng: random.Random,
        arrays: FleetArrays,
        city: int,
        joins_at: float = 0.0,
    ) -> None:
        self.index = index
        self.arrays = arrays
        self.vin = vin
        self.model = model
        self.driver = driver
        self.cmap = cmap
        self.rng = rng
        a, i = arrays, index
        a.joins_at[i] = joins_at
        a.mass[i], a.power[i], a.is_ev[i] = model.mass_kg, model.power_kw, model.is_ev
        a.tank[i], a.battery[i] = model.tank_l, model.battery_kwh
        a.consumption[i], a.idle_rpm[i] = model.consumption_per_100km, model.idle_rpm
        a.style[i], a.city[i], a.city_ambient[i] = driver.style, city, cmap.city.ambient_c
        self.firmware = model.firmware
        self.telemetry_topic = f"fleet/{vin}/telemetry"
        self.payments_topic = f"fleet/{vin}/payments"
        self.seq = 0
        self.fault: object | None = None
        # Calibration shift of a firmware rollout (drift): added to the healthy readings.
        self.thermostat = model.thermostat_c
        self.oil_gain = 1.0
        self.tyre_gain = 1.0
        self._road: Road | None = None
        self._planned = ""
        self._init_state()

    def _init_state(self) -> None:
        rng, m = self.rng, self.model
        self.node = rng.randrange(len(self.cmap.nodes))
        self.road = self._next_road(None)
        self.s = rng.uniform(0, self.road.length_m * 0.8)
        self.speed = rng.uniform(0, self.road.limit_kmh / 3.6 * 0.8)
        self.stop_left = 0.0
        self.planned = ""
        self.engine_on = True
        amb = self.cmap.city.ambient_c
        cold = rng.random() < 0.4
        self.coolant = amb + rng.uniform(-1, 3) if cold else self.thermostat + rng.uniform(-2, 1)
        self.intake = amb + 6
        self.soc = rng.uniform(35, 95) if m.is_ev else rng.uniform(82, 94)
        self.fuel_l = m.tank_l * rng.uniform(0.12, 0.95)
        self.odometer = rng.uniform(5_000, 180_000)
        self.arrays.tyres_cold[self.index] = [
            m.tyre_kpa * rng.uniform(0.96, 1.03) for _ in range(4)
        ]
        self.tyre_temp = amb if cold else amb + 10
        self.load = rng.uniform(0.0, 1.0)
        self.lateral = 0.0
        self.turn_left = 0
        self.in_car_due = rng.expovariate(max(self.driver.in_car_per_h, 1e-6) / 3600)
        self.pos = self.cmap.nodes[self.node]

    # --- row-backed state that is not a plain number ---------------------------------------

    @property
    def road(self) -> Road:
        assert self._road is not None
        return self._road

    @road.setter
    def road(self, road: Road) -> None:
        self._road = road
        a, i = self.arrays, self.index
        (a.a_lat[i], a.a_lon[i]), (a.b_lat[i], a.b_lon[i]) = (
            self.cmap.nodes[road.a],
            self.cmap.nodes[road.b],
        )
        a.road_len[i], a.road_limit[i] = road.length_m, road.limit_kmh

    @property
    def planned(self) -> str:
        """The stop planned at the end of the current road ("" for none)."""
        return self._planned

    @planned.setter
    def planned(self, kind: str) -> None:
        self._planned = kind
        self.arrays.planned[self.index] = bool(kind)

    @property
    def pos(self) -> tuple[float, float]:
        return self.arrays.lat[self.index].item(), self.arrays.lon[self.index].item()

    @pos.setter
    def pos(self, value: tuple[float, float]) -> None:
        self.arrays.lat[self.index], self.arrays.lon[self.index] = value

    @property
    def rollout_at(self) -> float | None:
        """When a firmware rollout reaches this vehicle (None: never, or done)."""
        at = self.arrays.rollout_at[self.index].item()
        return None if at == float("inf") else at

    @rollout_at.setter
    def rollout_at(self, value: float | None) -> None:
        self.arrays.rollout_at[self.index] = float("inf") if value is None else value

    @property
    def joins_at(self) -> float:
        return self.arrays.joins_at[self.index].item()

    # --- route -----------------------------------------------------------------------------

    def _next_road(self, came_from: int | None) -> Road:
        options = self.cmap.out[self.node]
        forward = [r for r in options if r.b != came_from] or options
        return forward[self.rng.randrange(len(forward))]

    def _plan_stop(self) -> str:
        """What to do at the end of the road just entered."""
        d, m, node = self.driver, self.model, self.road.b
        if m.is_ev:
            if self.soc < d.fuel_threshold * 100 and node in self.cmap.charging:
                return "charging"
        elif self.fuel_l < d.fuel_threshold * m.tank_l and node in self.cmap.fuel:
            return "fuel"
        if node in self.cmap.parking and self.rng.random() < d.park_prob:
            return "parking"
        return "light" if self.rng.random() < 0.3 else ""

    def _arrive(self, intents: list[Intent]) -> None:
        road = self.road
        if road.toll is not None:
            factor = 2.0 if self.model.mass_kg > 3000 else 1.0
            intents.append(Intent("toll", road.toll, round(self.cmap.city.toll * factor, 2)))
        came_from = self.node
        self.node = road.b
        kind, self.planned = self.planned, ""
        if kind:
            self._begin_stop(kind, intents)
        self.road = self._next_road(came_from)
        turn = (self.road.heading - road.heading + math.pi) % (2 * math.pi) - math.pi
        # Drivers slow into turns; lateral grip tops out well below 0.5 g in city traffic.
        self.lateral = max(-0.4, min(0.4, self.speed * turn / 3.0 / G))
        self.turn_left = 3
        self.planned = self._plan_stop()

    def _begin_stop(self, kind: str, intents: list[Intent]) -> None:
        rng, city = self.rng, self.cmap.city
        self.speed = 0.0
        if kind == "light":
            self.stop_left = rng.uniform(8, 45)
            return
        self.engine_on = False
        self.charge_rate = 0.0
        self.fill_rate = 0.0
        if kind == "fuel":
            self.stop_left = rng.uniform(180, 360)
            merchant = self.cmap.fuel[self.node]
            missing = self.model.tank_l - self.fuel_l
            frac = (
                rng.uniform(0.97, 1.0)
                if rng.random() < self.driver.full_fill
                else rng.uniform(0.35, 0.75)
            )
            litres = round(missing * frac, 2)
            # The fuel flows in while the vehicle stands at the pump (physics adds it).
            self.fill_rate = litres / self.stop_left
            amount = round(litres * city.fuel_price * rng.uniform(0.98, 1.03), 2)
            intents.append(Intent("fuel", merchant, amount, litres))
        elif kind == "charging":
            self.stop_left = rng.uniform(600, 1500)
            merchant = self.cmap.charging[self.node]
            kwh = (rng.uniform(80, 95) - self.soc) / 100 * self.model.battery_kwh
            # The charge flows in over the stop (physics adds it tick by tick), not in one frame.
            self.charge_rate = kwh / self.model.battery_kwh * 100 / self.stop_left
            intents.append(
                Intent("charging", merchant, round(max(kwh, 1.0) * city.charge_price, 2))
            )
        else:
            hours = min(rng.lognormvariate(self.driver.park_hours_mu, 0.35), 3.0)
            self.stop_left = min(hours * 3600, rng.uniform(300, 1200))
            merchant = self.cmap.parking[self.node]
            amount = max(1.0, round(hours * city.parking_per_hour * 2) / 2)
            intents.append(Intent("parking", merchant, amount))
            self.load = rng.uniform(0.0, 1.0)  # deliveries change what the van carries

    # --- habits ----------------------------------------------------------------------------

    def in_car_purchase(self, intents: list[Intent]) -> None:
        """The in-car purchase that fell due (Poisson at the driver's own rate)."""
        d, rng = self.driver, self.rng
        self.in_car_due = rng.expovariate(max(d.in_car_per_h, 1e-6) / 3600)
        merchant = (
            in_car_merchant(rng)
            if rng.random() < 0.3
            else in_car_merchant(random.Random(d.favourite_in_car))
        )
        amount = round(min(rng.lognormvariate(d.in_car_mu, d.in_car_sigma), 80.0), 2)
        intents.append(Intent("in_car", merchant, max(amount, 0.99)))

    @property
    def driving(self) -> bool:
        return self.engine_on and self.speed > 1.0
