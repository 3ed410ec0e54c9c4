"""The bridge's outage spool: bytes per event, write and drain rates, hours held per GiB.

Writes simulator events (telemetry and payments, as the bridge would: topic, VIN key,
payload) to a spool the way the bridge does during a Kafka outage: appends with an fsync
every ``--burst`` records (one bridge step), then reads them all back, confirms them and
deletes the segments (the drain, without Kafka). Baseline, in the same run on the same events
and directory: the same payloads written raw to one file with the same fsync cadence, then
read back (what durable writes cost with no format at all).

From the measured bytes per event it prints how long an outage the spool holds per GiB at a
given event rate (the gateway's rated load is 1,000 payments/s + 5,000 telemetry/s).

    .venv/bin/python bench/spool.py [--events 200000] [--burst 200] [--dir DIR]
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edge.bridge.spool import Spool  # noqa: E402
from shared import streams  # noqa: E402

GIB = 1024**3


def cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def events(n: int) -> list[tuple[str, bytes, bytes]]:
    from firmware_sim import Fleet, SimSettings

    vehicles = 200
    fleet = Fleet(
        SimSettings(vehicles=vehicles, duration_s=n / vehicles + 1, seed=42, payment_rate=20.0)
    )
    out = []
    for topic, payload in fleet.events():
        _, vin, suffix = topic.split("/")
        spec = streams.by_mqtt_suffix(suffix)
        assert spec is not None
        out.append((spec.raw_topic, vin.encode(), payload))
        if len(out) >= n:
            break
    return out


def timed(fn: object) -> tuple[float, float]:
    assert callable(fn)
    w, c = time.perf_counter(), cpu()
    fn()
    return time.perf_counter() - w, cpu() - c


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--burst", type=int, default=200, help="records per fsync (a bridge step)")
    ap.add_argument(
        "--dir",
        type=Path,
        default=None,
        help="where to write (default: a temporary directory on /var/tmp)",
    )
    args = ap.parse_args()
    base = Path(tempfile.mkdtemp(prefix="spool-bench-", dir=args.dir or "/var/tmp"))
    try:
        print(f"generating {args.events:,} simulator events ...", flush=True)
        evs = events(args.events)
        payload = sum(len(v) for _, _, v in evs) / len(evs)

        spool = Spool(base / "spool", max_bytes=1 << 62)

        def write() -> None:
            for i, (topic, key, value) in enumerate(evs, 1):
                spool.append(topic, key, value)
                if i % args.burst == 0:
                    spool.sync()
            spool.sync()

        w_wall, w_cpu = timed(write)
        on_disk = spool.size / len(evs)

        def drain() -> None:
            while True:
                recs = spool.read(5000)
                if not recs:
                    break
                for r in recs:
                    spool.confirm(r.ticket)
                spool.save()

        d_wall, d_cpu = timed(drain)
        assert spool.empty()
        spool.close()

        raw = base / "raw.bin"

        def write_raw() -> None:
            with open(raw, "wb") as fh:
                for i, (_, _, value) in enumerate(evs, 1):
                    fh.write(value)
                    if i % args.burst == 0:
                        fh.flush()
                        os.fsync(fh.fileno())
                fh.flush()
                os.fsync(fh.fileno())

        def read_raw() -> None:
            with open(raw, "rb") as fh:
                while fh.read(1 << 20):
                    pass

        b_wall, b_cpu = timed(write_raw)
        r_wall, r_cpu = timed(read_raw)
        n = len(evs)
        print(
            f"\n{n:,} events, mean payload {payload:.0f} B, fsync every {args.burst} "
            f"records, directory {base}"
        )
        print(f"{'':28}{'events/s':>12}{'CPU µs/event':>14}   baseline (raw payloads, same fsyncs)")
        print(
            f"{'spool write (outage)':28}{n / w_wall:>12,.0f}{w_cpu / n * 1e6:>14.1f}   "
            f"{n / b_wall:,.0f}/s, {b_cpu / n * 1e6:.1f} µs  ({w_wall / b_wall:.2f}x its time)"
        )
        print(
            f"{'spool drain (read+confirm)':28}{n / d_wall:>12,.0f}{d_cpu / n * 1e6:>14.1f}   "
            f"{n / r_wall:,.0f}/s, {r_cpu / n * 1e6:.1f} µs  ({d_wall / r_wall:.2f}x its time)"
        )
        print(
            f"\nbytes per event on disk: {on_disk:.0f} (payload {payload:.0f} + framing, "
            f"topic and key {on_disk - payload:.0f})"
        )
        print("\nhours of edge-Kafka outage one bridge's spool holds:")
        rates = (600, 6_000, 12_000)
        print(f"{'spool_max_bytes':>16}" + "".join(f"{r:>12,}/s" for r in rates))
        for gib in (1, 8, 16, 32):
            hours = [gib * GIB / (r * on_disk * 3600) for r in rates]
            print(f"{gib:>12} GiB" + "".join(f"{h:>14.2f}" for h in hours))
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
