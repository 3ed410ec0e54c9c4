"""How many vehicle sessions one simulator process holds, and how many events/s it publishes.

Starts its own Mosquitto (free port, temp dir), then measures in the same run:
  baseline  one plain paho client publishing QoS 1 as fast as it can (no simulation);
  1,000     vehicles at 10 Hz (10,000 events/s offered);
  10,000    vehicles at 1 Hz (10,000 events/s offered), each its own MQTT 5 session.
Prints one JSON line and one human line. Bounded: about 3 minutes at most.

    .venv/bin/python bench/sim_scale.py [--quick]
"""

from __future__ import annotations

import json
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

from shared.infra.mosquitto import ADMIN_USER, Mosquitto
from shared.infra.ports import free_ports

PASSWORD = "bench-password"


def log(msg: str) -> None:
    print(f"[sim_scale] {msg}", file=sys.stderr, flush=True)


def baseline(m: Mosquitto, seconds: float = 5.0) -> float:
    """Acked QoS 1 publishes/s of one paho client with its own network thread."""
    acked = 0
    done = threading.Event()

    def on_publish(*_: object) -> None:
        nonlocal acked
        acked += 1

    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-baseline",
                    protocol=mqtt.MQTTv5)
    c.username_pw_set(ADMIN_USER, m.credentials()[ADMIN_USER])
    c.on_publish = on_publish
    c.max_inflight_messages_set(100)
    c.connect(m.host, m.port)
    c.loop_start()
    payload = b"x" * 600  # about one telemetry frame
    t0 = time.monotonic()
    sent = 0
    while time.monotonic() - t0 < seconds and not done.is_set():
        if sent - acked < 1000:
            c.publish("bench/baseline", payload, qos=1)
            sent += 1
        else:
            time.sleep(0.001)
    elapsed = time.monotonic() - t0
    rate = acked / elapsed
    c.disconnect()
    c.loop_stop()
    return rate


def scenario(m: Mosquitto, vehicles: int, rate_hz: float, duration: float,
             buf: Path, connect_wait: float) -> dict[str, float]:
    fleet = fs.Fleet(fs.SimSettings(vehicles=vehicles, rate_hz=rate_hz, duration_s=duration,
                                    seed=1, start_ts=None))
    t_reg = time.monotonic()
    m.register_vehicles(fleet.credentials(PASSWORD))
    register_s = time.monotonic() - t_reg
    time.sleep(1.0)
    samples: list[tuple[float, int, int, int, str]] = []

    def sample(p: Progress) -> None:
        samples.append((time.monotonic(), p.acked, p.connected, p.generated, p.phase))
        if len(samples) % 5 == 0:
            log(f"  {p.phase}: {p.connected:,} connected, {p.generated:,} generated, "
                f"{p.acked:,} acked, {p.buffered:,} buffered, {p.events_per_s:,.0f}/s")

    runner = LiveRunner(fleet, ConnectSettings(host=m.host, port=m.port, password=PASSWORD,
                                               keepalive=120),
                        buf, drain_timeout_s=15.0, connect_wait_s=connect_wait,
                        on_progress=sample)
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
    s = result.summary()
    connected_at_start = next((s[2] for s in samples if s[4] == "running"), 0)
    return {"vehicles": vehicles, "connected_when_clock_started": connected_at_start, "rate_hz": rate_hz, "offered_events_per_s": vehicles * rate_hz,
            "peak_connected": peak, "sustained_events_per_s": round(sustained),
            "generated": s["generated"], "acked": s["acked"], "drained": s["drained"],
            "ticks_done": s["ticks"], "ticks_planned": s["ticks_planned"],
            "wall_s": round(total, 1), "register_s": round(register_s, 1)}


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
            base = baseline(m)
            log(f"baseline {base:,.0f} msg/s")
            runs = [scenario(m, 1_000, 10.0, 10 if quick else 15, Path(tmp) / "b1", 30)]
            runs.append(scenario(m, 1_000 if quick else 10_000, 1.0, 10 if quick else 25,
                                 Path(tmp) / "b2", 30 if quick else 80))
        finally:
            m.stop()
    out = {"bench": "sim_scale", "baseline_single_client_qos1_per_s": round(base), "runs": runs}
    print(json.dumps(out))
    parts = [f"baseline (1 paho client, QoS 1): {base:,.0f} msg/s"]
    for r in runs:
        parts.append(f"{r['vehicles']:,} vehicles @ {r['rate_hz']:g} Hz: "
                     f"{r['peak_connected']:,} connected, {r['sustained_events_per_s']:,} "
                     f"events/s acked ({r['sustained_events_per_s'] / max(base, 1):.2f}x "
                     f"baseline)")
    print("; ".join(parts))


if __name__ == "__main__":
    main()
