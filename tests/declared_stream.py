"""A declared test stream (``reefer``: refrigerated trailers) and a deterministic event generator.

Not shipped with the package: tests write :data:`REEFER_TOML` into a directory of their own
and point ``[streams] dir`` at it. :func:`generate` yields ``devices`` x ``events`` raw MQTT
messages (``fleet/RT-0001/reefer`` and a payload dict) with injected anomaly episodes, the
same for the same arguments on every machine (standard library only: ``random``, ``math``,
``json``). :func:`write_events` writes them as a ``sim run --dry-run`` events file, which
``fleetsentry cloud train --events`` reads; :func:`write_labels` writes the anomalies as labels.

Normal behaviour: each trailer holds its setpoint (frozen -18 °C, chilled 2 or 4 °C) with a
slow wobble and sensor noise; the compressor draws more the warmer the box is; the door opens
now and then for an event or two, warming the box a little. Anomalies, each ``EPISODE_EVENTS``
events long, two per affected trailer (one early, one in the last fifth of the run):

- ``compressor_failure``: the compressor draws nothing and the box warms 1.5 °C per event;
- ``sensor_spike``: the box temperature reads 15 °C above the setpoint;
- ``runaway_cooling``: the compressor runs flat out and the box cools 1.5 °C per event.

The events after an episode (``RECOVERY_EVENTS``) carry its tail in the rolling features;
:attr:`Generated.recovery` lists them so tests can leave them out of "normal".
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

STREAM = "reefer"
FILE_NAME = "reefer.toml"

REEFER_TOML = """\
[stream]
name = "reefer"
device = { field = "unit", pattern = "^RT-[0-9]{4}$", noun = "trailer" }
time = { field = "t", unit = "ms" }
alerts = { kind = "episodes", open_events = 3, window_s = 60, quiet_s = 120 }
cell = ["lat", "lon"]
person = "driver"

[fields]
unit = { type = "str", label = "Refrigeration unit" }
t = { type = "int", unit = "ms", label = "Device time" }
box_temp_c = { type = "float", unit = "°C", range = [-40, 40], label = "Box temperature", typical_std = 0.5 }
setpoint_c = { type = "float", unit = "°C", label = "Setpoint" }
compressor_kw = { type = "float", unit = "kW", range = [0, 20], label = "Compressor power", typical_std = 0.3 }
door = { type = "enum", values = ["closed", "open"], label = "Door" }
driver = { type = "str", pii = "token", label = "Driver" }
lat = { type = "float", range = [-90, 90] }
lon = { type = "float", range = [-180, 180] }

[features]
box_temp_c = ["value", "zscore", "rate"]
box_over_setpoint = { diff = ["box_temp_c", "setpoint_c"], then = ["value", "zscore"] }
compressor_kw = ["value", "zscore", "delta"]
door = ["onehot"]
gap_s = { gap = true, scale = "log1p" }
"""

FEATURES = [
    "box_temp_c",
    "box_temp_c_z",
    "box_temp_c_rate",
    "box_over_setpoint",
    "box_over_setpoint_z",
    "compressor_kw",
    "compressor_kw_z",
    "compressor_kw_delta",
    "door_closed",
    "door_open",
    "gap_s",
]

KINDS = ("compressor_failure", "sensor_spike", "runaway_cooling")
EPISODE_EVENTS = 6
RECOVERY_EVENTS = 12
START_MS = 1_767_600_000_000  # 2026-01-05 08:00 UTC
SETPOINTS = (-18.0, 2.0, 4.0)


def device_id(i: int) -> str:
    """The i-th trailer (from 0): ``RT-0001``, ``RT-0002``, ..."""
    return f"RT-{i + 1:04d}"


@dataclass
class Generated:
    """Messages in publish order (per trailer in time order, trailers interleaved by time)."""

    messages: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    # event id -> anomaly kind, for every event of an injected episode.
    anomalies: dict[str, str] = field(default_factory=dict)
    # event id -> (episode id, device id), for the same events.
    episodes: dict[str, tuple[str, str]] = field(default_factory=dict)
    # Events right after an episode, whose rolling features still carry it.
    recovery: set[str] = field(default_factory=set)

    def event_ids(self) -> list[str]:
        return [str(p["event_id"]) for _, p in self.messages]

    def ts_of(self, event_id: str) -> float:
        for _, p in self.messages:
            if p["event_id"] == event_id:
                return float(p["t"]) / 1000.0
        raise KeyError(event_id)


def generate(
    devices: int = 16,
    events: int = 400,
    seed: int = 11,
    interval_s: float = 10.0,
    anomalous_devices: int | None = None,
    start_ms: int = START_MS,
) -> Generated:
    """``devices`` trailers x ``events`` events each, ``interval_s`` apart (jittered).

    Every other trailer (or the first ``anomalous_devices``, spread out) gets two anomaly
    episodes, one at 15-50 % of its run and one at 82-95 %, kinds in turn.
    """
    rng = random.Random(seed)
    n_anom = devices // 2 if anomalous_devices is None else anomalous_devices
    step = devices / n_anom if n_anom else 0.0
    anomalous = {int(i * step) for i in range(n_anom)}
    out = Generated()
    timeline: list[tuple[int, int, str, dict[str, Any]]] = []
    kind_no = 0
    for d in range(devices):
        dev = device_id(d)
        drng = random.Random(rng.getrandbits(64))
        setpoint = SETPOINTS[d % len(SETPOINTS)]
        period = drng.uniform(900.0, 2400.0)
        phase = drng.uniform(0, 2 * math.pi)
        lat, lon = 48.0 + drng.uniform(-2, 2), 9.0 + drng.uniform(-3, 3)
        starts: dict[int, tuple[str, str]] = {}
        if d in anomalous:
            for lo, hi in ((0.15, 0.5), (0.82, 0.95)):
                at = int(drng.uniform(lo, hi) * (events - EPISODE_EVENTS))
                starts[at] = (KINDS[kind_no % len(KINDS)], f"{dev}-ep{len(starts) + 1}")
                kind_no += 1
        t_ms = start_ms + int(drng.uniform(0, interval_s) * 1000)
        noise = 0.0
        door_left = 0
        episode: tuple[str, str] | None = None
        ep_left = 0
        recover = 0
        drift = 0.0  # an episode's offset of the box temperature from normal
        for i in range(events):
            if i in starts:
                episode, ep_left, drift = starts[i], EPISODE_EVENTS, 0.0
            elapsed = (t_ms - start_ms) / 1000.0
            noise = 0.8 * noise + drng.gauss(0.0, 0.08)
            if door_left == 0 and episode is None and drng.random() < 0.02:
                door_left = drng.randint(1, 2)
            door = "open" if door_left > 0 else "closed"
            if door_left > 0:
                door_left -= 1
            wobble = 0.6 * math.sin(2 * math.pi * elapsed / period + phase)
            temp = setpoint + wobble + noise + (0.8 if door == "open" else 0.0)
            kw = 3.0 + 0.8 * (temp - setpoint) + drng.gauss(0.0, 0.1)
            event_id = f"{dev}-{i:06d}"
            if episode is not None:
                kind, ep_id = episode
                if kind == "compressor_failure":
                    drift += 1.5
                    temp, kw = temp + drift, 0.0
                elif kind == "sensor_spike":
                    temp = setpoint + 15.0 + drng.gauss(0.0, 0.3)
                else:
                    drift -= 1.5
                    temp, kw = temp + drift, 9.0 + drng.gauss(0.0, 0.1)
                out.anomalies[event_id] = kind
                out.episodes[event_id] = (ep_id, dev)
                ep_left -= 1
                if ep_left == 0:
                    episode, recover = None, RECOVERY_EVENTS
            elif recover > 0:
                out.recovery.add(event_id)
                recover -= 1
            lat += drng.gauss(0.0, 0.002)
            lon += drng.gauss(0.0, 0.002)
            payload = {
                "event_id": event_id,
                "unit": dev,
                "t": t_ms,
                "box_temp_c": round(temp, 2),
                "setpoint_c": setpoint,
                "compressor_kw": round(max(kw, 0.0), 3),
                "door": door,
                "driver": f"Driver {d + 1}",
                "lat": round(lat, 5),
                "lon": round(lon, 5),
            }
            timeline.append((t_ms, d, f"fleet/{dev}/reefer", payload))
            t_ms += int(1000 * (interval_s + drng.uniform(-1.0, 1.0)))
    timeline.sort(key=lambda row: (row[0], row[1]))
    out.messages = [(topic, payload) for _, _, topic, payload in timeline]
    return out


def write_declaration(directory: Path) -> Path:
    """``directory/reefer.toml`` (the directory is created)."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / FILE_NAME
    path.write_text(REEFER_TOML, encoding="utf-8")
    return path


def write_events(path: Path, generated: Generated) -> Path:
    """A ``sim run --dry-run`` events file: one ``{"topic", "payload"}`` JSON line a message."""
    with open(path, "w", encoding="utf-8") as fh:
        for topic, payload in generated.messages:
            fh.write(json.dumps({"topic": topic, "payload": payload}, separators=(",", ":")) + "\n")
    return path


def write_labels(path: Path, generated: Generated) -> Path:
    """The injected anomalies as a labels file (``shared.contracts.Label`` JSON lines)."""
    ts = {str(p["event_id"]): float(p["t"]) / 1000.0 for _, p in generated.messages}
    spans: dict[str, list[float]] = {}
    for event_id, (ep_id, _dev) in generated.episodes.items():
        t = ts[event_id]
        span = spans.setdefault(ep_id, [t, t])
        span[0], span[1] = min(span[0], t), max(span[1], t)
    with open(path, "w", encoding="utf-8") as fh:
        for event_id, kind in generated.anomalies.items():
            ep_id = generated.episodes[event_id][0]
            fh.write(
                json.dumps(
                    {
                        "event_id": event_id,
                        "stream": STREAM,
                        "kind": kind,
                        "episode_id": ep_id,
                        "start_ts": spans[ep_id][0],
                        "end_ts": spans[ep_id][1],
                    }
                )
                + "\n"
            )
    return path
