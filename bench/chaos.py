"""Chaos run: nothing the broker acknowledged to a vehicle is lost or duplicated, whatever dies.

One gateway (edge Kafka, Mosquitto, ``fleetsentry edge run``, MirrorMaker 2), the 3-node cloud
Kafka and the cloud store, on free ports in a temporary folder; a simulated fleet publishes for
the whole run while faults come from a seeded schedule (printed first, so a run can be
replayed with ``--seed``):

- ``bridge``, ``enricher``, ``scorer``, ``agent``: kill -9 of the service's process; the
  gateway's supervisor (``edge run``) restarts it, as on a gateway;
- ``mirrormaker``, ``store``: kill -9; restarted 2 s later, as systemd's ``Restart=always``;
- ``edge-kafka``, ``mosquitto``: kill -9 of the broker, started again a few seconds later;
- ``cloud-broker``: kill -9 of one of the three cloud brokers, started again after
  ``--broker-down`` seconds (the cluster carries on with two: min.insync.replicas=2);
- ``cloud-cut``: the gateway is cut off from the cloud for ``--outage`` seconds: the three
  cloud brokers are frozen (SIGSTOP, then SIGCONT). To MirrorMaker that is a link whose
  packets vanish (connections hang, nothing is refused), not a clean refusal; the cloud's own
  clients (the store) are frozen with it.

Then the fleet stops and drains, the pipeline drains, and the verdict reconciles the fleet's
own record of PUBACKed event ids (``sim run --acked-log``) with what was read back: each id
exactly once in ``anon.*`` and ``scores.*`` (edge, read_committed), in the cloud copies that
MirrorMaker wrote, and in the store's Parquet files; each declined payment's decision received
by its vehicle. Recovery after a fault is the time from its injection until the output of the
stage it hit grows again (read_committed counts sampled every second). Exit status 1 when
anything is lost or duplicated.

    .venv/bin/python bench/chaos.py --minutes 20 --vehicles 200 --seed 1
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import msgspec  # noqa: E402
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition  # noqa: E402

from bench._procstat import children, cmdline  # noqa: E402
from shared import signing, topics  # noqa: E402
from shared.demo import _cloud_toml, _edge_toml  # noqa: E402
from shared.infra import jars  # noqa: E402
from shared.infra.mirror import Mirror  # noqa: E402
from shared.infra.stack import Stack  # noqa: E402
from shared.kafka_config import ADMIN_USER, MIRROR_USER, Target, client_config  # noqa: E402
from tests.support import free_infra_settings  # noqa: E402

EDGE_ID = "edge-1"
PASSWORD = "chaos-vehicle"
SERVICES = ("bridge", "enricher", "scorer", "agent")
INFRA = ("edge-kafka", "mosquitto", "cloud-broker", "cloud-cut")
KILLS = (*SERVICES, "mirrormaker", "store")
STREAMS = ("telemetry", "payments")
# What each fault stops, as the count that must grow again for the stage to have recovered.
PROBE = {
    "bridge": "raw",
    "enricher": "anon",
    "scorer": "scores",
    "agent": "agent",
    "mirrormaker": "cloud",
    "store": "store",
    "edge-kafka": "scores",
    "mosquitto": "raw",
    "cloud-broker": "cloud",
    "cloud-cut": "cloud",
}
RAW_STAGE = "raw.* (at least once)"
WARMUP_S = 20.0  # the fleet publishes this long before the first fault
RESTART_DELAY_S = 2.0  # MirrorMaker and the store, as a service manager restarts them
MIN_GAP_S = 4.0  # between any two injections (and lifts)
# The drain gives up when no stage has moved for this long (a broker restarted after kill -9
# on a loaded machine, then a consumer group's rebalance, can take minutes).
STALL_S = 300.0
BLAME_S = 30.0  # a loss is listed with the faults injected this long before its PUBACK


def say(text: str) -> None:
    print(text, flush=True)


# --- the schedule ---------------------------------------------------------------------------


@dataclass
class Fault:
    kind: str
    at: float  # seconds after the fleet started publishing
    duration: float = 0.0  # how long it stays down (0: restarted by whoever restarts it)
    target: str = ""
    injected: float | None = None
    lifted: float | None = None
    recovered_s: float | None = None
    note: str = ""

    @property
    def lift_at(self) -> float:
        return self.at + self.duration


def plan(
    rng: random.Random,
    window: float,
    kills: int,
    edge_kafka: int,
    mosquitto: int,
    cloud_brokers: int,
    cuts: int,
    broker_down: float,
    outage: float,
    recover_gap: float,
) -> list[Fault]:
    """Infrastructure faults one at a time (each followed by ``recover_gap`` s), process
    kills anywhere in between; nothing in the last ``recover_gap`` s of the window."""
    start, end = WARMUP_S, window - recover_gap
    infra = (
        [Fault("edge-kafka", 0, round(rng.uniform(3, 10), 1)) for _ in range(edge_kafka)]
        + [Fault("mosquitto", 0, round(rng.uniform(3, 10), 1)) for _ in range(mosquitto)]
        + [Fault("cloud-broker", 0, broker_down) for _ in range(cloud_brokers)]
        + [Fault("cloud-cut", 0, outage) for _ in range(cuts)]
    )
    rng.shuffle(infra)
    free = end - start - sum(f.duration + recover_gap for f in infra)
    if free < 0:
        raise SystemExit(
            f"a {window:.0f} s run cannot hold these faults one after the other "
            f"({-free:.0f} s short): raise --minutes or shorten --outage"
        )
    points = sorted(rng.uniform(0, free) for _ in infra)
    t, prev = start, 0.0
    for f, p in zip(infra, points, strict=True):
        t += p - prev
        prev = p
        f.at = round(t, 1)
        t += f.duration + recover_gap
    taken = [x for f in infra for x in (f.at, f.lift_at)]
    out = list(infra)
    for kind in [k for k in KILLS for _ in range(kills)]:
        for _ in range(1000):
            at = round(rng.uniform(start, end), 1)
            if all(abs(at - x) >= MIN_GAP_S for x in taken):
                break
        taken.append(at)
        out.append(Fault(kind, at))
    return sorted(out, key=lambda f: f.at)


# --- reading back -------------------------------------------------------------------------


class _Rec(msgspec.Struct):
    event_id: str = ""
    anomalous: bool = False


_decode = msgspec.json.Decoder(_Rec).decode


class Tail(threading.Thread):
    """Reads topics from the beginning, committed records only, counting each event id.

    As a thread it follows the topics until ``stop`` (the progress counts); ``read_to_end``
    reads once, with a fresh consumer, up to the ends found when it starts (the verdict)."""

    def __init__(
        self, name: str, target: Target, names: list[str], log: Path | None = None
    ) -> None:
        super().__init__(name=f"tail-{name}", daemon=True)
        self.target, self.names, self.log = target, names, log
        self.counts: dict[str, Counter[str]] = {t: Counter() for t in names}
        self.per_topic: Counter[str] = Counter()
        self.declined: set[str] = set()
        self.total = 0
        self.errors: Counter[str] = Counter()
        self.stop = threading.Event()

    def family(self, prefix: str) -> int:
        return sum(n for t, n in list(self.per_topic.items()) if t.startswith(prefix))

    def _consumer(self) -> tuple[Consumer, list[TopicPartition]]:
        extra: dict[str, Any] = {
            "group.id": f"chaos-{self.name}",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
            # A reset would skip records silently: fail loudly instead.
            "auto.offset.reset": "error",
            "log_level": 3,
        }
        if self.log is not None:
            extra["logger"] = _FileLogger(self.log)
        c = Consumer(client_config(self.target, extra))
        deadline = time.monotonic() + 120
        meta = c.list_topics(timeout=30)
        while not all(t in meta.topics for t in self.names):  # MirrorMaker creates them
            if time.monotonic() > deadline:
                raise SystemExit(f"topics {self.names} did not appear within 120 s")
            time.sleep(1)
            meta = c.list_topics(timeout=30)
        parts = [
            TopicPartition(t, p, OFFSET_BEGINNING)
            for t in self.names
            for p in meta.topics[t].partitions
        ]
        c.assign(parts)
        return c, parts

    def _take(self, msgs: list[Any]) -> None:
        for msg in msgs:
            value, topic = msg.value(), msg.topic()
            if msg.error():
                self.errors[str(msg.error())] += 1
                continue
            if value is None or topic is None:
                continue
            rec = _decode(value)
            self.counts[topic][rec.event_id] += 1
            self.per_topic[topic] += 1
            if rec.anomalous and topic == topics.SCORES_PAYMENTS:
                self.declined.add(rec.event_id)
            self.total += 1

    def run(self) -> None:
        c, _parts = self._consumer()
        try:
            while not self.stop.is_set():
                self._take(c.consume(1000, 0.5))
        finally:
            c.close()

    def read_to_end(self, idle_s: float = 15.0) -> Tail:
        """Everything committed up to the ends as they are now (or until ``idle_s`` of
        nothing new: an open transaction holds read_committed readers back)."""
        c, parts = self._consumer()
        try:
            ends = {
                (tp.topic, tp.partition): c.get_watermark_offsets(tp, timeout=30)[1] for tp in parts
            }
            last = time.monotonic()
            while time.monotonic() - last < idle_s:
                msgs = c.consume(5000, 0.5)
                if msgs:
                    last = time.monotonic()
                    self._take(msgs)
                pos = c.position(parts)
                if all(
                    p.offset >= ends[(p.topic, p.partition)]
                    or (p.offset < 0 and ends[(p.topic, p.partition)] == 0)
                    for p in pos
                ):
                    break
        finally:
            c.close()
        return self


class _FileLogger:
    """librdkafka's log lines into a file (a stalled reader says why there)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def log(self, level: int, fmt: str, *args: object) -> None:
        with open(self.path, "a") as fh:
            fh.write(f"{time.strftime('%H:%M:%S')} {level} {fmt % args if args else fmt}\n")

    def __getattr__(self, name: str) -> Any:
        return self.log


def store_rows(root: Path) -> dict[str, Counter[str]]:
    """event id -> rows, per dataset, over every finished Parquet file (what readers see)."""
    import pyarrow.parquet as pq

    out: dict[str, Counter[str]] = {}
    for prefix in ("anon", "scores"):
        for stream in STREAMS:
            name = _topic(prefix, stream)
            counts: Counter[str] = Counter()
            folder = root / name
            files = (
                [p for p in folder.rglob("*.parquet") if not p.name.startswith(".")]
                if folder.is_dir()
                else []
            )
            for path in files:
                counts.update(pq.read_table(path, columns=["event_id"])["event_id"].to_pylist())
            out[name] = counts
    return out


def store_files(root: Path) -> int:
    """Files the store has indexed (durable and committed): grows with every flush."""
    index = root / "_index.sqlite"
    if not index.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{index}?mode=ro", uri=True, timeout=1) as db:
            return int(db.execute("SELECT COUNT(*) FROM files").fetchone()[0])
    except sqlite3.Error:
        return -1


# --- the system under test ----------------------------------------------------------------


def _python(*args: str) -> list[str]:
    return [sys.executable, "-m", "shared.cli", *args]


class Rig:
    """Everything the run starts, and the faults' hands on it. ``close`` stops it all."""

    def __init__(self, home: Path, vehicles: int, window: float, seed: int) -> None:
        self.home, self.vehicles, self.window, self.seed = home, vehicles, window, seed
        self.stack = Stack(free_infra_settings(home / "infra"), quiet=True)
        self.logs = home / "logs"
        self.mirror = Mirror(
            EDGE_ID,
            self.stack.edge.bootstrap,
            self.stack.cloud.bootstrap,
            home / "infra",
            edge_login=self.stack.edge.login(MIRROR_USER),
        )
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.wanted = {"mirrormaker": False, "store": False}
        self.restarts: Counter[str] = Counter()
        self.frozen: list[int] = []
        self.lock = threading.Lock()
        self.acked_log = home / "acked.jsonl"
        self.decisions = home / "decisions.jsonl"
        self.store_root = home / "cloud" / "store"
        self._keeper = threading.Thread(target=self._keep, name="keeper", daemon=True)
        self._closing = threading.Event()
        self.libs: Path | None = None
        self.java = ""

    def _spawn(self, name: str, args: list[str]) -> subprocess.Popen[bytes]:
        self.logs.mkdir(parents=True, exist_ok=True)
        with open(self.logs / f"{name}.log", "ab") as out:
            proc = subprocess.Popen(
                args,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                env={**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"},
            )
        self.procs[name] = proc
        return proc

    def start(self) -> None:
        say(f"Starting edge Kafka, the 3-node cloud Kafka and Mosquitto under {self.home} ...")
        self.libs, self.java = jars.kafka_libs(quiet=True), jars.java_binary()
        self.stack.up(timeout=180)
        # The gateway's own cloud login and ACLs, as an operator adds a gateway.
        self.mirror = replace(self.mirror, cloud_login=self.stack.add_gateway(EDGE_ID))
        key = self.home / "fleet.key"
        signing.ensure_private_key(key, create=True)
        pub = self.home / "fleet.pub"
        signing.write_public_key(signing.load_private_key(key), pub)
        edge_cfg = self.home / "edge.toml"
        # Metrics off (base_port 0): nothing of the gateway needs a fixed port here.
        edge_cfg.write_text(_edge_toml(EDGE_ID, self.stack, self.home / "edge", 0, pub))
        cloud_cfg = self.home / "cloud.toml"
        cloud_cfg.write_text(_cloud_toml(self.stack, self.home / "cloud", 0))
        self.store_args = _python("cloud", "store", "--config", str(cloud_cfg))
        say("Starting MirrorMaker 2, the gateway's services and the store ...")
        self.mirror.start(self.libs, self.java)
        self.wanted["mirrormaker"] = True
        self._spawn("edge", _python("edge", "run", "--config", str(edge_cfg)))
        self._spawn("store", self.store_args)
        self.wanted["store"] = True
        self._keeper.start()
        self.mirror.wait_healthy(timeout=240)
        say(f"Starting {self.vehicles} vehicles for at least {self.window:.0f} s ...")
        self._spawn(
            "sim",
            _python(
                # The run ends the drive (SIGUSR1) when the schedule is done, which a loaded
                # machine delays; the duration only bounds a run left behind.
                "sim",
                "run",
                "--vehicles",
                str(self.vehicles),
                "--duration",
                str(self.window * 2 + 900),
                "--seed",
                str(self.seed),
                "--mqtt",
                self.stack.mqtt.address,
                "--password",
                PASSWORD,
                "--register-with",
                str(self.stack.mqtt.home),
                "--connect-wait",
                "60",
                "--payment-rate",
                "30",
                "--fraud-scale",
                "3",
                "--buffer-dir",
                str(self.home / "sim"),
                "--acked-log",
                str(self.acked_log),
                "--decisions-out",
                str(self.decisions),
                "--linger",
                "900",
                "--summary-json",
                str(self.home / "sim-summary.json"),
            ),
        )

    # --- who runs what ----------------------------------------------------------------

    def service_pid(self, name: str) -> int | None:
        """The pid of the supervisor's child running ``name`` (None between restarts)."""
        sup = self.procs.get("edge")
        if sup is None:
            return None
        for kid in children(sup.pid):
            argv = cmdline(kid)
            if "edge.cli" in argv and name in argv:
                return kid
        return None

    def store_pid(self) -> int | None:
        proc = self.procs.get("store")
        return proc.pid if proc is not None and proc.poll() is None else None

    def _keep(self) -> None:
        """Restart MirrorMaker and the store RESTART_DELAY_S after they die."""
        dead_since: dict[str, float] = {}
        while not self._closing.wait(0.5):
            with self.lock:
                for name, alive in (
                    ("mirrormaker", self.mirror.pid() is not None),
                    ("store", self.store_pid() is not None),
                ):
                    if alive or not self.wanted[name]:
                        dead_since.pop(name, None)
                        continue
                    since = dead_since.setdefault(name, time.monotonic())
                    if time.monotonic() - since < RESTART_DELAY_S:
                        continue
                    if name == "mirrormaker":
                        self.mirror.start(self.libs, self.java)
                    else:
                        self._spawn("store", self.store_args)
                    self.restarts[name] += 1
                    dead_since.pop(name, None)

    def sim_drained(self) -> bool:
        log = self.logs / "sim.log"
        return log.exists() and b"fleet drained" in log.read_bytes()

    def stop_proc(self, name: str, grace: float = 30.0) -> None:
        proc = self.procs.get(name)
        if proc is None or proc.poll() is not None:
            return
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    def close(self) -> None:
        self._closing.set()
        for pid in self.frozen:
            _signal(pid, signal.SIGCONT)
        self.wanted = {k: False for k in self.wanted}
        for name in ("sim", "edge", "store"):
            try:
                self.stop_proc(name)
            except OSError as exc:
                say(f"could not stop {name}: {exc}")
        for stop in (self.mirror.stop, self.stack.down):
            try:
                stop()
            except Exception as exc:  # noqa: BLE001 - stopping the rest matters more
                say(f"could not stop {stop}: {exc}")


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


# --- faults -------------------------------------------------------------------------------


def inject(rig: Rig, f: Fault, rng: random.Random) -> None:
    if f.kind in SERVICES:
        pid = _wait_for(lambda: rig.service_pid(f.kind), 30)
        _kill(f, pid, f"{f.kind} (pid {pid})")
    elif f.kind == "mirrormaker":
        pid = _wait_for(rig.mirror.pid, 30)
        _kill(f, pid, f"MirrorMaker (pid {pid})")
    elif f.kind == "store":
        pid = _wait_for(rig.store_pid, 30)
        _kill(f, pid, f"store (pid {pid})")
    elif f.kind == "edge-kafka":
        pid = _wait_for(lambda: rig.stack.edge.running_pids().get(1), 60)
        _kill(f, pid, f"edge Kafka (pid {pid})")
    elif f.kind == "mosquitto":
        pid = _wait_for(rig.stack.mqtt.pid, 60)
        _kill(f, pid, f"Mosquitto (pid {pid})")
    elif f.kind == "cloud-broker":
        running = rig.stack.cloud.running_pids()
        node = rng.choice(sorted(running))
        _kill(f, running[node], f"cloud broker {node} (pid {running[node]})")
    elif f.kind == "cloud-cut":
        with rig.lock:
            rig.frozen = sorted(rig.stack.cloud.running_pids().values())
            for pid in rig.frozen:
                os.kill(pid, signal.SIGSTOP)
        f.target = f"cloud brokers {rig.frozen} frozen"
    f.injected = time.monotonic()


def _kill(f: Fault, pid: int | None, what: str) -> None:
    if pid is None:
        f.note = "nothing to kill (not running)"
        return
    os.kill(pid, signal.SIGKILL)
    f.target = what


def _wait_for(get: Callable[[], int | None], timeout: float) -> int | None:
    deadline = time.monotonic() + timeout
    while True:
        pid = get()
        if pid is not None or time.monotonic() > deadline:
            return pid
        time.sleep(0.2)


def wait_infra_healthy(rig: Rig, timeout: float) -> float:
    """Until the edge Kafka, Mosquitto and all three cloud brokers answer (the previous
    infrastructure fault has healed: a broker restarted after kill -9 recovers its logs
    first); returns the seconds waited."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if (
            rig.stack.mqtt.healthy()
            and rig.stack.edge.broker_count() == 1
            and rig.stack.cloud.broker_count() == 3
        ):
            break
        time.sleep(1)
    return time.monotonic() - started


def lift(rig: Rig, f: Fault) -> None:
    """End a fault that stays until lifted: start the broker again, unfreeze the cloud."""
    assert rig.libs is not None
    if f.kind == "edge-kafka":
        rig.stack.edge.start(rig.libs, rig.java)
    elif f.kind == "mosquitto":
        rig.stack.mqtt.start()
    elif f.kind == "cloud-broker":
        rig.stack.cloud.start(rig.libs, rig.java)
    elif f.kind == "cloud-cut":
        with rig.lock:
            for pid in rig.frozen:
                _signal(pid, signal.SIGCONT)
            rig.frozen = []
    f.lifted = time.monotonic()


# --- the run ------------------------------------------------------------------------------


@dataclass
class Sample:
    t: float
    counts: dict[str, int] = field(default_factory=dict)


class Monitor(threading.Thread):
    """Counts per stage every second: the recovery clock and the progress lines."""

    def __init__(self, rig: Rig, tails: dict[str, Tail]) -> None:
        super().__init__(name="monitor", daemon=True)
        self.rig, self.tails = rig, tails
        self.samples: list[Sample] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(1.0):
            edge, raw, cloud = self.tails["edge"], self.tails["raw"], self.tails["cloud"]
            counts = {
                "raw": raw.total,
                "anon": edge.family("anon."),
                "scores": edge.family("scores."),
                "cloud": cloud.total,
            }
            counts["store"] = store_files(self.rig.store_root)
            counts["agent"] = self.rig.service_pid("agent") or 0
            self.samples.append(Sample(time.monotonic(), counts))

    def latest(self) -> dict[str, int]:
        return dict(self.samples[-1].counts) if self.samples else {}


def recovery(f: Fault, samples: list[Sample]) -> float | None:
    """Seconds from injection until the hit stage's output grew past its level at the lift
    (for the agent: until a new agent process runs)."""
    if f.injected is None or f.note:
        return None
    lifted = f.lifted if f.lifted is not None else f.injected
    probe = PROBE[f.kind]
    before = [s for s in samples if s.t <= lifted]
    after = [s for s in samples if s.t > lifted]
    if not before:
        return None
    base = before[-1].counts.get(probe, 0)
    for s in after:
        value = s.counts.get(probe, 0)
        if (probe == "agent" and value not in (0, base)) or (probe != "agent" and value > base):
            return round(s.t - f.injected, 1)
    return None


def wait_flowing(rig: Rig, tails: dict[str, Tail], timeout: float) -> float:
    """Until the first acknowledged events have crossed to the cloud; returns when the
    fleet started publishing (the schedule's zero)."""
    deadline = time.monotonic() + timeout
    t0 = None
    while time.monotonic() < deadline:
        if rig.procs["sim"].poll() is not None:
            raise SystemExit(f"the simulator exited early; see {rig.logs / 'sim.log'}")
        if t0 is None and rig.acked_log.exists() and rig.acked_log.stat().st_size > 0:
            t0 = time.monotonic()
            say("the fleet is publishing")
        if t0 is not None and tails["cloud"].total > 0:
            return t0
        time.sleep(0.5)
    raise SystemExit(
        "events did not reach the cloud within "
        f"{timeout:.0f} s of the start; see the logs under {rig.logs}"
    )


def run_faults(
    rig: Rig,
    faults: list[Fault],
    t0: float,
    rng: random.Random,
    monitor: Monitor,
    progress_s: float,
) -> tuple[float, float]:
    """Inject and lift on schedule. An infrastructure fault first waits for the brokers to
    be healthy, and the rest of the schedule slips by that wait. Returns (seconds after t0
    of the last action, when the next progress line is due)."""
    actions = sorted(
        [(f.at, 0, i) for i, f in enumerate(faults)]
        + [(f.lift_at, 1, i) for i, f in enumerate(faults) if f.duration],
        key=lambda a: (a[0], a[1]),
    )
    next_progress = time.monotonic() + progress_s
    last = 0.0
    for n in range(len(actions)):
        at, kind, i = actions[n]
        next_progress = _sleep_until(t0 + at, monitor, t0, rig, next_progress, progress_s)
        f = faults[i]
        if kind == 0 and f.kind in INFRA:
            waited = wait_infra_healthy(rig, timeout=180)
            if waited > 1:
                say(
                    f"[{time.monotonic() - t0:6.1f}s] waited {waited:.0f} s for the brokers "
                    f"to be healthy before {f.kind}; the rest of the schedule slips as much"
                )
                actions[n + 1 :] = [(a + waited, k, idx) for a, k, idx in actions[n + 1 :]]
        last = time.monotonic() - t0
        if kind == 0:
            f.at = round(last, 1)
            inject(rig, f, rng)
            what = f.target or f.note
            down = f" for {f.duration:g} s" if f.duration else ""
            say(f"[{last:6.1f}s] fault {i + 1}/{len(faults)} {f.kind}: {what}{down}")
        else:
            lift(rig, f)
            say(f"[{last:6.1f}s] {f.kind} lifted")
    return last, next_progress


def _sleep_until(
    deadline: float, monitor: Monitor, t0: float, rig: Rig, next_progress: float, progress_s: float
) -> float:
    while time.monotonic() < deadline:
        time.sleep(min(0.2, max(0.0, deadline - time.monotonic())))
        if time.monotonic() >= next_progress:
            say(_progress(monitor, t0, rig))
            next_progress = time.monotonic() + progress_s
    return next_progress


def _progress(monitor: Monitor, t0: float, rig: Rig) -> str:
    c = monitor.latest()
    acked = _count_lines(rig.acked_log)
    return (
        f"[{time.monotonic() - t0:6.1f}s] acked {acked:,} -> raw {c.get('raw', 0):,} -> "
        f"anon {c.get('anon', 0):,} -> scores {c.get('scores', 0):,} -> cloud "
        f"{c.get('cloud', 0):,} -> store files {c.get('store', 0):,}"
    )


def _count_lines(path: Path) -> int:
    if not path.exists():
        return 0
    with open(path, "rb") as fh:
        return sum(chunk.count(b"\n") for chunk in iter(lambda: fh.read(1 << 20), b""))


def read_acked(path: Path) -> tuple[dict[str, tuple[str, str]], dict[str, float], int]:
    """event id -> (vin, stream), event id -> when it was PUBACKed (wall clock), and how
    many ids were acknowledged more than once."""
    acked: dict[str, tuple[str, str]] = {}
    when: dict[str, float] = {}
    repeats = 0
    with open(path, "rb") as fh:
        for line in fh:
            rec = json.loads(line)
            repeats += rec["event_id"] in acked
            acked[rec["event_id"]] = (rec["vin"], rec["stream"])
            when[rec["event_id"]] = rec["ts"]
    return acked, when, repeats


def missing_in(
    acked: dict[str, tuple[str, str]], counts: dict[str, Counter[str]], prefix: str
) -> int:
    return sum(
        1 for eid, (_vin, stream) in acked.items() if not counts[_topic(prefix, stream)].get(eid)
    )


def _topic(prefix: str, stream: str) -> str:
    """``anon`` -> ``anon.telemetry``; ``edge-1.anon`` -> ``edge-1.anon.telemetry``."""
    return f"{prefix}.{stream}"


def wait_drained(
    rig: Rig, tails: dict[str, Tail], acked: dict[str, tuple[str, str]], timeout: float
) -> dict[str, Counter[str]]:
    """Until every stage holds every acknowledged id that reached ``raw.*`` (what never
    reached Kafka cannot come later once ``raw.*`` has stopped growing), or ``timeout``, or
    nothing moved for STALL_S."""
    deadline = time.monotonic() + timeout
    stages = {
        "anon": ("edge", "anon"),
        "scores": ("edge", "scores"),
        "cloud anon": ("cloud", f"{EDGE_ID}.anon"),
        "cloud scores": ("cloud", f"{EDGE_ID}.scores"),
    }
    store: dict[str, Counter[str]] = {}
    next_store = 0.0
    seen, changed, raw_seen, raw_changed = -1, time.monotonic(), -1, time.monotonic()
    while True:
        total = sum(t.total for t in tails.values())
        if total != seen:
            seen, changed = total, time.monotonic()
        if tails["raw"].total != raw_seen:
            raw_seen, raw_changed = tails["raw"].total, time.monotonic()
        raw_left = missing_in(acked, tails["raw"].counts, "raw")
        left = {
            name: missing_in(acked, tails[tail].counts, prefix)
            for name, (tail, prefix) in stages.items()
        }
        if time.monotonic() >= next_store:
            store = store_rows(rig.store_root)
            next_store = time.monotonic() + 15
        left["store anon"] = missing_in(acked, store, "anon")
        left["store scores"] = missing_in(acked, store, "scores")
        if store_files(rig.store_root) != len(list(rig.store_root.rglob("*.parquet"))):
            changed = time.monotonic()  # the store is writing: not stalled
        settled = time.monotonic() - raw_changed > 30 and all(v == raw_left for v in left.values())
        stalled = time.monotonic() - changed > STALL_S
        if settled or time.monotonic() > deadline or stalled:
            say(
                f"drain: raw {raw_left:,} missing, "
                + ", ".join(f"{k} {v:,}" for k, v in left.items())
                + (f" (nothing moved for {STALL_S:.0f} s)" if stalled and not settled else "")
            )
            return store
        time.sleep(3)


def verdict(
    acked: dict[str, tuple[str, str]],
    tails: dict[str, Tail],
    store: dict[str, Counter[str]],
    decisions: Path,
) -> dict[str, Any]:
    stages = {
        RAW_STAGE: (tails["raw"].counts, "raw"),
        "anon.*": (tails["edge"].counts, "anon"),
        "scores.*": (tails["edge"].counts, "scores"),
        "cloud anon.* (MirrorMaker)": (tails["cloud"].counts, f"{EDGE_ID}.anon"),
        "cloud scores.* (MirrorMaker)": (tails["cloud"].counts, f"{EDGE_ID}.scores"),
        "store anon.*": (store, "anon"),
        "store scores.*": (store, "scores"),
    }
    out: dict[str, Any] = {}
    for name, (counts, prefix) in stages.items():
        lost, dup, unacked = [], [], 0
        for eid, (_vin, stream) in acked.items():
            n = counts.get(_topic(prefix, stream), Counter()).get(eid, 0)
            if n == 0:
                lost.append(eid)
            elif n > 1:
                dup.append(eid)
        for stream in STREAMS:
            unacked += sum(1 for eid in counts.get(_topic(prefix, stream), {}) if eid not in acked)
        out[name] = {
            "lost": len(lost),
            "duplicated": len(dup),
            "not_acked": unacked,
            "lost_ids": lost,
            "duplicated_ids": dup,
        }
    received: dict[str, set[str]] = defaultdict(set)
    if decisions.exists():
        for line in decisions.read_text().splitlines():
            rec = json.loads(line)
            if rec.get("decision") == "decline":
                received[rec["event_id"]].add(rec["vin"])
    declined = tails["edge"].declined
    missed = sorted(eid for eid in declined if acked.get(eid, ("", ""))[0] not in received[eid])
    out["decisions"] = {
        "declined": len(declined),
        "received": len(declined) - len(missed),
        "missing": len(missed),
        "missing_ids": missed[:20],
    }
    return out


def table(
    faults: list[Fault], acked: int, result: dict[str, Any], minutes: float, vehicles: int
) -> str:
    lines = [
        f"chaos run: {vehicles} vehicles, {minutes:g} min, {len(faults)} faults injected",
        "",
        f"{'fault':<14}{'count':>6}{'down s':>10}{'recovery s (median / max)':>28}",
    ]
    by_kind: dict[str, list[Fault]] = defaultdict(list)
    for f in faults:
        by_kind[f.kind].append(f)
    for kind, fs in by_kind.items():
        rec = [f.recovered_s for f in fs if f.recovered_s is not None]
        norec = len(fs) - len(rec)
        down = max(f.duration for f in fs)
        rtxt = (f"{statistics.median(rec):.1f} / {max(rec):.1f}" if rec else "-") + (
            f" ({norec} not seen)" if norec else ""
        )
        lines.append(f"{kind:<14}{len(fs):>6}{(f'{down:g}' if down else '-'):>10}{rtxt:>28}")
    lines += [
        "",
        f"events acknowledged: {acked:,}",
        "",
        f"{'stage':<30}{'lost':>8}{'duplicated':>12}{'not acked':>11}",
    ]
    for name, r in result.items():
        if name != "decisions":
            lines.append(f"{name:<30}{r['lost']:>8}{r['duplicated']:>12}{r['not_acked']:>11}")
    d = result["decisions"]
    lines += [
        "",
        f"declined payments: {d['declined']:,}, decision received by the vehicle: "
        f"{d['received']:,}, missing: {d['missing']}",
        "",
        "each fault (seconds after the fleet started; recovery from injection):",
    ]
    for f in faults:
        took = "not seen" if f.recovered_s is None else f"{f.recovered_s:.1f}"
        lines.append(
            f"  {f.at:7.1f}  {f.kind:<13} {f.target or f.note}"
            + (f", down {f.duration:g} s" if f.duration else "")
            + f"; recovery {took}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--minutes", type=float, default=20.0, help="How long the fleet publishes.")
    ap.add_argument("--vehicles", type=int, default=200)
    ap.add_argument("--seed", type=int, default=1, help="Fixes the schedule and the fleet.")
    ap.add_argument(
        "--kills",
        type=int,
        default=6,
        help="kill -9 of each of bridge, enricher, scorer, agent, MirrorMaker, store.",
    )
    ap.add_argument("--edge-kafka", type=int, default=2, help="Edge Kafka kills (+ restart).")
    ap.add_argument("--mosquitto", type=int, default=2, help="Mosquitto kills (+ restart).")
    ap.add_argument("--cloud-brokers", type=int, default=1, help="Cloud broker stops.")
    ap.add_argument(
        "--broker-down", type=float, default=60.0, help="Seconds a cloud broker stays down."
    )
    ap.add_argument("--cuts", type=int, default=1, help="Gateway-cloud cuts.")
    ap.add_argument("--outage", type=float, default=300.0, help="Seconds of each cut.")
    ap.add_argument(
        "--recover-gap",
        type=float,
        default=30.0,
        help="Seconds after an infrastructure fault before the next one.",
    )
    ap.add_argument(
        "--drain-timeout",
        type=float,
        default=600.0,
        help="Seconds to wait after the fleet stops for every stage to catch up.",
    )
    ap.add_argument(
        "--home", type=Path, help="Keep everything here (default: a temp dir, removed at the end)."
    )
    ap.add_argument("--json-out", type=Path, help="Also write the figures as JSON here.")
    args = ap.parse_args(argv)
    window = args.minutes * 60
    rng = random.Random(args.seed)
    faults = plan(
        rng,
        window,
        args.kills,
        args.edge_kafka,
        args.mosquitto,
        args.cloud_brokers,
        args.cuts,
        args.broker_down,
        args.outage,
        args.recover_gap,
    )
    say(
        f"fault schedule (seed {args.seed}): "
        + ", ".join(
            f"{f.at:.0f}s {f.kind}" + (f" {f.duration:g}s" if f.duration else "") for f in faults
        )
    )
    with tempfile.TemporaryDirectory(prefix="fleetsentry-chaos-") as tmp:
        home = args.home or Path(tmp)
        home.mkdir(parents=True, exist_ok=True)
        rig = Rig(home, args.vehicles, window, args.seed)
        previous = signal.signal(signal.SIGTERM, _interrupt)
        try:
            return _run(rig, faults, rng, args, window)
        except KeyboardInterrupt:
            say("interrupted; stopping everything")
            return 2
        finally:
            rig.close()
            signal.signal(signal.SIGTERM, previous)


def _interrupt(_sig: int, _frame: Any) -> None:
    raise KeyboardInterrupt


def make_tails(rig: Rig, suffix: str) -> dict[str, Tail]:
    edge = rig.stack.edge.login()
    names = [
        topics.ANON_TELEMETRY,
        topics.ANON_PAYMENTS,
        topics.SCORES_TELEMETRY,
        topics.SCORES_PAYMENTS,
    ]
    return {
        "raw": Tail(
            f"raw{suffix}",
            edge,
            [topics.RAW_TELEMETRY, topics.RAW_PAYMENTS],
            rig.logs / f"tail-raw{suffix}.log",
        ),
        "edge": Tail(f"edge{suffix}", edge, names, rig.logs / f"tail-edge{suffix}.log"),
        "cloud": Tail(
            f"cloud{suffix}",
            rig.stack.cloud.login(ADMIN_USER),
            [rig.mirror.cloud_topic(t) for t in names],
            rig.logs / f"tail-cloud{suffix}.log",
        ),
    }


def _run(
    rig: Rig, faults: list[Fault], rng: random.Random, args: argparse.Namespace, window: float
) -> int:
    started = time.monotonic()
    rig.start()
    tails = make_tails(rig, "")
    for tail in tails.values():
        tail.start()
    monitor = Monitor(rig, tails)
    monitor.start()
    t0 = wait_flowing(rig, tails, timeout=300)
    say(f"start-up took {t0 - started:.0f} s; the faults begin")
    try:
        last, next_progress = run_faults(rig, faults, t0, rng, monitor, progress_s=30.0)
        # The fleet drives for the whole schedule, however far it slipped.
        end = max(window, last + args.recover_gap)
        next_progress = _sleep_until(t0 + end, monitor, t0, rig, next_progress, 30.0)
        rig.procs["sim"].send_signal(signal.SIGUSR1)
        say(f"[{time.monotonic() - t0:6.1f}s] the fleet's drive ends")
        while not rig.sim_drained():
            if rig.procs["sim"].poll() is not None:
                raise SystemExit(f"the simulator exited; see {rig.logs / 'sim.log'}")
            if time.monotonic() - t0 > end + 300:
                raise SystemExit("the fleet did not drain within 5 minutes of its end")
            if time.monotonic() >= next_progress:
                say(_progress(monitor, t0, rig))
                next_progress = time.monotonic() + 30.0
            time.sleep(1)
        say(
            f"[{time.monotonic() - t0:6.1f}s] the fleet has stopped and drained; "
            "waiting for every stage to catch up ..."
        )
        acked, when, repeats = read_acked(rig.acked_log)
        store = wait_drained(rig, tails, acked, args.drain_timeout)
        time.sleep(10)  # anything late (a duplicate) would show now
        rig.stop_proc("sim")  # the vehicles' decisions are written as it ends
        rig.wanted["store"] = False
        rig.stop_proc("store")
        store = store_rows(rig.store_root)
    finally:
        monitor.stop.set()
        for tail in tails.values():
            tail.stop.set()
    # The verdict reads everything again with fresh consumers: what any reader gets now.
    say("reading every stage back for the verdict ...")
    final = {name: tail.read_to_end() for name, tail in make_tails(rig, "-final").items()}
    for name, tail in final.items():
        if tail.errors:
            say(f"reading {name} back met errors: {dict(tail.errors)}")
    tails = final
    for f in faults:
        f.recovered_s = recovery(f, monitor.samples)
    t0_wall = time.time() - (time.monotonic() - t0)
    return report(
        args,
        faults,
        acked,
        when,
        repeats,
        verdict(acked, tails, store, rig.decisions),
        t0,
        t0_wall,
        dict(rig.restarts),
    )


def blame(
    ids: list[str], when: dict[str, float], faults: list[Fault], t0: float, t0_wall: float
) -> dict[str, int]:
    """Lost or duplicated ids by the faults injected in the BLAME_S seconds before their
    PUBACK (a restarted broker or service takes a while to settle)."""
    out: Counter[str] = Counter()
    injected = sorted((f.injected - t0, f) for f in faults if f.injected is not None)
    for eid in ids:
        at = when[eid] - t0_wall
        near = [f"{f.kind} at {f.at:.0f}s" for t, f in injected if at - BLAME_S <= t <= at]
        out[" + ".join(near) or f"no fault in the {BLAME_S:.0f} s before"] += 1
    return dict(out.most_common())


def report(
    args: argparse.Namespace,
    faults: list[Fault],
    acked: dict[str, tuple[str, str]],
    when: dict[str, float],
    repeats: int,
    result: dict[str, Any],
    t0: float,
    t0_wall: float,
    restarts: dict[str, int],
) -> int:
    # raw.* is at least once by design (the enricher drops its duplicates): a duplicate
    # there is no fault, and what is lost there is lost everywhere after it.
    judged = {k: r for k, r in result.items() if k not in ("decisions", RAW_STAGE)}
    lost = sorted(set().union(*(r["lost_ids"] for r in judged.values())))
    dup = sorted(set().union(*(r["duplicated_ids"] for r in judged.values())))
    say("")
    say(table(faults, len(acked), result, args.minutes, args.vehicles))
    for what, ids in (("lost", lost), ("duplicated", dup)):
        if ids:
            times = sorted(when[e] - t0_wall for e in ids)
            say(
                f"{what}: {len(ids)} event ids, PUBACKed between {times[0]:.1f}s and "
                f"{times[-1]:.1f}s; by the faults in the {BLAME_S:.0f} s before their PUBACK: "
                f"{blame(ids, when, faults, t0, t0_wall)}; e.g. {ids[:5]}"
            )
    for r in result.values():
        for key in ("lost_ids", "duplicated_ids", "missing_ids"):
            if key in r:
                r[key] = r[key][:50]
    missing = result["decisions"]["missing"]
    figures = {
        "vehicles": args.vehicles,
        "minutes": args.minutes,
        "seed": args.seed,
        "acked": len(acked),
        "acked_twice": repeats,
        "lost": len(lost),
        "duplicated": len(dup),
        "decisions_missing": missing,
        "faults_by_kind": dict(Counter(f.kind for f in faults)),
        "restarts_by_harness": restarts,
        "stages": result,
        "lost_by_fault": blame(lost, when, faults, t0, t0_wall),
        "duplicated_by_fault": blame(dup, when, faults, t0, t0_wall),
        "faults": [asdict(f) for f in faults],
    }
    say(json.dumps({k: v for k, v in figures.items() if k not in ("stages", "faults")}))
    if args.json_out:
        args.json_out.write_text(json.dumps(figures, indent=2) + "\n")
    bad = lost or dup or missing
    say(
        ("FAILED: " if bad else "OK: ") + f"{len(lost)} lost, {len(dup)} duplicated, "
        f"{missing} decisions missing"
    )
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
