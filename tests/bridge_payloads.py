"""Valid and malformed vehicle messages for the bridge's tests and benchmark."""

from __future__ import annotations

import json
import random
import string
from typing import Any

VIN_CHARS = "ABCDEFGHJKLMNPRSTUVWXYZ0123456789"


def vin(rng: random.Random) -> str:
    return "".join(rng.choice(VIN_CHARS) for _ in range(17))


def telemetry(vin_: str, event_id: str, ts: float) -> dict[str, Any]:
    return {
        "schema": 1,
        "event_id": event_id,
        "ts": ts,
        "vin": vin_,
        "driver_id": "drv-0001",
        "model": "eVan-3",
        "firmware": "4.2.1",
        "lat": 52.52,
        "lon": 13.405,
        "speed_kmh": 62.5,
        "rpm": 2100.0,
        "gear": 4,
        "coolant_c": 88.0,
        "intake_c": 31.0,
        "oil_kpa": 310.0,
        "battery_v": 13.9,
        "soc_pct": 71.0,
        "tyre_fl_kpa": 240.0,
        "tyre_fr_kpa": 241.0,
        "tyre_rl_kpa": 238.0,
        "tyre_rr_kpa": 239.0,
        "fuel_pct": 55.0,
        "odometer_km": 120345.6,
        "accel_x_g": 0.01,
        "accel_y_g": -0.02,
        "accel_z_g": 1.0,
        "ambient_c": 17.5,
    }


def payment(vin_: str, event_id: str, ts: float) -> dict[str, Any]:
    return {
        "schema": 1,
        "event_id": event_id,
        "ts": ts,
        "vin": vin_,
        "driver_id": "drv-0001",
        "driver_name": "Ada Example",
        "card_number": "4111111111111111",
        "cardholder": "ADA EXAMPLE",
        "merchant_id": "m-42",
        "merchant_name": "Fuel Stop 42",
        "mcc": "5542",
        "category": "fuel",
        "amount": 81.4,
        "currency": "EUR",
        "lat": 52.5,
        "lon": 13.4,
        "volume_l": 45.2,
    }


def encode(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


# Each mutation turns a valid (topic, payload) into an invalid one and names the reason the
# bridge must give. ``now`` is the gateway clock the message is checked against.
def malformed(rng: random.Random, vin_: str, event_id: str, now: float) -> tuple[str, bytes, str]:
    """One malformed message: (topic, payload, expected reason)."""
    stream = rng.choice(["telemetry", "payments"])
    make = telemetry if stream == "telemetry" else payment
    topic = f"fleet/{vin_}/{stream}"
    good = make(vin_, event_id, now - rng.random() * 60)
    kind = rng.randrange(10)
    if kind == 0:  # broken JSON: a truncated or garbled valid document
        raw = encode(good)
        # Cut in the last field: earlier fields stay well-typed, so the error is the syntax.
        cut = len(raw) - rng.randrange(1, 10)
        return (
            topic,
            raw[:cut] + bytes(rng.choice(b"\\\xff") for _ in range(rng.randrange(2))),
            "invalid_json",
        )
    if kind == 1:  # random bytes that are not JSON at all
        junk = "".join(
            rng.choice(string.ascii_letters + "{}[],:") for _ in range(rng.randrange(1, 80))
        )
        return topic, f"#{event_id}#{junk}".encode(), "invalid_json"
    if kind == 2:  # wrong type for a field
        field = rng.choice(["ts", "lat", "lon", "event_id", "vin", "driver_id"])
        good[field] = rng.choice([[1, 2], {"x": 1}, None, True]) if field != "event_id" else 12
        return topic, encode(good), "wrong_type"
    if kind == 3:  # missing required field
        field = rng.choice([f for f in good if f not in ("schema", "volume_l")])
        del good[field]
        return topic, encode(good), "missing_field"
    if kind == 4:  # oversize: padded beyond the 16 KiB limit
        good["padding"] = "x" * rng.randrange(16_400, 40_000)
        return topic, encode(good), "oversize"
    if kind == 5:  # the payload claims another vehicle than the topic
        good["vin"] = vin(rng)
        return topic, encode(good), "vin_mismatch"
    if kind == 6:  # device clock far in the future
        good["ts"] = now + rng.uniform(3_600, 10 * 365 * 86_400)
        return topic, encode(good), "future_timestamp"
    if kind == 8:  # nesting far deeper than any event, in a field no contract has
        depth = rng.randrange(20, 3000)
        good["extra"] = "<nest>"
        return topic, encode(good).replace(b'"<nest>"', b"[" * depth + b"]" * depth), "too_deep"
    if kind == 9:  # device time days or years in the past
        good["ts"] = now - rng.uniform(4 * 86_400, min(now - 1, 30 * 365 * 86_400))
        return topic, encode(good), "too_old"
    # out-of-range value with the right type
    field, value = rng.choice([("lat", 91.5), ("lon", -200.0), ("ts", -5.0), ("schema", 1)])
    if field == "schema":
        good["schema"] = 99
        return topic, encode(good), "unsupported_schema"
    good[field] = value
    return topic, encode(good), "invalid_value"
