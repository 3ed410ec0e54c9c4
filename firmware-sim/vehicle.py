"""One vehicle's physics: it drives a street grid and its sensors follow what it does.

Readings come from state that evolves with the drive (engine warm-up, load, speed, weather),
plus small sensor noise, so consecutive frames are related the way a real car's are.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from firmware_sim.geo import CityMap, Merchant, Road, in_car_merchant

from shared.fleet_catalog import VehicleModel

G = 9.81
# rpm per km/h in each gear of a combustion drivetrain (index = gear).
GEAR_RATIO = (0.0, 118.0, 68.0, 47.0, 36.0, 29.5, 25.0)
GEAR_UP_KMH = (0.0, 16.0, 31.0, 49.0, 66.0, 86.0, 999.0)
EV_RPM_PER_KMH = 95.0


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
    """State of one vehicle, advanced by :meth:`step` once per tick."""

    def __init__(self, index: int, vin: str, model: VehicleModel, driver: Driver,
                 cmap: CityMap, rng: random.Random, joins_at: float = 0.0) -> None:
        self.index = index
        self.vin = vin
        self.model = model
        self.driver = driver
        self.cmap = cmap
        self.rng = rng
        self.joins_at = joins_at
        self.firmware = model.firmware
        self.telemetry_topic = f"fleet/{vin}/telemetry"
        self.payments_topic = f"fleet/{vin}/payments"
        self.seq = 0
        self.fault: object | None = None
        # Calibration shift of a firmware rollout (drift): added to the healthy readings.
        self.thermostat = model.thermostat_c
        self.oil_gain = 1.0
        self.tyre_gain = 1.0
        self.rollout_at: float | None = None
        self._init_state()

    def _init_state(self) -> None:
        rng, m = self.rng, self.model
        self.node = rng.randrange(len(self.cmap.nodes))
        self.road = self._next_road(None)
        self.s = rng.uniform(0, self.road.length_m * 0.8)
        self.speed = rng.uniform(0, self.road.limit_kmh / 3.6 * 0.8)
        self.stop_left = 0.0
        self.stop_kind = ""  # "", "light", "fuel", "charging", "parking"
        self.planned = ""
        self.engine_on = True
        amb = self.cmap.city.ambient_c
        cold = rng.random() < 0.4
        self.coolant = amb + rng.uniform(-1, 3) if cold else self.thermostat + rng.uniform(-2, 1)
        self.intake = amb + 6
        self.soc = rng.uniform(35, 95) if m.is_ev else rng.uniform(82, 94)
        self.fuel_l = m.tank_l * rng.uniform(0.12, 0.95)
        self.odometer = rng.uniform(5_000, 180_000)
        self.tyres_cold = [m.tyre_kpa * rng.uniform(0.96, 1.03) for _ in range(4)]
        self.tyre_temp = amb if cold else amb + 10
        self.load = rng.uniform(0.0, 1.0)
        self.lateral = 0.0
        self.turn_left = 0
        self.in_car_due = rng.expovariate(max(self.driver.in_car_per_h, 1e-6) / 3600)
        self.pos = self.cmap.nodes[self.node]

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
        self.stop_kind = kind
        self.speed = 0.0
        if kind == "light":
            self.stop_left = rng.uniform(8, 45)
            return
        self.engine_on = False
        if kind == "fuel":
            self.stop_left = rng.uniform(180, 360)
            merchant = self.cmap.fuel[self.node]
            missing = self.model.tank_l - self.fuel_l
            frac = rng.uniform(0.97, 1.0) if rng.random() < self.driver.full_fill \
                else rng.uniform(0.35, 0.75)
            litres = round(missing * frac, 2)
            self.fuel_l += litres
            amount = round(litres * city.fuel_price * rng.uniform(0.98, 1.03), 2)
            intents.append(Intent("fuel", merchant, amount, litres))
        elif kind == "charging":
            self.stop_left = rng.uniform(600, 1500)
            merchant = self.cmap.charging[self.node]
            kwh = (rng.uniform(80, 95) - self.soc) / 100 * self.model.battery_kwh
            self.soc += kwh / self.model.battery_kwh * 100
            intents.append(Intent("charging", merchant,
                                  round(max(kwh, 1.0) * city.charge_price, 2)))
        else:
            hours = min(rng.lognormvariate(self.driver.park_hours_mu, 0.35), 3.0)
            self.stop_left = min(hours * 3600, rng.uniform(300, 1200))
            merchant = self.cmap.parking[self.node]
            amount = max(1.0, round(hours * city.parking_per_hour * 2) / 2)
            intents.append(Intent("parking", merchant, amount))
            self.load = rng.uniform(0.0, 1.0)  # deliveries change what the van carries

    # --- physics ---------------------------------------------------------------------------

    def _drive(self, dt: float, weather: float, intents: list[Intent], z0: float) -> float:
        """Advance position and speed; returns longitudinal acceleration (m/s^2)."""
        if self.stop_left > 0:
            self.stop_left -= dt
            if self.stop_left <= 0:
                self.stop_kind = ""
                self.engine_on = True
            self.speed = 0.0
            return 0.0
        d, road = self.driver, self.road
        target = road.limit_kmh / 3.6 * (0.82 + 0.15 * d.style) * weather
        remaining = road.length_m - self.s
        braking = bool(self.planned) and remaining < self.speed ** 2 / 4.0 + 4.0
        if braking and (remaining < 3.0 or self.speed < 0.8):
            # At the stop line: come to rest there and arrive.
            accel = -self.speed / dt
            self.s = 0.0
            self._arrive(intents)
        else:
            if braking:
                accel = -min(4.0, self.speed ** 2 / (2 * max(remaining, 1.0)))
            else:
                accel = max(-2.5, min(1.4 * d.style, (target - self.speed) / 4.0))
            accel += 0.15 * z0
            self.speed = max(0.0, self.speed + accel * dt)
            self.s += self.speed * dt
            if self.s >= road.length_m:
                self.s -= road.length_m
                self._arrive(intents)
                self.s = min(self.s, self.road.length_m * 0.5)
        f = self.s / self.road.length_m
        (la1, lo1), (la2, lo2) = self.cmap.nodes[self.road.a], self.cmap.nodes[self.road.b]
        self.pos = (la1 + (la2 - la1) * f, lo1 + (lo2 - lo1) * f)
        return accel

    def step(self, t: float, dt: float, ambient: float, weather: float,
             intents: list[Intent], z: list[float]) -> dict[str, float | int | str]:
        """Advance by ``dt`` seconds and return the healthy sensor readings at ``t``.

        ``z`` holds 16 standard-normal draws for this frame's sensor noise (drawn in bulk by
        the fleet: one vectorised call per tick is far cheaper than 16 scalar ones).
        """
        accel = self._drive(dt, weather, intents, z[0])
        m = self.model
        v = self.speed
        kmh = v * 3.6
        mass = m.mass_kg * (1 + 0.35 * self.load)
        force = mass * accel + mass * G * 0.012 + 0.48 * v * v if v > 0.1 else 0.0
        power_kw = max(force, 0.0) * v / 1000 + (2.0 if self.engine_on else 0.0)
        pfrac = min(power_kw / m.power_kw, 1.0)
        self._thermal(dt, ambient, pfrac, v)
        self._energy(dt, power_kw, force, v)
        self.odometer += v * dt / 1000
        if self.engine_on and not m.is_ev:
            gear = 0 if v < 0.3 else next(g for g in range(1, 7) if kmh < GEAR_UP_KMH[g])
            rpm = max(m.idle_rpm, kmh * GEAR_RATIO[gear]) + 300 * pfrac
            if self.coolant < 50:
                rpm += 120  # cold-start fast idle
            visc = 1 + 0.5 * min(max((self.thermostat - self.coolant) / 60, 0.0), 1.0)
            oil = (90 + rpm * 0.085 * visc) * self.oil_gain + 4 * z[1]
            rpm += 15 * z[2]
        elif self.engine_on:
            gear, rpm, oil = 1, kmh * EV_RPM_PER_KMH + 10 * z[2], 0.0
        else:
            gear, rpm, oil = 0, 0.0, 0.0
        if self.engine_on:
            batt = 14.15 - (0.25 if self.soc < 80 and not m.is_ev else 0.0) + 0.04 * z[3]
        else:
            batt = 12.1 + 0.006 * min(self.soc, 95) + 0.02 * z[3]
        self.tyre_temp += (ambient + 0.3 * kmh - self.tyre_temp) * dt / 300
        tfac = (273 + self.tyre_temp) / (273 + self.cmap.city.ambient_c) * self.tyre_gain
        if self.turn_left > 0:
            self.turn_left -= 1
            lateral = self.lateral
        else:
            lateral = 0.0
        lat, lon = self.pos
        tc = self.tyres_cold
        return {
            "lat": round(lat + 0.00002 * z[4], 6), "lon": round(lon + 0.00003 * z[5], 6),
            "speed_kmh": round(kmh, 2), "rpm": round(max(rpm, 0.0), 1), "gear": gear,
            "coolant_c": round(self.coolant + 0.3 * z[6], 2),
            "intake_c": round(self.intake + 0.4 * z[7], 2), "oil_kpa": round(oil, 1),
            "battery_v": round(batt, 3), "soc_pct": round(self.soc, 2),
            "tyre_fl_kpa": round(tc[0] * tfac + 0.8 * z[8], 1),
            "tyre_fr_kpa": round(tc[1] * tfac + 0.8 * z[9], 1),
            "tyre_rl_kpa": round(tc[2] * tfac + 0.8 * z[10], 1),
            "tyre_rr_kpa": round(tc[3] * tfac + 0.8 * z[11], 1),
            "fuel_pct": round(self.fuel_l / m.tank_l * 100, 2) if m.tank_l else 0.0,
            "odometer_km": round(self.odometer, 3),
            "accel_x_g": round(accel / G + 0.02 * z[12], 3),
            "accel_y_g": round(lateral + 0.02 * z[13], 3),
            "accel_z_g": round(1.0 + (0.01 + 0.0004 * kmh) * z[14], 3),
            "ambient_c": round(ambient + 0.2 * z[15], 1),
        }

    def _thermal(self, dt: float, ambient: float, pfrac: float, v: float) -> None:
        m = self.model
        if m.is_ev:
            target = ambient + 8 + 25 * pfrac if self.engine_on else ambient
            target = min(target, self.thermostat + 6) if self.engine_on else target
            self.coolant += (target - self.coolant) * dt / 300
        elif self.engine_on:
            heat = 0.12 + 0.6 * pfrac
            loss = (self.coolant - ambient) * 0.0008
            over = max(0.0, self.coolant - self.thermostat)
            self.coolant += (heat - loss - over * 0.15 * (1 + v / 15)) * dt
        else:
            self.coolant -= (self.coolant - ambient) * 0.0006 * dt
        soak = 18 * math.exp(-v / 6) if self.engine_on else 10.0
        self.intake += (ambient + 4 + soak - self.intake) * dt / 40

    def _energy(self, dt: float, power_kw: float, force: float, v: float) -> None:
        m = self.model
        if m.is_ev:
            regen = min(force, 0.0) * v / 1000 * 0.6
            used = (power_kw + regen) * dt / 3600 if self.engine_on else 0.0
            self.soc = max(1.0, self.soc - used / m.battery_kwh * 100)
            return
        if self.engine_on:
            litres = (0.6 + 0.3 * power_kw) * dt / 3600 * m.consumption_per_100km / 6.5
            self.fuel_l = max(0.5, self.fuel_l - litres)
            self.soc = min(95.0, self.soc + 0.002 * dt)
        else:
            self.soc = max(60.0, self.soc - 0.0005 * dt)

    # --- habits ----------------------------------------------------------------------------

    def in_car_purchases(self, dt: float, intents: list[Intent]) -> None:
        """Poisson in-car purchases at the driver's own rate, amounts from their habit."""
        if not self.engine_on:
            return
        self.in_car_due -= dt
        if self.in_car_due > 0:
            return
        d, rng = self.driver, self.rng
        self.in_car_due = rng.expovariate(max(d.in_car_per_h, 1e-6) / 3600)
        merchant = in_car_merchant(rng) if rng.random() < 0.3 else \
            in_car_merchant(random.Random(d.favourite_in_car))
        amount = round(min(rng.lognormvariate(d.in_car_mu, d.in_car_sigma), 80.0), 2)
        intents.append(Intent("in_car", merchant, max(amount, 0.99)))

    @property
    def driving(self) -> bool:
        return self.engine_on and self.speed > 1.0
