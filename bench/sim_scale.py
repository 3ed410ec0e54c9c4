"""How many vehicle sessions one simulator process holds, and how many events/s it publishes.

Starts its own Mosquitto (free port, temp dir), then measures in the same run:
  generation  dry generation (physics + JSON) per CPU-second, beside encoding a fixed
              frame (the JSON floor) as its baseline;
  baseline    one plain paho client publishing QoS 1 as fast as it can (no simulation);
  1,000       vehicles at 10 Hz (10,000 events/s offered);
  10,000      vehicles at 1 Hz (10,000 events/s offered), each its own MQTT 5 session.
Each live figure is given twice: acked events/s of wall time, and CPU microseconds per acked
event of this process (events per CPU-second). On a shared machine the wall figure says as
much about the neighbours as about the simulator; the CPU figure does not.
Prints one JSON line and one human line. Bounded: about 3 minutes at most.

    .venv/bin/python bench/sim_scale.py [--quick]
"""

from __future__ import annotations

import json
import os
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

import firmware_sim as fs
import paho.mqtt.client as mqtt
from firmware_sim.live import LiveRunner, Progress, raise_fd_limit
from firmware_sim.session import ConnectSettings

from shared.contracts import Telemetry, encode
from shared.infra.mosquitto import ADMIN_USER, Mosquitto
from shared.infra.ports import free_ports

PASSWORD = "bench-password"


def log(msg: str) -> None:
    print(f"[sim_scale] {msg}", file=sys.stderr, flush=True)


def generation(vehicles: int = 1_000, ticks: int = 30) -> dict[str, float]:
    """Generated events per CPU-second, and the same for encoding one fixed frame."""
    fleet = fs.Fleet(fs.SimSettings(vehicles=vehicles, duration_s=ticks, seed=1))
    c0 = time.process_time()
    n = sum(len(fleet.step()) for _ in range(ticks))
    cpu = time.process_time() - c0
    frame = Telemetry(
        event_id="e" * 20,
        ts=1.0,
        vin="W" * 17,
        driver_id="DRV-000001",
        model="citan-van",
        firmware="4.2.1",
        lat=52.512345,
        lon=13.412345,
        speed_kmh=45.67,
        rpm=2100.5,
        gear=3,
        coolant_c=90.12,
        intake_c=25.3,
        oil_kpa=280.1,
        battery_v=14.123,
        soc_pct=88.12,
        tyre_fl_kpa=250.1,
        tyre_fr_kpa=251.2,
        tyre_rl_kpa=249.9,
        tyre_rr_kpa=250.5,
        fuel_pct=55.55,
        odometer_km=123456.789,
        accel_x_g=0.012,
        accel_y_g=-0.003,
        accel_z_g=1.002,
        ambient_c=14.2,
    )
    c1 = time.process_time()
    for _ in range(n):
        encode(frame)
    enc_cpu = time.process_time() - c1
    return {
        "events": n,
        "cpu_us_per_event": round(cpu / n * 1e6, 2),
        "events_per_cpu_s": round(n / cpu),
        "baseline_encode_only_per_cpu_s": round(n / max(enc_cpu, 1e-9)),
    }


def baseline(m: Mosquitto, seconds: float = 5.0) -> tuple[float, float]:
    """Acked QoS 1 publishes/s of one paho client with its own network thread, and its CPU
    microseconds per acked message."""
    acked = 0
    done = threading.Event()

    def on_publish(*_: object) -> None:
        nonlocal acked
        acked += 1

    c = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2, client_id="bench-baseline", protocol=mqtt.MQTTv5
    )
    c.username_pw_set(ADMIN_USER, m.credentials()[ADMIN_USER])
    c.on_publish = on_publish
    c.max_inflight_messages_set(100)
    c.connect(m.host, m.port)
    c.loop_start()
    payload = b"x" * 600  # about one telemetry frame
    t0, c0 = time.monotonic(), time.process_time()
    sent = 0
    while time.monotonic() - t0 < seconds and not done.is_set():
        if sent - acked < 1000:
            c.publish("bench/baseline", payload, qos=1)
            sent += 1
        else:
            time.sleep(0.001)
    elapsed = time.monotonic() - t0
    cpu = time.process_time() - c0
    rate = acked / elapsed
    c.disconnect()
    c.loop_stop()
    return rate, cpu / max(acked, 1) * 1e6


def scenario(
    m: Mosquitto, vehicles: int, rate_hz: float, duration: float, buf: Path, connect_wait: float
) -> dict[str, float]:
    fleet = fs.Fleet(
        fs.SimSettings(
            vehicles=vehicles, rate_hz=rate_hz, duration_s=duration, seed=1, start_ts=None
        )
    )
    t_reg = time.monotonic()
    m.register_vehicles(fleet.credentials(PASSWORD))
    register_s = time.monotonic() - t_reg
    time.sleep(1.0)
    samples: list[tuple[float, int, int, int, str, float]] = []

    def sample(p: Progress) -> None:
        samples.append(
            (time.monotonic(), p.acked, p.connected, p.generated, p.phase, time.process_time())
        )
        if len(samples) % 5 == 0:
            log(
                f"  {p.phase}: {p.connected:,} connected, {p.generated:,} generated, "
                f"{p.acked:,} acked, {p.buffered:,} buffered, {p.events_per_s:,.0f}/s"
            )

    runner = LiveRunner(
        fleet,
        ConnectSettings(host=m.host, port=m.port, password=PASSWORD, keepalive=120),
        buf,
        drain_timeout_s=15.0,
        connect_wait_s=connect_wait,
        on_progress=sample,
    )
    log(f"{vehicles:,} vehicles registered in {register_s:.1f}s; running {duration:g}s")
    t0 = time.monotonic()
    runner.start()
    result = runner.run()
    total = time.monotonic() - t0
    peak = max((s[2] for s in samples), default=0)
    # Sustained rate: acked events/s over the generating phase.
    full = [s for s in samples if s[4] == "running"]
    if len(full) >= 2:
        (ta, aa, *_), (tb, ab, *_) = full[0], full[-1]
        sustained = (ab - aa) / max(tb - ta, 1e-6)
    else:
        sustained = 0.0
    connected_at_start = next((s[2] for s in samples if s[4] == "running"), 0)
    # CPU of this process per acked event, from the clock's start to the end of the drain
    # (connecting and the goodbye excluded), read from the samples: the same measurement
    # whatever the runner reports about itself.
    live = [s for s in samples if s[4] in ("running", "draining")]
    cpu_s, acked_live = (live[-1][5] - live[0][5], live[-1][1] - live[0][1]) if live else (0.0, 0)
    s = result.summary()
    return {
        "vehicles": vehicles,
        "connected_when_clock_started": connected_at_start,
        "rate_hz": rate_hz,
        "offered_events_per_s": vehicles * rate_hz,
        "peak_connected": peak,
        "sustained_events_per_s": round(sustained),
        "cpu_s": round(cpu_s, 2),
        "cpu_us_per_event": round(cpu_s / max(acked_live, 1) * 1e6, 1),
        "events_per_cpu_s": round(acked_live / max(cpu_s, 1e-9)),
        "generated": s["generated"],
        "acked": s["acked"],
        "drained": s["drained"],
        "ticks_done": s["ticks"],
        "ticks_planned": s["ticks_planned"],
        "wall_s": round(total, 1),
        "register_s": round(register_s, 1),
    }


def main() -> None:
    quick = "--quick" in sys.argv
    # A SIGTERM (e.g. from `timeout`) must still stop the broker we started.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    raise_fd_limit(30_000)
    with tempfile.TemporaryDirectory(prefix="fleetsentry-bench-") as tmp:
        m = Mosquitto(home=Path(tmp) / "mqtt", port=free_ports(1)[0])
        m.start()
        try:
            m.wait_healthy()
            gen = generation()
            log(f"generation {gen['events_per_cpu_s']:,} events/CPU-s")
            base, base_cpu_us = baseline(m)
            log(f"baseline {base:,.0f} msg/s, {base_cpu_us:.0f} CPU us/msg")
            runs = [scenario(m, 1_000, 10.0, 10 if quick else 15, Path(tmp) / "b1", 30)]
            runs.append(
                scenario(
                    m,
                    1_000 if quick else 10_000,
                    1.0,
                    10 if quick else 25,
                    Path(tmp) / "b2",
                    30 if quick else 80,
                )
            )
        finally:
            m.stop()
    base_per_cpu_s = 1e6 / max(base_cpu_us, 1e-9)
    out = {
        "bench": "sim_scale",
        "load_avg_1m": round(os.getloadavg()[0], 1),
        "generation": gen,
        "baseline_single_client_qos1_per_s": round(base),
        "baseline_cpu_us_per_msg": round(base_cpu_us, 1),
        "baseline_msgs_per_cpu_s": round(base_per_cpu_s),
        "runs": runs,
    }
    print(json.dumps(out))
    parts = [
        f"generation: {gen['events_per_cpu_s']:,} events/CPU-s "
        f"(encode-only baseline {gen['baseline_encode_only_per_cpu_s']:,}/CPU-s)",
        f"baseline (1 paho client, QoS 1): {base:,.0f} msg/s, {base_cpu_us:.0f} CPU us/msg",
    ]
    for r in runs:
        parts.append(
            f"{r['vehicles']:,} vehicles @ {r['rate_hz']:g} Hz: "
            f"{r['peak_connected']:,} connected, {r['sustained_events_per_s']:,} "
            f"events/s acked ({r['sustained_events_per_s'] / max(base, 1):.2f}x "
            f"baseline), {r['cpu_us_per_event']:.0f} CPU us/event = "
            f"{r['events_per_cpu_s']:,} events/CPU-s "
            f"({r['events_per_cpu_s'] / base_per_cpu_s:.2f}x baseline)"
        )
    print("; ".join(parts))


if __name__ == "__main__":
    main()
