"""The fleet's physics, one numpy operation per quantity per tick across every vehicle.

Continuous state (speed, temperatures, charge, fuel...) lives in :class:`FleetArrays`, one
column per quantity; :class:`~firmware_sim.vehicle.Vehicle` reads and writes its own row for
the rare, branchy events (reaching a junction, stopping, paying). A tick is

1. :func:`drive` moves every vehicle along its road and reports who reached the end;
2. the fleet lets those vehicles choose their next road or stop (per vehicle, in Python);
3. :func:`sense` updates engine, thermal and energy state and returns the sensor columns.

Readings come from state that evolves with the drive (warm-up, load, speed, weather) plus
small sensor noise, so consecutive frames are related the way a real car's are.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from shared.contracts import TELEMETRY_READINGS

G = 9.81
# rpm per km/h in each gear of a combustion drivetrain (index = gear).
GEAR_RATIO = np.array((0.0, 118.0, 68.0, 47.0, 36.0, 29.5, 25.0))
GEAR_UP_KMH = np.array((16.0, 31.0, 49.0, 66.0, 86.0))  # shift up from gear 1..5 here
EV_RPM_PER_KMH = 95.0
# Telemetry fields :func:`sense` returns, in the contract's order.
READINGS = ("lat", "lon", *TELEMETRY_READINGS)
NOISE_COLUMNS = 16

Index = Any  # a slice (every vehicle) or an integer index array (those that have joined)


class FleetArrays:
    """Per-vehicle state as columns; row ``i`` belongs to the vehicle with index ``i``."""

    # evolving state
    speed: np.ndarray
    s: np.ndarray  # metres along the current road
    stop_left: np.ndarray
    coolant: np.ndarray
    intake: np.ndarray
    soc: np.ndarray
    fuel_l: np.ndarray
    odometer: np.ndarray
    tyre_temp: np.ndarray
    load: np.ndarray
    lateral: np.ndarray
    in_car_due: np.ndarray
    thermostat: np.ndarray
    oil_gain: np.ndarray
    tyre_gain: np.ndarray
    charge_rate: np.ndarray  # % of the battery per second while plugged in (engine off)
    fill_rate: np.ndarray  # litres per second while the pump runs (engine off)
    lat: np.ndarray
    lon: np.ndarray
    # the road being driven (set when the vehicle enters it)
    road_len: np.ndarray
    road_limit: np.ndarray
    a_lat: np.ndarray
    a_lon: np.ndarray
    b_lat: np.ndarray
    b_lon: np.ndarray
    # fixed per vehicle: its model, driver and city
    mass: np.ndarray
    power: np.ndarray
    tank: np.ndarray
    battery: np.ndarray
    consumption: np.ndarray
    idle_rpm: np.ndarray
    style: np.ndarray
    city_ambient: np.ndarray
    joins_at: np.ndarray
    rollout_at: np.ndarray

    def __init__(self, n: int) -> None:
        for name, kind in self.__annotations__.items():
            if kind == "np.ndarray":
                setattr(self, name, np.zeros(n))
        self.turn_left = np.zeros(n, np.int64)
        self.engine_on = np.zeros(n, bool)
        self.planned = np.zeros(n, bool)
        self.is_ev = np.zeros(n, bool)
        self.has_fault = np.zeros(n, bool)
        self.city = np.zeros(n, np.int64)
        self.tyres_cold = np.zeros((n, 4))
        self.rollout_at[:] = np.inf


def drive(
    a: FleetArrays, ix: Index, dt: float, weather: np.ndarray, z0: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Advance speed and position along the road.

    Returns (longitudinal acceleration m/s^2, stopped this tick, reached the stop line,
    ran past the road's end); the caller lets the last two choose their next road, then
    calls :func:`place`. The masks index the ``ix`` selection.
    """
    speed, s, length = a.speed[ix], a.s[ix], a.road_len[ix]
    stop_left = a.stop_left[ix]
    stopped = stop_left > 0
    stop_left = np.where(stopped, stop_left - dt, stop_left)
    a.stop_left[ix] = stop_left
    resumed = stopped & (stop_left <= 0)
    if resumed.any():
        a.engine_on[_sub(ix, resumed)] = True
    style = a.style[ix]
    target = a.road_limit[ix] / 3.6 * (0.82 + 0.15 * style) * weather
    remaining = length - s
    braking = a.planned[ix] & (remaining < speed * speed / 4.0 + 4.0) & ~stopped
    at_line = braking & ((remaining < 3.0) | (speed < 0.8))
    brake = -np.minimum(4.0, speed * speed / (2 * np.maximum(remaining, 1.0)))
    free = np.maximum(-2.5, np.minimum(1.4 * style, (target - speed) / 4.0))
    accel = np.where(braking, brake, free) + 0.15 * z0
    new_speed = np.maximum(0.0, speed + accel * dt)
    moving = ~stopped & ~at_line
    new_s = s + new_speed * dt
    past_end = moving & (new_s >= length)
    accel = np.where(at_line, -speed / dt, np.where(stopped, 0.0, accel))
    a.speed[ix] = np.where(moving, new_speed, np.where(stopped, 0.0, speed))
    a.s[ix] = np.where(moving, np.where(past_end, new_s - length, new_s), np.where(at_line, 0.0, s))
    return accel, stopped, at_line, past_end


def place(a: FleetArrays, ix: Index, stopped: np.ndarray) -> None:
    """GPS position along the current road, for vehicles that moved."""
    f = a.s[ix] / a.road_len[ix]
    lat = a.a_lat[ix] + (a.b_lat[ix] - a.a_lat[ix]) * f
    lon = a.a_lon[ix] + (a.b_lon[ix] - a.a_lon[ix]) * f
    a.lat[ix] = np.where(stopped, a.lat[ix], lat)
    a.lon[ix] = np.where(stopped, a.lon[ix], lon)


def sense(
    a: FleetArrays, ix: Index, dt: float, ambient: np.ndarray, accel: np.ndarray, z: np.ndarray
) -> list[list[Any]]:
    """Update engine, thermal and energy state; the sensor readings as columns (lists)."""
    v = a.speed[ix]
    kmh = v * 3.6
    on, ev = a.engine_on[ix], a.is_ev[ix]
    mass = a.mass[ix] * (1 + 0.35 * a.load[ix])
    force = np.where(v > 0.1, mass * accel + mass * G * 0.012 + 0.48 * v * v, 0.0)
    power_kw = np.maximum(force, 0.0) * v / 1000 + np.where(on, 2.0, 0.0)
    pfrac = np.minimum(power_kw / a.power[ix], 1.0)
    thermostat = a.thermostat[ix]
    coolant = _thermal(a, ix, dt, ambient, pfrac, v, on, ev, thermostat)
    soc = _energy(a, ix, dt, power_kw, force, v, on, ev)
    odometer = a.odometer[ix] + v * dt / 1000
    a.odometer[ix] = odometer

    rpm, gear, oil = _drivetrain(a, ix, v, kmh, pfrac, coolant, thermostat, on, ev, z)
    batt = np.where(
        on,
        14.15 - np.where((soc < 80) & ~ev, 0.25, 0.0) + 0.04 * z[:, 3],
        12.1 + 0.006 * np.minimum(soc, 95) + 0.02 * z[:, 3],
    )
    tyres = _tyres(a, ix, dt, ambient, kmh, z)
    turning = a.turn_left[ix] > 0
    a.turn_left[ix] = np.where(turning, a.turn_left[ix] - 1, 0)
    lateral = np.where(turning, a.lateral[ix], 0.0)
    tank = a.tank[ix]
    fuel_pct = np.where(tank > 0, a.fuel_l[ix] / np.where(tank > 0, tank, 1.0) * 100, 0.0)
    r = np.round
    return [
        r(a.lat[ix] + 0.00002 * z[:, 4], 6).tolist(),
        r(a.lon[ix] + 0.00003 * z[:, 5], 6).tolist(),
        r(kmh, 2).tolist(),
        r(np.maximum(rpm, 0.0), 1).tolist(),
        gear.tolist(),
        r(coolant + 0.3 * z[:, 6], 2).tolist(),
        r(a.intake[ix] + 0.4 * z[:, 7], 2).tolist(),
        r(oil, 1).tolist(),
        r(batt, 3).tolist(),
        r(soc, 2).tolist(),
        *r(tyres, 1).T.tolist(),
        r(fuel_pct, 2).tolist(),
        r(odometer, 3).tolist(),
        r(accel / G + 0.02 * z[:, 12], 3).tolist(),
        r(lateral + 0.02 * z[:, 13], 3).tolist(),
        r(1.0 + (0.01 + 0.0004 * kmh) * z[:, 14], 3).tolist(),
        r(ambient + 0.2 * z[:, 15], 1).tolist(),
    ]


def _drivetrain(
    a: FleetArrays,
    ix: Index,
    v: np.ndarray,
    kmh: np.ndarray,
    pfrac: np.ndarray,
    coolant: np.ndarray,
    thermostat: np.ndarray,
    on: np.ndarray,
    ev: np.ndarray,
    z: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rpm, gear, oil pressure): a combustion engine's through its gears (and its oil), an
    electric motor's fixed ratio (no oil pressure); all zero with the engine off."""
    ice_on = on & ~ev
    gear_ice = np.where(v < 0.3, 0, np.searchsorted(GEAR_UP_KMH, kmh, side="right") + 1)
    rpm_ice = np.maximum(a.idle_rpm[ix], kmh * GEAR_RATIO[gear_ice]) + 300 * pfrac
    rpm_ice += np.where(coolant < 50, 120.0, 0.0)  # cold-start fast idle
    visc = 1 + 0.5 * np.clip((thermostat - coolant) / 60, 0.0, 1.0)
    oil = np.where(ice_on, (90 + rpm_ice * 0.085 * visc) * a.oil_gain[ix] + 4 * z[:, 1], 0.0)
    rpm = np.where(
        ice_on, rpm_ice + 15 * z[:, 2], np.where(on, kmh * EV_RPM_PER_KMH + 10 * z[:, 2], 0.0)
    )
    gear = np.where(ice_on, gear_ice, np.where(on, 1, 0))
    return rpm, gear, oil


def _tyres(
    a: FleetArrays, ix: Index, dt: float, ambient: np.ndarray, kmh: np.ndarray, z: np.ndarray
) -> np.ndarray:
    """The four tyres' pressures: warmed by driving, cooled towards the ambient air."""
    tyre_temp = a.tyre_temp[ix]
    tyre_temp = tyre_temp + (ambient + 0.3 * kmh - tyre_temp) * dt / 300
    a.tyre_temp[ix] = tyre_temp
    tfac = (273 + tyre_temp) / (273 + a.city_ambient[ix]) * a.tyre_gain[ix]
    return a.tyres_cold[ix] * tfac[:, None] + 0.8 * z[:, 8:12]


def _thermal(
    a: FleetArrays,
    ix: Index,
    dt: float,
    ambient: np.ndarray,
    pfrac: np.ndarray,
    v: np.ndarray,
    on: np.ndarray,
    ev: np.ndarray,
    thermostat: np.ndarray,
) -> np.ndarray:
    coolant = a.coolant[ix]
    ev_target = np.where(on, np.minimum(ambient + 8 + 25 * pfrac, thermostat + 6), ambient)
    ev_next = coolant + (ev_target - coolant) * dt / 300
    heat = 0.12 + 0.6 * pfrac
    loss = (coolant - ambient) * 0.0008
    over = np.maximum(0.0, coolant - thermostat)
    ice_on = coolant + (heat - loss - over * 0.15 * (1 + v / 15)) * dt
    ice_off = coolant - (coolant - ambient) * 0.0006 * dt
    coolant = np.where(ev, ev_next, np.where(on, ice_on, ice_off))
    a.coolant[ix] = coolant
    soak = np.where(on, 18 * np.exp(-v / 6), 10.0)
    intake = a.intake[ix]
    a.intake[ix] = intake + (ambient + 4 + soak - intake) * dt / 40
    return coolant


def _energy(
    a: FleetArrays,
    ix: Index,
    dt: float,
    power_kw: np.ndarray,
    force: np.ndarray,
    v: np.ndarray,
    on: np.ndarray,
    ev: np.ndarray,
) -> np.ndarray:
    soc, fuel = a.soc[ix], a.fuel_l[ix]
    regen = np.minimum(force, 0.0) * v / 1000 * 0.6
    used = np.where(on, (power_kw + regen) * dt / 3600, 0.0)
    battery = np.where(ev, a.battery[ix], 1.0)
    soc_ev = np.where(
        on,
        np.maximum(1.0, soc - used / battery * 100),
        np.minimum(100.0, soc + a.charge_rate[ix] * dt),
    )
    litres = (0.6 + 0.3 * power_kw) * dt / 3600 * a.consumption[ix] / 6.5
    fuel_on = np.maximum(0.5, fuel - litres)
    soc_ice = np.where(on, np.minimum(95.0, soc + 0.002 * dt), np.maximum(60.0, soc - 0.0005 * dt))
    soc = np.where(ev, soc_ev, soc_ice)
    a.soc[ix] = soc
    # A pump delivers over the stop: the gauge climbs, it does not jump in one frame.
    fuel_off = np.minimum(a.tank[ix], fuel + a.fill_rate[ix] * dt)
    a.fuel_l[ix] = np.where(ev, fuel, np.where(on, fuel_on, fuel_off))
    return soc


def _sub(ix: Index, mask: np.ndarray) -> np.ndarray:
    """Vehicle indices of ``mask`` within the ``ix`` selection."""
    if isinstance(ix, slice):
        return np.flatnonzero(mask)
    return ix[mask]
