"""Sustained MQTT -> Kafka throughput of the bridge: one process, two processes, and a baseline.

Baseline, measured in the same run: a bare paho MQTT 5 QoS 1 subscriber (same broker, the
subscription one bridge process makes, same receive maximum) that only counts messages. The run first
creates every consumer's persistent session (bare, one bridge, two bridges: three subscription
groups), publishes one backlog of pre-encoded telemetry events from a few paho clients (each
group gets a copy), then drains it phase by phase: start the consumer process(es) and time the
middle of the drain, from 10 % to 90 % of the backlog (for the bridge as seen in Kafka's end
offsets of raw.telemetry, i.e. produced and confirmed by Kafka), so process start-up and the
last process finishing alone are not counted. Publishing beforehand keeps the publishers' CPU
out of the measurement on a small machine. Beside events/s it reports each consumer's CPU time
per event and how many cores the bridges, Kafka (and its JIT compiler), Mosquitto and the whole
machine were busy over the same window.

Before the bridge phases the broker's produce path is driven for ``--warm-s`` seconds (60):
a gateway's Kafka runs for months, and a fresh JVM's compiler would otherwise take a third of
a core from whichever phase runs first.

``--cpu-cap CPUS`` gives the bare subscriber and each bridge process the same CPU budget
(cgroup CFS quota; root). On a 2-core machine that also runs Kafka and Mosquitto two uncapped
bridges cannot each have a core; with a cap the phases compare equal budgets, which is what
"two processes vs one" asks.

Targets: one bridge process handles >= 3x the events per CPU-second of the bare subscriber
(``bridge1_vs_bare_by_cpu``; the bridge's CPU includes its Kafka client's threads); two
bridge processes >= 1.8x one (run with ``--cpu-cap``, so both phases have equal budgets per
process); peak RSS of each process <= 150 MB. Starts its own Mosquitto + edge Kafka on free
ports and stops them.

    .venv/bin/python bench/bridge.py [--events 100000] [--cpu-cap 0.5] [--set linger_ms=5]
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
from confluent_kafka import Consumer, Producer, TopicPartition  # noqa: E402
from confluent_kafka.admin import AdminClient, NewTopic  # noqa: E402
from paho.mqtt.enums import CallbackAPIVersion  # noqa: E402
from paho.mqtt.packettypes import PacketTypes  # noqa: E402
from paho.mqtt.properties import Properties  # noqa: E402
from paho.mqtt.subscribeoptions import SubscribeOptions  # noqa: E402

from bench._procstat import (  # noqa: E402
    cpu_seconds,
    machine_cpu_seconds,
    peak_rss_mb,
    thread_cpu_seconds,
)
from edge.config import BridgeSettings  # noqa: E402
from shared.infra.mosquitto import BRIDGE_USER  # noqa: E402
from shared.infra.stack import Stack  # noqa: E402
from shared.kafka_config import Target, client_config  # noqa: E402
from tests.bridge_payloads import encode, telemetry  # noqa: E402
from tests.bridge_support import (  # noqa: E402
    BridgeProcess,
    drop_session,
    mqtt_client,
    write_edge_toml,
)
from tests.support import free_infra_settings  # noqa: E402

RECEIVE_MAXIMUM = BridgeSettings().receive_maximum
SUSTAINED = (0.1, 0.9)  # the part of the backlog whose drain is timed
DEADLINE_S = 240.0  # the whole run, stack start included
STARTED = time.monotonic()


def left() -> float:
    return max(5.0, DEADLINE_S - (time.monotonic() - STARTED))


class CpuCap:
    """Give each process under test the same fixed CPU budget (a CFS quota, one cgroup each).

    On a 2-core machine that also runs Kafka and Mosquitto, two uncapped bridges cannot each
    get a core, so "two processes vs one" there measures the machine, not the bridge. With a
    cap of e.g. 0.5 CPU per process the phases compare like with like -- one process with
    its budget, two with theirs -- and the machine keeps room for Kafka and Mosquitto: the
    ratio then shows whether the load spreads over processes without a shared bottleneck
    (the broker's shared-subscription dispatch, Kafka's produce path). Needs root and the
    cgroup cpu controller (v1 ``cpu`` hierarchy or v2 ``cpu.max``).
    """

    PERIOD_US = 100_000

    def __init__(self, cpus: float) -> None:
        self.cpus = cpus
        v1 = Path("/sys/fs/cgroup/cpu")
        v2 = Path("/sys/fs/cgroup")
        v2_controllers = v2 / "cgroup.controllers"
        if (v1 / "cpu.cfs_quota_us").exists():
            self.root, self.v2 = v1 / f"fleetsentry-bench-{os.getpid()}", False
        elif v2_controllers.exists() and "cpu" in v2_controllers.read_text().split():
            self.root, self.v2 = v2 / f"fleetsentry-bench-{os.getpid()}", True
        else:
            raise SystemExit(
                "--cpu-cap needs the cgroup cpu controller (no "
                "/sys/fs/cgroup/cpu/cpu.cfs_quota_us nor cpu in "
                "/sys/fs/cgroup/cgroup.controllers)"
            )
        try:
            self.root.mkdir()
        except OSError as exc:
            raise SystemExit(f"--cpu-cap: cannot create {self.root} ({exc}); run as root") from None
        if self.v2:
            (self.root / "cgroup.subtree_control").write_text("+cpu")
        self.groups: list[Path] = []

    def add(self, pid: int) -> None:
        """Put ``pid`` in a cgroup of its own with ``cpus`` CPUs' worth of time."""
        group = self.root / f"p{len(self.groups)}"
        group.mkdir()
        quota = int(self.cpus * self.PERIOD_US)
        if self.v2:
            (group / "cpu.max").write_text(f"{quota} {self.PERIOD_US}")
        else:
            (group / "cpu.cfs_period_us").write_text(str(self.PERIOD_US))
            (group / "cpu.cfs_quota_us").write_text(str(quota))
        (group / "cgroup.procs").write_text(str(pid))
        self.groups.append(group)

    def close(self) -> None:
        """Remove the cgroups (their processes have exited by now)."""
        for group in [*self.groups, self.root]:
            try:
                group.rmdir()
            except OSError:
                pass


CAP: CpuCap | None = None  # set by --cpu-cap


def capped(pid: int) -> None:
    if CAP is not None:
        CAP.add(pid)


class Watermarks:
    """How many records a topic holds, from one long-lived consumer.

    One client for the whole run: a new client per poll would cost the machine (and the
    broker) more than the bridges under test on a small gateway.
    """

    def __init__(self, bootstrap: Target, topic: str) -> None:
        self.topic = topic
        self.consumer = Consumer(client_config(bootstrap, {"group.id": "bench-wm"}))
        meta = self.consumer.list_topics(topic, timeout=10)
        self.partitions = [TopicPartition(topic, p) for p in meta.topics[topic].partitions]

    def total(self) -> int:
        return sum(self.consumer.get_watermark_offsets(tp, timeout=10)[1] for tp in self.partitions)

    def close(self) -> None:
        self.consumer.close()


WARM_TOPIC = "bench.warmup"


def warm_kafka(
    stack: Stack,
    payloads: list[tuple[str, bytes]],
    seconds: float,
    marks: Watermarks,
    rate: float = 12_000.0,
) -> float:
    """Drive the broker the way the phases will (two idempotent producers with the bridge's
    settings, watermarks read every 50 ms) for a while before measuring.

    A gateway's Kafka runs for months; a fresh JVM spends its first minute or so compiling
    (its JIT threads alone took a third of a core at 12,000 events/s here), which would be
    charged to whichever phase runs first. Returns the share of a core the broker's JIT
    compiler threads took over the warm-up's last second: near 0 means steady state.
    """
    settings = BridgeSettings()
    producers = [
        Producer(
            client_config(
                stack.edge.login(),
                {
                    "enable.idempotence": True,
                    "acks": "all",
                    "linger.ms": settings.linger_ms,
                    "compression.type": settings.compression,
                },
            )
        )
        for _ in range(2)
    ]
    kafka = list(stack.edge.running_pids().values())
    start = time.perf_counter()
    jit0 = sum(thread_cpu_seconds(pid, "Compiler") for pid in kafka)
    t0 = marked = start
    jit_share = 0.0
    i = 0
    while (elapsed := time.perf_counter() - start) < seconds:
        topic, value = payloads[i % len(payloads)]
        producers[i % 2].produce(WARM_TOPIC, value, topic.split("/")[1].encode())
        i += 1
        if i % 100 == 0:
            for p in producers:
                p.poll(0)
            ahead = i / rate - elapsed
            if ahead > 0:
                time.sleep(ahead)
            now = time.perf_counter()
            if now - marked >= 0.05:
                marks.total()
                marked = now
            if now - t0 >= 1.0:
                jit1 = sum(thread_cpu_seconds(pid, "Compiler") for pid in kafka)
                jit_share, jit0, t0 = (jit1 - jit0) / (now - t0), jit1, now
    for p in producers:
        p.flush(30)
    return jit_share


def connect_props() -> Properties:
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 3600
    props.ReceiveMaximum = RECEIVE_MAXIMUM
    return props


def create_session(stack: Stack, client_id: str, group: str, shared: bool = False) -> None:
    """A persistent session subscribed as the bridge would (plain for one process, the
    group's shared subscription for several), so the broker queues the backlog for it."""
    password = json.loads(stack.mqtt.credentials_path.read_text())[BRIDGE_USER]
    done = threading.Event()
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    c.username_pw_set(BRIDGE_USER, password)
    c.on_subscribe = lambda *a: done.set()
    c.connect(stack.mqtt.host, stack.mqtt.port, 30, clean_start=True, properties=connect_props())
    c.loop_start()
    prefix = f"$share/{group}/" if shared else ""
    c.subscribe(
        [(f"{prefix}fleet/+/{s}", SubscribeOptions(qos=1)) for s in ("payments", "telemetry")]
    )
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

    threads = [
        threading.Thread(target=run, args=(payloads[i::publishers], i)) for i in range(publishers)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return len(payloads) / (time.perf_counter() - start)


# --- the baseline, run as its own process ------------------------------------------------------


def bare_subscriber(args: argparse.Namespace) -> None:
    """Count messages (paho acknowledges each on receipt); time the middle of the backlog.

    ``--burst``: after each ``loop()`` keep reading the packets already in the socket, as
    the bridge does (edge/bridge/bridge.py ``_read_burst``), instead of one packet per
    ``select()`` -- the same read path as the bridge, so the two differ only by the work
    the bridge adds (validation, Kafka, acks after delivery).
    """
    state = {"n": 0, "first": 0.0, "last": 0.0, "cpu0": 0.0, "cpu1": 0.0}
    lo, hi = (int(f * args.expect) for f in SUSTAINED)

    def on_message(client: mqtt.Client, _u: Any, _msg: mqtt.MQTTMessage) -> None:
        state["n"] += 1
        if state["n"] == lo:
            state["first"] = time.perf_counter()
            state["cpu0"] = time.process_time()
        elif state["n"] == hi:
            state["last"] = time.perf_counter()
            state["cpu1"] = time.process_time()
        if state["n"] >= args.expect:
            client.disconnect()

    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=args.client_id, protocol=mqtt.MQTTv5)
    c.username_pw_set(BRIDGE_USER, args.password)
    c.on_message = on_message
    c.connect(args.host, args.port, 30, clean_start=False, properties=connect_props())
    deadline = time.monotonic() + args.timeout
    while state["n"] < args.expect and time.monotonic() < deadline:
        rc = c.loop(0.05)
        while args.burst and rc == mqtt.MQTT_ERR_SUCCESS and state["n"] < args.expect:
            before = state["n"]
            rc = c.loop_read()
            if state["n"] == before:
                break
    n, first, last = state["n"], state["first"], state["last"]
    rate = (hi - lo) / (last - first) if last > first else 0.0
    cpu_us = (state["cpu1"] - state["cpu0"]) / (hi - lo) * 1e6
    print(
        json.dumps(
            {
                "received": n,
                "events_per_s": rate,
                "cpu_us_per_event": cpu_us,
                "peak_rss_mb": peak_rss_mb(os.getpid()),
            }
        )
    )


def bare_id(burst: bool) -> str:
    return f"bench-bare{'-burst' if burst else ''}-{os.getpid()}"


def run_bare(stack: Stack, payloads: list[tuple[str, bytes]], burst: bool) -> dict[str, Any]:
    client_id = bare_id(burst)
    password = json.loads(stack.mqtt.credentials_path.read_text())[BRIDGE_USER]
    proc = subprocess.Popen(
        [
            sys.executable,
            __file__,
            "_bare",
            "--host",
            stack.mqtt.host,
            "--port",
            str(stack.mqtt.port),
            "--client-id",
            client_id,
            f"--password={password}",
            "--expect",
            str(len(payloads)),
            "--timeout",
            str(min(60.0, left())),
            *(["--burst"] if burst else []),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    capped(proc.pid)
    try:
        stdout, stderr = proc.communicate(timeout=left() + 10)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    if proc.returncode != 0:
        raise SystemExit(f"the bare subscriber failed ({proc.returncode}): {stderr[-2000:]}")
    drop_session(stack, client_id)
    result: dict[str, Any] = json.loads(stdout.strip().splitlines()[-1])
    return result


# --- bridge phases -----------------------------------------------------------------------------


def bridge_ids(processes: int) -> tuple[str, str]:
    """(edge id, subscription group) of the phase with ``processes`` bridges."""
    return f"bench{processes}-{os.getpid()}", f"bench{processes}-{os.getpid()}"


def create_sessions(stack: Stack) -> None:
    for burst in (False, True):
        create_session(stack, bare_id(burst), bare_id(burst))
    for processes in (1, 2):
        edge_id, group = bridge_ids(processes)
        for i in range(processes):
            create_session(stack, f"{edge_id}-bridge-{i}", group, shared=processes > 1)


BRIDGE_EXTRA = ""  # [bridge] settings under test (--set KEY=VALUE)


def run_bridges(
    stack: Stack, payloads: list[tuple[str, bytes]], processes: int, tmp: Path, marks: Watermarks
) -> dict[str, Any]:
    edge_id, group = bridge_ids(processes)
    config = write_edge_toml(
        tmp / f"edge-{processes}.toml",
        stack,
        edge_id,
        group,
        extra=f"processes = {processes}\n{BRIDGE_EXTRA}",
    )
    base = marks.total()
    target = base + len(payloads)
    bridges = [
        BridgeProcess(config, i, log=tmp / f"bridge-{processes}-{i}.log").start()
        for i in range(processes)
    ]
    pids = [b.proc.pid for b in bridges if b.proc is not None]
    for pid in pids:
        capped(pid)
    broker = stack.mqtt.pid()
    kafka = list(stack.edge.running_pids().values())

    def sample() -> tuple[float, ...]:
        busy, steal = machine_cpu_seconds()
        return (
            sum(cpu_seconds(pid) for pid in pids),
            cpu_seconds(broker) if broker else 0.0,
            sum(cpu_seconds(pid) for pid in kafka),
            busy,
            sum(thread_cpu_seconds(pid, "Compiler") for pid in kafka),
            steal,
        )

    samples: list[tuple[float, int, tuple[float, ...]]] = []
    n = base
    deadline = time.monotonic() + min(90.0, left())
    try:
        while n < target and time.monotonic() < deadline:
            n = marks.total()
            samples.append((time.perf_counter(), n - base, sample()))
            time.sleep(0.05)
        rss = [peak_rss_mb(pid) for pid in pids]
    finally:
        for b in bridges:
            b.stop()
        for i in range(processes):
            drop_session(stack, f"{edge_id}-bridge-{i}")
    done = n - base
    # Sustained rate: over the middle of the drain (SUSTAINED of the backlog), once every
    # process is connected and before the first one runs out of its share.
    lo = next((x for x in samples if x[1] >= SUSTAINED[0] * len(payloads)), None)
    hi = next((x for x in samples if x[1] >= SUSTAINED[1] * len(payloads)), None)
    if lo is None or hi is None or hi[0] <= lo[0]:
        return {
            "produced": done,
            "events_per_s": 0.0,
            "cpu_us_per_event": float("nan"),
            "peak_rss_mb": rss,
            **{k: 0.0 for k in SHARES},
        }
    wall, events = hi[0] - lo[0], hi[1] - lo[1]
    share = [(b - a) / wall for a, b in zip(lo[2], hi[2], strict=True)]
    # Mosquitto is one thread: its CPU seconds per wall second near 1.0 is a ceiling no
    # number of bridge processes can pass. The machine's share says whether the cores are
    # all taken (then a second process can only share them).
    return {
        "produced": done,
        "events_per_s": events / wall,
        "cpu_us_per_event": share[0] * wall / events * 1e6,
        "peak_rss_mb": rss,
        **dict(zip(SHARES, share, strict=True)),
    }


SHARES = (
    "bridges_cores",
    "mosquitto_busy",
    "kafka_cores",
    "machine_cores",
    "kafka_jit_cores",
    "steal_cores",
)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument(
        "--warm-s",
        type=float,
        default=60.0,
        help="seconds of produce load on the broker before measuring, so its "
        "JIT compiler is done (0 measures a cold broker)",
    )
    parser.add_argument(
        "--cpu-cap",
        type=float,
        default=0.0,
        metavar="CPUS",
        help="give the bare subscriber and each bridge process this many CPUs "
        "(cgroup CFS quota; root), e.g. 0.5 on a 2-core machine",
    )
    parser.add_argument(
        "--set",
        dest="settings",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a [bridge] setting to try, e.g. linger_ms=2",
    )
    args = parser.parse_args()
    if bad := [kv for kv in args.settings if "=" not in kv or not kv.split("=", 1)[0].strip()]:
        parser.error(f"--set takes KEY=VALUE (a [bridge] setting), got {bad[0]!r}")
    known = BridgeSettings.__struct_fields__
    if unknown := [kv for kv in args.settings if kv.split("=", 1)[0].strip() not in known]:
        parser.error(
            f"--set {unknown[0]!r}: [bridge] has no such setting (it has {', '.join(known)})"
        )
    if args.cpu_cap < 0 or args.cpu_cap > (os.cpu_count() or 1):
        parser.error(
            f"--cpu-cap is a share of CPUs between 0 and {os.cpu_count()}, got {args.cpu_cap}"
        )
    global BRIDGE_EXTRA, CAP
    if args.cpu_cap:
        CAP = CpuCap(args.cpu_cap)
    BRIDGE_EXTRA = "".join(
        f"{kv.split('=', 1)[0].strip()} = {kv.split('=', 1)[1].strip()}\n" for kv in args.settings
    )
    now = time.time()
    vins = [f"1FLEET{n:011d}" for n in range(200)]
    payloads = [
        (f"fleet/{vins[i % 200]}/telemetry", encode(telemetry(vins[i % 200], f"bench-{i}", now)))
        for i in range(args.events)
    ]
    with tempfile.TemporaryDirectory(prefix="fleetsentry-bench-bridge-") as tmp_s:
        tmp = Path(tmp_s)
        stack = Stack(free_infra_settings(tmp / "infra"), quiet=True)
        try:
            stack.up(services=frozenset({"edge", "mqtt"}))
            create_sessions(stack)
            publish_rate = publish_backlog(stack, payloads)
            admin = AdminClient(client_config(stack.edge.login()))
            admin.create_topics([NewTopic(WARM_TOPIC, num_partitions=3, replication_factor=1)])[
                WARM_TOPIC
            ].result(30)
            bare = run_bare(stack, payloads, burst=False)
            burst = run_bare(stack, payloads, burst=True)
            marks = Watermarks(stack.edge.login(), "raw.telemetry")
            try:
                print(
                    f"warming the broker's produce path for {args.warm_s:.0f} s ...",
                    file=sys.stderr,
                    flush=True,
                )
                jit_after_warm = warm_kafka(stack, payloads, args.warm_s, marks)
                one = run_bridges(stack, payloads, 1, tmp, marks)
                two = run_bridges(stack, payloads, 2, tmp, marks)
            finally:
                marks.close()
        finally:
            stack.down()
            if CAP is not None:
                CAP.close()
    rates = {
        "bare": bare["events_per_s"],
        "bare with bursts": burst["events_per_s"],
        "1 bridge": one["events_per_s"],
        "2 bridges": two["events_per_s"],
    }
    if not all(rates.values()):
        raise SystemExit(
            "bench/bridge: a phase did not drain its backlog in time, no figures (events/s "
            + ", ".join(f"{k} {v:,.0f}" for k, v in rates.items())
            + f"; got bare {bare['received']}, bare with bursts {burst['received']}, 1 bridge "
            f"{one['produced']}, 2 bridges {two['produced']} of {args.events})"
        )
    figures = {
        "bench": "bridge",
        "events": args.events,
        "bare_events_per_s": round(bare["events_per_s"]),
        "bridge1_events_per_s": round(one["events_per_s"]),
        "bridge2_events_per_s": round(two["events_per_s"]),
        "bridge1_vs_bare": round(one["events_per_s"] / bare["events_per_s"], 3),
        "bridge2_vs_bridge1": round(two["events_per_s"] / one["events_per_s"], 3),
        "bare_cpu_us_per_event": round(bare["cpu_us_per_event"], 1),
        "bare_burst_events_per_s": round(burst["events_per_s"]),
        "bridge1_vs_bare_burst": round(one["events_per_s"] / burst["events_per_s"], 3),
        "bare_burst_cpu_us_per_event": round(burst["cpu_us_per_event"], 1),
        "bridge1_cpu_us_per_event": round(one["cpu_us_per_event"], 1),
        "bridge2_cpu_us_per_event": round(two["cpu_us_per_event"], 1),
        "bridge1_vs_bare_by_cpu": round(bare["cpu_us_per_event"] / one["cpu_us_per_event"], 3),
        "mosquitto_busy_1_bridge": round(one["mosquitto_busy"], 2),
        "mosquitto_busy_2_bridges": round(two["mosquitto_busy"], 2),
        "cores_busy_1_bridge": {
            k: round(one[f"{k}_cores"], 2)
            for k in ("bridges", "kafka", "kafka_jit", "machine", "steal")
        },
        "cores_busy_2_bridges": {
            k: round(two[f"{k}_cores"], 2)
            for k in ("bridges", "kafka", "kafka_jit", "machine", "steal")
        },
        "warm_s": args.warm_s,
        "kafka_jit_cores_end_of_warmup": round(jit_after_warm, 3),
        "publish_events_per_s": round(publish_rate),
        "bare_peak_rss_mb": round(bare["peak_rss_mb"], 1),
        "bridge_peak_rss_mb": [round(x, 1) for x in one["peak_rss_mb"] + two["peak_rss_mb"]],
        "complete": bare["received"] == burst["received"] == args.events
        and one["produced"] == args.events
        and two["produced"] == args.events,
        "bridge_settings": args.settings,
        # The per-vehicle checks run on every event (200 vehicles share the backlog, each well
        # under the burst, so none is limited): their cost is in the bridge's figures.
        "vehicle_limit_per_s_burst": [
            BridgeSettings().vehicle_rate_per_s,
            BridgeSettings().vehicle_burst,
        ],
        "cpu_cap_per_process": args.cpu_cap or None,
        "cpus": os.cpu_count(),
        "load_avg_1m": round(os.getloadavg()[0], 1),
    }
    print(json.dumps(figures))
    print(
        f"bridge: events per CPU-second {figures['bridge1_vs_bare_by_cpu']:.2f}x the bare paho "
        f"subscriber's (target >= 3): CPU per event {figures['bridge1_cpu_us_per_event']} us vs "
        f"{figures['bare_cpu_us_per_event']} us; 1 process {figures['bridge1_events_per_s']:,} "
        f"ev/s = {figures['bridge1_vs_bare']:.2f}x the bare subscriber "
        f"({figures['bare_events_per_s']:,} ev/s), "
        f"{figures['bridge1_vs_bare_burst']:.2f}x one reading bursts like the bridge "
        f"({figures['bare_burst_events_per_s']:,} ev/s); 2 processes "
        f"{figures['bridge2_events_per_s']:,} ev/s = {figures['bridge2_vs_bridge1']:.2f}x one "
        f"(target >= 1.8 with --cpu-cap); peak RSS {max(figures['bridge_peak_rss_mb'])} MB (target <= 150); Mosquitto busy "
        f"{figures['mosquitto_busy_1_bridge']:.0%} of its one thread with 1 bridge, "
        f"{figures['mosquitto_busy_2_bridges']:.0%} with 2; cores busy with 2 bridges: "
        f"bridges {figures['cores_busy_2_bridges']['bridges']}, Kafka "
        f"{figures['cores_busy_2_bridges']['kafka']}, whole machine "
        f"{figures['cores_busy_2_bridges']['machine']}; on "
        f"{figures['cpus']} CPUs, load {figures['load_avg_1m']}"
        + (f"; each process capped at {args.cpu_cap} CPU" if args.cpu_cap else "")
    )


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_bare":
        p = argparse.ArgumentParser()
        p.add_argument("_mode")
        for opt in ("--host", "--client-id", "--password"):
            p.add_argument(opt, required=True)
        p.add_argument("--port", type=int, required=True)
        p.add_argument("--expect", type=int, required=True)
        p.add_argument("--timeout", type=float, required=True)
        p.add_argument("--burst", action="store_true")
        bare_subscriber(p.parse_args())
    else:
        main()
