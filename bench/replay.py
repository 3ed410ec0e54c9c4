"""How fast ``sim replay`` pushes a recording through real MQTT sessions, beside the simulator.

Starts its own Mosquitto (free port, temp dir), writes a recording of the test stream
``reefer`` (tests/declared_stream.py: ``--rows`` rows of ``--devices`` trailers, one event a
second each, as CSV), then measures in the same run:
  load      reading, converting, rebasing and checking every row (CPU-seconds);
  replay    the recording replayed at full speed (``--speed max``): every device its own
            MQTT 5 session, QoS 1, from one process; acked events/s of wall time and CPU
            microseconds per acked event;
  simulator the simulator publishing the same number of events with the same number of
            vehicles (``sim run`` at ``--sim-rate`` Hz per vehicle), measured as
            bench/sim_scale.py measures it.
CPU per event says more than events/s on a shared machine. Prints one JSON line and one
human line.

    .venv/bin/python bench/replay.py [--rows 1000000] [--devices 1000] [--sim-rate 10]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from firmware_sim.live import Progress, raise_fd_limit  # noqa: E402
from firmware_sim.replay import load  # noqa: E402
from firmware_sim.replay_run import ReplayFleet, ReplayRunner  # noqa: E402
from firmware_sim.session import ConnectSettings  # noqa: E402
from sim_scale import scenario  # noqa: E402

from shared import streams  # noqa: E402
from shared.infra.mosquitto import Mosquitto  # noqa: E402
from shared.infra.ports import free_ports  # noqa: E402
from tests.declared_stream import START_MS, device_id, write_declaration  # noqa: E402

PASSWORD = "bench-password"
HEADER = "unit,t,box_temp_c,setpoint_c,compressor_kw,door,driver,lat,lon\n"


def log(msg: str) -> None:
    print(f"[replay] {msg}", file=sys.stderr, flush=True)


def write_recording(path: Path, rows: int, devices: int) -> None:
    """``rows`` rows, devices in turn, each device one event a second (time order)."""
    rng = random.Random(3)
    base = [
        (device_id(d), (-18.0, 2.0, 4.0)[d % 3], 48 + rng.uniform(-2, 2), 9 + rng.uniform(-3, 3))
        for d in range(devices)
    ]
    with open(path, "w", buffering=1 << 20) as fh:
        fh.write(HEADER)
        chunk = []
        for n in range(rows):
            d, k = n % devices, n // devices
            unit, setpoint, lat, lon = base[d]
            temp = setpoint + rng.gauss(0, 0.3)
            door = "open" if rng.random() < 0.02 else "closed"
            chunk.append(
                f"{unit},{START_MS + k * 1000 + d},{temp:.2f},{setpoint},"
                f"{3.0 + rng.gauss(0, 0.1):.3f},{door},Driver {d + 1},"
                f"{lat:.5f},{lon:.5f}\n"
            )
            if len(chunk) == 50_000:
                fh.write("".join(chunk))
                chunk = []
        fh.write("".join(chunk))


def replay(m: Mosquitto, spec: streams.StreamSpec, path: Path, buf: Path) -> dict[str, float]:
    c0, t0 = time.process_time(), time.monotonic()
    rec = load(path, spec, "now", time.time())
    load_cpu, load_wall = time.process_time() - c0, time.monotonic() - t0
    log(
        f"loaded {rec.accepted:,} events of {len(rec.devices):,} devices in {load_wall:.1f}s "
        f"({load_cpu / max(rec.rows, 1) * 1e6:.1f} CPU us/row), {sum(rec.rejected.values())} "
        "rejected"
    )
    fleet = ReplayFleet(rec, speed=None)
    t_reg = time.monotonic()
    m.register_vehicles({v.vin: PASSWORD for v in fleet.vehicles})
    register_s = time.monotonic() - t_reg
    time.sleep(1.0)
    samples: list[tuple[float, int, str, float]] = []

    def sample(p: Progress) -> None:
        samples.append((time.monotonic(), p.acked, p.phase, time.process_time()))
        if len(samples) % 5 == 0:
            log(
                f"  {p.phase}: {p.connected:,} connected, {p.generated:,} replayed, "
                f"{p.acked:,} acked, {p.events_per_s:,.0f}/s"
            )

    runner = ReplayRunner(
        fleet,
        ConnectSettings(host=m.host, port=m.port, password=PASSWORD, keepalive=120),
        buf,
        drain_timeout_s=30.0,
        connect_wait_s=60.0,
        on_progress=sample,
    )
    t1 = time.monotonic()
    result = runner.run()
    total = time.monotonic() - t1
    live = [s for s in samples if s[2] in ("running", "draining")]
    (ta, aa, _, ca), (tb, ab, _, cb) = live[0], live[-1]
    s = result.summary()
    return {
        "rows": rec.rows,
        "devices": len(rec.devices),
        "accepted": rec.accepted,
        "load_wall_s": round(load_wall, 1),
        "load_cpu_us_per_row": round(load_cpu / max(rec.rows, 1) * 1e6, 1),
        "events_per_s": round((ab - aa) / max(tb - ta, 1e-6)),
        "cpu_us_per_event": round((cb - ca) / max(ab - aa, 1) * 1e6, 1),
        # The runner's own figure: from the clock's start (hand-out included) to drained.
        "cpu_us_per_event_whole_run": s["cpu_us_per_event"],
        "acked": s["acked"],
        "drained": s["drained"],
        "replay_s": round(fleet.replay_s, 1),
        "wall_s": round(total, 1),
        "register_s": round(register_s, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--devices", type=int, default=1_000)
    ap.add_argument(
        "--sim-rate",
        type=float,
        default=10.0,
        help="The simulator's events per vehicle per second.",
    )
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    raise_fd_limit(args.devices * 2 + 1024)
    with tempfile.TemporaryDirectory(prefix="fleetsentry-bench-replay-") as tmp:
        home = Path(tmp)
        write_declaration(home / "streams")
        streams.use_declarations(home / "streams")  # before registering: devices' roles
        spec = streams.get("reefer")
        path = home / "recording.csv"
        t0 = time.monotonic()
        write_recording(path, args.rows, args.devices)
        log(
            f"wrote {args.rows:,} rows ({path.stat().st_size / 1e6:,.0f} MB) in "
            f"{time.monotonic() - t0:.1f}s"
        )
        m = Mosquitto(home=home / "mqtt", port=free_ports(1)[0])
        m.start()
        try:
            m.wait_healthy()
            rep = replay(m, spec, path, home / "b-replay")
            log(f"replay: {rep['events_per_s']:,} events/s, {rep['cpu_us_per_event']} CPU us/event")
            duration = args.rows / (args.devices * args.sim_rate)
            sim = scenario(m, args.devices, args.sim_rate, duration, home / "b-sim", 60)
        finally:
            m.stop()
    out = {
        "bench": "replay",
        "load_avg_1m": round(os.getloadavg()[0], 1),
        "replay": rep,
        "simulator": sim,
    }
    print(json.dumps(out))
    print(
        f"replay of {rep['rows']:,} rows / {rep['devices']:,} devices at full speed: "
        f"{rep['events_per_s']:,} events/s acked, {rep['cpu_us_per_event']:.0f} CPU us/event "
        f"(loading {rep['load_cpu_us_per_row']:.0f} CPU us/row); simulator, "
        f"{sim['vehicles']:,} vehicles @ {sim['rate_hz']:g} Hz ({sim['generated']:,} events): "
        f"{sim['sustained_events_per_s']:,} events/s acked, {sim['cpu_us_per_event']:.0f} "
        "CPU us/event"
    )


if __name__ == "__main__":
    main()
