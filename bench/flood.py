"""A flooding vehicle beside well-behaved ones: their publish-to-raw.* latency, in one run.

Well-behaved vehicles (``--calm`` of them, ``--calm-hz`` frames per second each, under the
bridge's per-vehicle limit) publish telemetry throughout; a reader of ``raw.telemetry`` takes
the time each of their events becomes readable there (publish -> bridge -> Kafka -> visible to
a consumer). Three phases, each ``--seconds`` long, against one Mosquitto and one edge Kafka:

1. alone: the well-behaved vehicles only (the baseline, same run);
2. flood: the same, plus one vehicle publishing valid telemetry as fast as its MQTT client can
   (a process of its own), with the bridge's default per-vehicle limit;
3. flood, limit off: the same flood against a bridge with ``vehicle_rate_per_s = 0``.

Between phases the bridge drains what it was sent (every message counted in by its metrics,
and each one produced or dead-lettered). Reports p50/p99/max latency of the well-behaved
vehicles per phase, what the flooder got through, and the bridge's CPU per message.
Starts its own Mosquitto + edge Kafka on free ports and stops them.

    .venv/bin/python bench/flood.py [--seconds 15] [--calm 10] [--calm-hz 5]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import msgspec  # noqa: E402
import paho.mqtt.client as mqtt  # noqa: E402
from confluent_kafka import Consumer, KafkaException, TopicPartition  # noqa: E402
from paho.mqtt.enums import CallbackAPIVersion  # noqa: E402

from bench._procstat import cpu_seconds  # noqa: E402
from edge.config import BridgeSettings  # noqa: E402
from shared.infra.ports import free_ports  # noqa: E402
from shared.infra.stack import Stack  # noqa: E402
from shared.kafka_config import Target, client_config
from tests.bridge_payloads import encode, telemetry  # noqa: E402
from tests.bridge_support import (  # noqa: E402
    BridgeProcess,
    drop_session,
    mqtt_client,
    write_edge_toml,
)
from tests.support import free_infra_settings  # noqa: E402

DEADLINE_S = 420.0  # the whole run, stack start included
STARTED = time.monotonic()
PASSWORD = "bench-flood"


def left() -> float:
    return max(5.0, DEADLINE_S - (time.monotonic() - STARTED))


class _Id(msgspec.Struct):
    event_id: str


class RawReader:
    """Reads raw.telemetry from its end as the run goes; notes when each calm event shows up."""

    def __init__(self, kafka: Target, calm: set[str]) -> None:
        self.calm = {v.encode() for v in calm}
        self.seen: dict[str, float] = {}
        self.other = 0  # records of other vehicles (the flooder)
        self._stop = threading.Event()
        c = Consumer(
            client_config(
                kafka,
                {
                    "group.id": f"bench-flood-{os.getpid()}",
                    "enable.auto.commit": False,
                    "fetch.wait.max.ms": 5,
                    "fetch.min.bytes": 1,
                },
            )
        )
        meta = c.list_topics("raw.telemetry", timeout=10)
        parts = [
            TopicPartition("raw.telemetry", p) for p in meta.topics["raw.telemetry"].partitions
        ]
        # Start at the end, read now, before anything is published (a fresh broker may still
        # be electing leaders: retried).
        deadline = time.monotonic() + 60
        while True:
            try:
                ends = [c.get_watermark_offsets(tp, timeout=10)[1] for tp in parts]
                break
            except KafkaException:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        c.assign(
            [
                TopicPartition(tp.topic, tp.partition, end)
                for tp, end in zip(parts, ends, strict=True)
            ]
        )
        self._consumer = c
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        decoder = msgspec.json.Decoder(_Id)
        while not self._stop.is_set():
            for msg in self._consumer.consume(1000, 0.05):
                now = time.time()
                value = msg.value()
                if msg.error() or value is None:
                    continue
                if msg.key() in self.calm:
                    self.seen[decoder.decode(value).event_id] = now
                else:
                    self.other += 1

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self._consumer.close()


class CalmFleet:
    """Well-behaved vehicles, each with its own MQTT session (username = VIN)."""

    def __init__(self, stack: Stack, vins: list[str], hz: float) -> None:
        self.vins, self.hz = vins, hz
        self.clients = [mqtt_client(stack, v, user=v, password=PASSWORD) for v in vins]
        self.sent: dict[str, float] = {}

    def drive(self, phase: str, seconds: float) -> None:
        start = time.monotonic()
        tick = 0
        while (elapsed := time.monotonic() - start) < seconds:
            if tick / self.hz > elapsed:
                time.sleep(min(0.01, tick / self.hz - elapsed))
                continue
            for v, c in zip(self.vins, self.clients, strict=True):
                event_id = f"{phase}-{v[-4:]}-{tick}"
                now = time.time()
                self.sent[event_id] = now
                c.publish(f"fleet/{v}/telemetry", encode(telemetry(v, event_id, now)), qos=1)
            tick += 1

    def close(self) -> None:
        for c in self.clients:
            c.disconnect()
            c.loop_stop()


def flooder(args: argparse.Namespace) -> None:
    """Publish valid telemetry as one vehicle, QoS 1, as fast as the client goes."""
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=args.vin, protocol=mqtt.MQTTv5)
    c.username_pw_set(args.vin, PASSWORD)
    c.max_inflight_messages_set(1000)
    c.max_queued_messages_set(0)
    c.connect(args.host, args.port, 30)
    c.loop_start()
    end = time.monotonic() + args.seconds
    sent = 0
    last = None
    while time.monotonic() < end:
        now = time.time()
        last = c.publish(
            f"fleet/{args.vin}/telemetry", encode(telemetry(args.vin, f"flood-{sent}", now)), qos=1
        )
        sent += 1
        if sent % 1000 == 0:
            last.wait_for_publish(10)  # keep the client's own queue short
    if last is not None:
        last.wait_for_publish(30)
    c.disconnect()
    c.loop_stop()
    print(json.dumps({"sent": sent}))


def start_flooder(stack: Stack, vin: str, seconds: float) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            __file__,
            "_flood",
            "--host",
            stack.mqtt.host,
            "--port",
            str(stack.mqtt.port),
            "--vin",
            vin,
            "--seconds",
            str(seconds),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def counters(bridge: BridgeProcess) -> dict[str, float]:
    """messages in / out and dead letters (by reason) from the bridge's /metrics."""
    text = bridge.scrape()
    out: dict[str, float] = {}
    for name, key in (
        ("fleetsentry_messages_in_total", "in"),
        ("fleetsentry_messages_out_total", "out"),
        ("fleetsentry_dlq_messages_total", "dlq"),
    ):
        for m in re.finditer(rf"^{name}{{([^}}]*)}} (\S+)$", text, re.M):
            reason = re.search(r'reason="([^"]+)"', m.group(1))
            k = f"dlq_{reason.group(1)}" if reason else key
            out[k] = out.get(k, 0.0) + float(m.group(2))
    out["dlq"] = sum(v for k, v in out.items() if k.startswith("dlq_"))
    return out


def wait_drained(bridge: BridgeProcess, published: int, timeout: float) -> dict[str, float]:
    """Until the bridge has taken every message and produced or dead-lettered each one."""
    deadline = time.monotonic() + timeout
    c: dict[str, float] = {}
    while time.monotonic() < deadline:
        c = counters(bridge)
        if c.get("in", 0) >= published and c.get("out", 0) + c["dlq"] >= c.get("in", 0):
            return c
        time.sleep(0.2)
    return c


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def run_phase(
    name: str,
    stack: Stack,
    bridge: BridgeProcess,
    fleet: CalmFleet,
    reader: RawReader,
    flood_vin: str | None,
    seconds: float,
    published: int,
) -> tuple[dict[str, Any], int]:
    pid = bridge.proc.pid if bridge.proc else 0
    before = counters(bridge)
    cpu0 = cpu_seconds(pid)
    other0 = reader.other
    sent0 = len(fleet.sent)
    proc = start_flooder(stack, flood_vin, seconds) if flood_vin else None
    fleet.drive(name, seconds)
    flood_sent = 0
    if proc is not None:
        stdout, stderr = proc.communicate(timeout=left())
        if proc.returncode != 0:
            raise SystemExit(f"the flooder failed: {stderr[-2000:]}")
        flood_sent = json.loads(stdout.strip().splitlines()[-1])["sent"]
    calm_sent = len(fleet.sent) - sent0
    published += calm_sent + flood_sent
    after = wait_drained(bridge, published, min(120.0, left()))
    time.sleep(0.5)  # the reader sees the last records
    cpu = cpu_seconds(pid) - cpu0
    handled = after.get("in", 0) - before.get("in", 0)
    ids = list(fleet.sent)[sent0:]
    lat = [(reader.seen[e] - fleet.sent[e]) * 1000 for e in ids if e in reader.seen]
    return {
        "calm_sent": calm_sent,
        "calm_arrived": len(lat),
        "calm_p50_ms": round(percentile(lat, 0.5), 1),
        "calm_p99_ms": round(percentile(lat, 0.99), 1),
        "calm_max_ms": round(max(lat), 1) if lat else None,
        "flood_sent": flood_sent,
        "flood_in_raw": reader.other - other0,
        "rate_limited": int(after.get("dlq_rate_limited", 0) - before.get("dlq_rate_limited", 0)),
        "bridge_cpu_us_per_message": round(cpu / handled * 1e6, 1) if handled else None,
        "bridge_messages": int(handled),
        "drained": after.get("in", 0) >= published,
    }, published


def start_bridge(stack: Stack, tmp: Path, name: str, extra: str) -> BridgeProcess:
    config = write_edge_toml(
        tmp / f"{name}.toml",
        stack,
        f"flood-{name}-{os.getpid()}",
        f"flood-{name}-{os.getpid()}",
        extra=extra,
    )
    bridge = BridgeProcess(config, 0, free_ports(1)[0], log=tmp / f"{name}.log").start()
    bridge.wait_connected()
    return bridge


def stop_bridge(stack: Stack, bridge: BridgeProcess, name: str) -> None:
    bridge.stop()
    drop_session(stack, f"flood-{name}-{os.getpid()}-bridge-0")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=15.0, help="length of each phase")
    parser.add_argument("--calm", type=int, default=10, help="well-behaved vehicles")
    parser.add_argument(
        "--calm-hz",
        type=float,
        default=5.0,
        help="frames per second each well-behaved vehicle sends",
    )
    args = parser.parse_args()
    limit = BridgeSettings().vehicle_rate_per_s
    if not 0 < args.calm_hz < limit or args.calm < 1 or not 1 <= args.seconds <= 60:
        parser.error(
            f"--calm-hz must be under the bridge's per-vehicle limit ({limit}/s), "
            f"--calm >= 1 and --seconds between 1 and 60"
        )
    calm = [f"1CALM{n:012d}" for n in range(args.calm)]
    flood_vin = "1FAST000000000000"  # letters a VIN may hold (no I, O, Q)
    phases: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="fleetsentry-bench-flood-") as tmp_s:
        tmp = Path(tmp_s)
        stack = Stack(free_infra_settings(tmp / "infra"), quiet=True)
        try:
            stack.up(services=frozenset({"edge", "mqtt"}))
            stack.mqtt.register_vehicles({v: PASSWORD for v in [*calm, flood_vin]})
            fleet = CalmFleet(stack, calm, args.calm_hz)
            reader = RawReader(stack.edge.login(), set(calm))
            try:
                published = 0
                bridge = start_bridge(stack, tmp, "limited", "")
                try:
                    # Unmeasured: connections and the producer's first batches.
                    fleet.drive("warmup", 2.0)
                    published = len(fleet.sent)
                    wait_drained(bridge, published, min(60.0, left()))
                    for name, vin in (("alone", None), ("flood", flood_vin)):
                        print(f"phase {name} ...", file=sys.stderr, flush=True)
                        phases[name], published = run_phase(
                            name, stack, bridge, fleet, reader, vin, args.seconds, published
                        )
                finally:
                    stop_bridge(stack, bridge, "limited")
                print("phase flood, limit off ...", file=sys.stderr, flush=True)
                bridge = start_bridge(stack, tmp, "unlimited", "vehicle_rate_per_s = 0\n")
                try:
                    before = len(fleet.sent)
                    fleet.drive("warmup2", 2.0)
                    wait_drained(bridge, len(fleet.sent) - before, min(60.0, left()))
                    phases["flood_no_limit"], _ = run_phase(
                        "nolimit",
                        stack,
                        bridge,
                        fleet,
                        reader,
                        flood_vin,
                        args.seconds,
                        len(fleet.sent) - before,
                    )
                finally:
                    stop_bridge(stack, bridge, "unlimited")
            finally:
                reader.close()
                fleet.close()
        finally:
            stack.down()
    settings = BridgeSettings()
    figures = {
        "bench": "flood",
        "seconds_per_phase": args.seconds,
        "calm_vehicles": args.calm,
        "calm_hz": args.calm_hz,
        "vehicle_rate_per_s": settings.vehicle_rate_per_s,
        "vehicle_burst": settings.vehicle_burst,
        **phases,
        "complete": all(
            p["calm_arrived"] == p["calm_sent"] and p["drained"] for p in phases.values()
        ),
        "cpus": os.cpu_count(),
        "load_avg_1m": round(os.getloadavg()[0], 1),
    }
    print(json.dumps(figures))
    a, f, n = phases["alone"], phases["flood"], phases["flood_no_limit"]
    print(
        f"flood: well-behaved vehicles' publish-to-raw latency p50/p99 alone "
        f"{a['calm_p50_ms']}/{a['calm_p99_ms']} ms; beside a flooder "
        f"({f['flood_sent']:,} messages in {args.seconds:.0f} s, {f['flood_in_raw']:,} let "
        f"through, {f['rate_limited']:,} rate_limited) {f['calm_p50_ms']}/{f['calm_p99_ms']} ms;"
        f" with the limit off ({n['flood_sent']:,} flood messages, all let through: "
        f"{n['flood_in_raw']:,}) {n['calm_p50_ms']}/{n['calm_p99_ms']} ms; bridge CPU per "
        f"message {f['bridge_cpu_us_per_message']} us limited vs "
        f"{n['bridge_cpu_us_per_message']} us not; every well-behaved event arrived: "
        f"{figures['complete']}; on {figures['cpus']} CPUs, load {figures['load_avg_1m']}"
    )


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_flood":
        p = argparse.ArgumentParser()
        p.add_argument("_mode")
        p.add_argument("--host", required=True)
        p.add_argument("--port", type=int, required=True)
        p.add_argument("--vin", required=True)
        p.add_argument("--seconds", type=float, required=True)
        flooder(p.parse_args())
    else:
        main()
