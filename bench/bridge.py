"""Sustained MQTT -> Kafka throughput of the bridge: one process, two processes, and a baseline.

Baseline, measured in the same run: a bare paho MQTT 5 QoS 1 subscriber (same broker, same
kind of shared subscription, same receive maximum) that only counts messages. The run first
creates every consumer's persistent session (bare, one bridge, two bridges: three subscription
groups), publishes one backlog of pre-encoded telemetry events from a few paho clients (each
group gets a copy), then drains it phase by phase: start the consumer process(es) and time from
the first to the last event (for the bridge as seen in Kafka's end offsets of raw.telemetry,
i.e. produced and confirmed by Kafka). Publishing beforehand keeps the publishers' CPU out of
the measurement on a small machine. Beside events/s it reports each consumer's CPU time per
event over the drain, which stays meaningful when other work shares the machine.

Targets: one bridge >= 0.8 of the bare subscriber; two bridges >= 1.6x one; peak RSS of each
process <= 150 MB. Starts its own Mosquitto + edge Kafka on free ports and stops them.

    .venv/bin/python bench/bridge.py [--events 20000]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import paho.mqtt.client as mqtt  # noqa: E402
from paho.mqtt.enums import CallbackAPIVersion  # noqa: E402
from paho.mqtt.packettypes import PacketTypes  # noqa: E402
from paho.mqtt.properties import Properties  # noqa: E402
from paho.mqtt.subscribeoptions import SubscribeOptions  # noqa: E402

from edge.config import BridgeSettings  # noqa: E402
from shared.infra.mosquitto import BRIDGE_USER  # noqa: E402
from shared.infra.stack import Stack  # noqa: E402
from tests.bridge_payloads import encode, telemetry  # noqa: E402
from tests.bridge_support import (  # noqa: E402
    BridgeProcess,
    drop_session,
    end_offsets,
    mqtt_client,
    write_edge_toml,
)
from tests.support import free_infra_settings  # noqa: E402

RECEIVE_MAXIMUM = BridgeSettings().receive_maximum
DEADLINE_S = 170.0  # the whole run, stack start included
STARTED = time.monotonic()


def left() -> float:
    return max(5.0, DEADLINE_S - (time.monotonic() - STARTED))


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def connect_props() -> Properties:
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 3600
    props.ReceiveMaximum = RECEIVE_MAXIMUM
    return props


def create_session(stack: Stack, client_id: str, group: str) -> None:
    """A persistent session subscribed to the group, so the broker queues the backlog for it."""
    password = json.loads(stack.mqtt.credentials_path.read_text())[BRIDGE_USER]
    done = threading.Event()
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    c.username_pw_set(BRIDGE_USER, password)
    c.on_subscribe = lambda *a: done.set()
    c.connect(stack.mqtt.host, stack.mqtt.port, 30, clean_start=True, properties=connect_props())
    c.loop_start()
    c.subscribe([(f"$share/{group}/fleet/+/{s}", SubscribeOptions(qos=1))
                 for s in ("payments", "telemetry")])
    assert done.wait(10), "no SUBACK"
    c.disconnect()
    c.loop_stop()


def publish_backlog(stack: Stack, payloads: list[tuple[str, bytes]], publishers: int = 3) -> float:
    """Publish QoS 1 from a few clients; returns events/s (a side figure only)."""
    start = time.perf_counter()

    def run(part: list[tuple[str, bytes]], n: int) -> None:
        c = mqtt_client(stack, f"bench-pub-{n}-{os.getpid()}")
        infos = [c.publish(t, p, qos=1) for t, p in part]
        for info in infos:
            info.wait_for_publish(left())
        c.disconnect()
        c.loop_stop()

    threads = [threading.Thread(target=run, args=(payloads[i::publishers], i))
               for i in range(publishers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return len(payloads) / (time.perf_counter() - start)


# --- the baseline, run as its own process ------------------------------------------------------


def bare_subscriber(args: argparse.Namespace) -> None:
    """Count messages (paho acknowledges each on receipt) and report first/last times."""
    state = {"n": 0, "first": 0.0, "last": 0.0, "cpu0": 0.0, "cpu1": 0.0}

    def on_message(client: mqtt.Client, _u: Any, _msg: mqtt.MQTTMessage) -> None:
        now = time.perf_counter()
        if state["n"] == 0:
            state["first"] = now
            state["cpu0"] = time.process_time()
        state["n"] += 1
        state["last"] = now
        if state["n"] >= args.expect:
            state["cpu1"] = time.process_time()
            client.disconnect()

    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=args.client_id, protocol=mqtt.MQTTv5)
    c.username_pw_set(BRIDGE_USER, args.password)
    c.on_message = on_message
    c.connect(args.host, args.port, 30, clean_start=False, properties=connect_props())
    deadline = time.monotonic() + args.timeout
    while state["n"] < args.expect and time.monotonic() < deadline:
        c.loop(0.05)
    n, first, last = state["n"], state["first"], state["last"]
    rate = (n - 1) / (last - first) if n > 1 and last > first else 0.0
    cpu_us = (state["cpu1"] - state["cpu0"]) / max(1, n - 1) * 1e6
    print(json.dumps({"received": n, "events_per_s": rate, "cpu_us_per_event": cpu_us,
                      "peak_rss_mb": peak_rss_mb(os.getpid())}))


def run_bare(stack: Stack, payloads: list[tuple[str, bytes]]) -> dict[str, Any]:
    client_id = f"bench-bare-{os.getpid()}"
    password = json.loads(stack.mqtt.credentials_path.read_text())[BRIDGE_USER]
    out = subprocess.run(
        [sys.executable, __file__, "_bare", "--host", stack.mqtt.host, "--port",
         str(stack.mqtt.port), "--client-id", client_id, "--password", password,
         "--expect", str(len(payloads)), "--timeout", str(min(60.0, left()))],
        capture_output=True, text=True, timeout=left() + 10, check=True)
    drop_session(stack, client_id)
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


# --- bridge phases -----------------------------------------------------------------------------


def bridge_ids(processes: int) -> tuple[str, str]:
    """(edge id, subscription group) of the phase with ``processes`` bridges."""
    return f"bench{processes}-{os.getpid()}", f"bench{processes}-{os.getpid()}"


def create_sessions(stack: Stack) -> None:
    create_session(stack, f"bench-bare-{os.getpid()}", f"bench-bare-{os.getpid()}")
    for processes in (1, 2):
        edge_id, group = bridge_ids(processes)
        for i in range(processes):
            create_session(stack, f"{edge_id}-bridge-{i}", group)


BRIDGE_EXTRA = ""  # [bridge] settings under test (--set KEY=VALUE)


def run_bridges(stack: Stack, payloads: list[tuple[str, bytes]], processes: int,
                tmp: Path) -> dict[str, Any]:
    edge_id, group = bridge_ids(processes)
    config = write_edge_toml(tmp / f"edge-{processes}.toml", stack, edge_id, group,
                             extra=BRIDGE_EXTRA)
    base = end_offsets(stack.edge.bootstrap, "raw.telemetry")
    target = base + len(payloads)
    bridges = [BridgeProcess(config, i, log=tmp / f"bridge-{processes}-{i}.log").start()
               for i in range(processes)]
    pids = [b.proc.pid for b in bridges if b.proc is not None]
    broker = stack.mqtt.pid()
    first_t = first_n = last_t = 0.0
    cpu0 = cpu1 = broker0 = broker1 = 0.0
    n = base
    deadline = time.monotonic() + min(90.0, left())
    try:
        while n < target and time.monotonic() < deadline:
            n = end_offsets(stack.edge.bootstrap, "raw.telemetry")
            now = time.perf_counter()
            cpu = sum(cpu_seconds(pid) for pid in pids)
            mosq = cpu_seconds(broker) if broker else 0.0
            if n > base and not first_t:
                first_t, first_n, cpu0, broker0 = now, n, cpu, mosq
            last_t, cpu1, broker1 = now, cpu, mosq
            time.sleep(0.05)
        rss = [peak_rss_mb(pid) for pid in pids]
    finally:
        for b in bridges:
            b.stop()
        for i in range(processes):
            drop_session(stack, f"{edge_id}-bridge-{i}")
    done = n - base
    rate = (n - first_n) / (last_t - first_t) if last_t > first_t else 0.0
    cpu_us = (cpu1 - cpu0) / max(1, n - first_n) * 1e6
    # Mosquitto is one thread: its CPU seconds per wall second near 1.0 is a ceiling no
    # number of bridge processes can pass.
    busy = (broker1 - broker0) / (last_t - first_t) if last_t > first_t else 0.0
    return {"produced": done, "events_per_s": rate, "cpu_us_per_event": cpu_us,
            "peak_rss_mb": rss, "mosquitto_busy": busy}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--set", dest="settings", action="append", default=[],
                        metavar="KEY=VALUE", help="a [bridge] setting to try, e.g. linger_ms=2")
    args = parser.parse_args()
    global BRIDGE_EXTRA
    BRIDGE_EXTRA = "".join(f"{kv.split('=', 1)[0].strip()} = {kv.split('=', 1)[1].strip()}\n"
                           for kv in args.settings)
    now = time.time()
    vins = [f"1FLEET{n:011d}" for n in range(200)]
    payloads = [(f"fleet/{vins[i % 200]}/telemetry",
                 encode(telemetry(vins[i % 200], f"bench-{i}", now))) for i in range(args.events)]
    with tempfile.TemporaryDirectory(prefix="fleetsentry-bench-bridge-") as tmp_s:
        tmp = Path(tmp_s)
        stack = Stack(free_infra_settings(tmp / "infra"), quiet=True)
        try:
            stack.up(services=frozenset({"edge", "mqtt"}))
            create_sessions(stack)
            publish_rate = publish_backlog(stack, payloads)
            bare = run_bare(stack, payloads)
            one = run_bridges(stack, payloads, 1, tmp)
            two = run_bridges(stack, payloads, 2, tmp)
        finally:
            stack.down()
    figures = {
        "bench": "bridge",
        "events": args.events,
        "bare_events_per_s": round(bare["events_per_s"]),
        "bridge1_events_per_s": round(one["events_per_s"]),
        "bridge2_events_per_s": round(two["events_per_s"]),
        "bridge1_vs_bare": round(one["events_per_s"] / bare["events_per_s"], 3),
        "bridge2_vs_bridge1": round(two["events_per_s"] / one["events_per_s"], 3),
        "bare_cpu_us_per_event": round(bare["cpu_us_per_event"], 1),
        "bridge1_cpu_us_per_event": round(one["cpu_us_per_event"], 1),
        "bridge2_cpu_us_per_event": round(two["cpu_us_per_event"], 1),
        "bridge1_vs_bare_by_cpu": round(bare["cpu_us_per_event"] / one["cpu_us_per_event"], 3),
        "mosquitto_busy_1_bridge": round(one["mosquitto_busy"], 2),
        "mosquitto_busy_2_bridges": round(two["mosquitto_busy"], 2),
        "publish_events_per_s": round(publish_rate),
        "bare_peak_rss_mb": round(bare["peak_rss_mb"], 1),
        "bridge_peak_rss_mb": [round(x, 1) for x in one["peak_rss_mb"] + two["peak_rss_mb"]],
        "complete": bare["received"] == args.events and one["produced"] == args.events
        and two["produced"] == args.events,
        "bridge_settings": args.settings,
        "cpus": os.cpu_count(),
        "load_avg_1m": round(os.getloadavg()[0], 1),
    }
    print(json.dumps(figures))
    print(f"bridge: 1 process {figures['bridge1_events_per_s']:,} ev/s = "
          f"{figures['bridge1_vs_bare']:.2f}x the bare paho subscriber "
          f"({figures['bare_events_per_s']:,} ev/s; target >= 0.8); 2 processes "
          f"{figures['bridge2_events_per_s']:,} ev/s = {figures['bridge2_vs_bridge1']:.2f}x one "
          f"(target >= 1.6); CPU per event {figures['bridge1_cpu_us_per_event']} us vs bare "
          f"{figures['bare_cpu_us_per_event']} us ({figures['bridge1_vs_bare_by_cpu']:.2f}x); "
          f"peak RSS {max(figures['bridge_peak_rss_mb'])} MB (target <= 150); Mosquitto busy "
          f"{figures['mosquitto_busy_1_bridge']:.0%} of its one thread with 1 bridge, "
          f"{figures['mosquitto_busy_2_bridges']:.0%} with 2; on "
          f"{figures['cpus']} CPUs, load {figures['load_avg_1m']}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_bare":
        p = argparse.ArgumentParser()
        p.add_argument("_mode")
        for opt in ("--host", "--client-id", "--password"):
            p.add_argument(opt, required=True)
        p.add_argument("--port", type=int, required=True)
        p.add_argument("--expect", type=int, required=True)
        p.add_argument("--timeout", type=float, required=True)
        bare_subscriber(p.parse_args())
    else:
        main()
