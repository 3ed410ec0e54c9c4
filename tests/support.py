"""Helpers the test tiers share: free-port infra settings, Kafka read/write shortcuts, a
small disk, killing and restarting the edge Kafka, a publishing fleet, tailing anon.telemetry
and reconciling it with what the fleet published."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple

import msgspec
import paho.mqtt.client as mqtt
import pytest
from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    Message,
    Producer,
    TopicPartition,
)

from shared import topics
from shared.infra import jars
from shared.infra.mirror import Mirror
from shared.infra.ports import free_ports, is_free, port_range
from shared.infra.stack import InfraSettings, Stack
from shared.kafka_config import Target, client_config
from tests.bridge_payloads import encode, telemetry
from tests.bridge_support import mqtt_client


def free_infra_settings(home: Path, cloud_nodes: int = 3) -> InfraSettings:
    """Settings on ports the OS says are free, so two test runs side by side do not clash.

    ``cloud_nodes``: the cloud Kafka's, three as `infra up` makes it. Tests of the loop
    rather than of the cluster ask for one (TLS, SCRAM and ACLs are the same on one node,
    and three cost three JVMs for the length of the module).
    """
    p = free_ports(3 + 2 * cloud_nodes)
    return InfraSettings(
        home=home,
        edge_port=p[0],
        edge_controller_port=p[1],
        mqtt_port=p[2],
        cloud_ports=p[3 : 3 + cloud_nodes],
        cloud_controller_ports=p[3 + cloud_nodes :],
        kafka_heap="384m",
    )


def planned_ports(settings: InfraSettings) -> set[int]:
    """The ports ``settings`` plan for the stack (free until it binds them)."""
    return {
        settings.edge_port,
        settings.edge_controller_port,
        settings.mqtt_port,
        *settings.cloud_ports,
        *settings.cloud_controller_ports,
    }


def free_metrics_base(planned: set[int], services: int) -> int:
    """A metrics base port with base + 0 .. services - 1 all free, in this worker's port slice
    (another worker's may take a port past it), and none of them one of the ports
    ``planned`` for the stack: those are not bound yet, so they look free."""
    high = port_range()[1]
    for _ in range(200):
        base = free_ports(1)[0]
        span = range(base, base + services)
        if (
            span[-1] < high
            and planned.isdisjoint(span)
            and all(is_free("127.0.0.1", port) for port in span[1:])
        ):
            return base
    raise AssertionError(f"no {services} free consecutive ports for the metrics")


def kafka_table(target: Target) -> dict[str, object]:
    """``target`` as the [kafka] table of an edge.toml (a dict for msgspec.convert)."""
    if isinstance(target, str):
        return {"bootstrap": target, "username": ""}
    table: dict[str, object] = msgspec.to_builtins(target, enc_hook=str)
    return {k: v for k, v in table.items() if v is not None}  # TOML has no null


def producer(bootstrap: Target, **extra: object) -> Producer:
    return Producer(
        client_config(
            bootstrap, {"enable.idempotence": True, "acks": "all", "linger.ms": 5, **extra}
        )
    )


def produce_all(
    bootstrap: Target, topic: str, records: Iterable[tuple[bytes | None, bytes | None]]
) -> int:
    """Produce and wait for every delivery report; raises on any delivery error."""
    errors: list[KafkaError] = []
    p = producer(bootstrap)
    n = 0
    for key, value in records:
        p.produce(
            topic,
            value=value,
            key=key,
            on_delivery=lambda err, msg: errors.append(err) if err else None,
        )
        p.poll(0)
        n += 1
    remaining = p.flush(30)
    assert remaining == 0, f"{remaining} messages not delivered"
    assert not errors, errors
    return n


def consume_all(
    bootstrap: Target,
    topic: str,
    expect: int | None = None,
    timeout: float = 30.0,
    idle: float = 3.0,
    isolation: str = "read_committed",
) -> list:
    """Read ``topic`` from the beginning until ``expect`` messages (or ``idle`` s of quiet)."""
    c = Consumer(
        client_config(
            bootstrap,
            {
                "group.id": f"test-{uuid.uuid4()}",
                "auto.offset.reset": "earliest",
                "enable.auto.commit": False,
                "isolation.level": isolation,
            },
        )
    )
    meta = c.list_topics(topic, timeout=10)
    parts = [TopicPartition(topic, p, 0) for p in meta.topics[topic].partitions]
    c.assign(parts)
    out: list[Any] = []
    deadline = time.monotonic() + timeout
    last = time.monotonic()
    try:
        while time.monotonic() < deadline:
            if expect is not None and len(out) >= expect:
                break
            if expect is None and time.monotonic() - last > idle:
                break
            msg = c.poll(0.2)
            if msg is None or msg.error():
                continue
            out.append(msg)
            last = time.monotonic()
    finally:
        c.close()
    return out


def value_of(msg: Message) -> bytes:
    """A consumed record's value. The topics tests read carry no tombstones: None fails."""
    value = msg.value()
    assert value is not None, f"no value at {msg.topic()} [{msg.partition()}] @ {msg.offset()}"
    return value


@contextmanager
def tmpfs(mount: Path, size_mb: int) -> Iterator[Path]:
    """A size-limited filesystem of the test's own at ``mount`` (root), unmounted after.

    Skips where it cannot be made (not root, no mount): a full-disk test needs a real one."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("needs root to mount a tmpfs")
    mount.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def kill_edge_kafka(stack: Stack) -> None:
    for pid in stack.edge.running_pids().values():
        os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 20
    while stack.edge.running_pids() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not stack.edge.running_pids(), "edge Kafka did not die"


def start_edge_kafka(stack: Stack) -> None:
    stack.edge.start(jars.kafka_libs(quiet=True), jars.java_binary())
    stack.edge.wait_healthy(120)


class Fleet:
    """Vehicles ``<vin_prefix>0000000000000``... publishing telemetry to Mosquitto at QoS 1,
    each event under an id of its own (``<tag>-<n>``).

    ``start`` publishes ``rate_per_s`` events a second, ``batch`` at a time, from a thread of
    its own until ``stop``; ``publish`` sends events from the caller's thread. Leaving the
    ``with`` block stops the thread and disconnects."""

    def __init__(
        self,
        stack: Stack,
        vin_prefix: str,
        vehicles: int,
        rate_per_s: float = 0.0,
        batch: int = 20,
    ) -> None:
        self.vins = [f"{vin_prefix}{n:013d}" for n in range(vehicles)]
        self.tag = uuid.uuid4().hex[:8]
        self.rate_per_s = rate_per_s
        self.batch = batch
        self.infos: list[tuple[mqtt.MQTTMessageInfo, str]] = []
        self.started = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._drive, daemon=True)
        self.client = mqtt_client(stack, f"fleet-{uuid.uuid4().hex[:6]}")

    def __enter__(self) -> Fleet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def sent(self) -> int:
        return len(self.infos)

    def publish(self, n: int) -> None:
        """Publish the next ``n`` events, the vehicles in turn."""
        for _ in range(n):
            sent = len(self.infos)
            vin, eid = self.vins[sent % len(self.vins)], f"{self.tag}-{sent}"
            info = self.client.publish(
                f"fleet/{vin}/telemetry", encode(telemetry(vin, eid, time.time())), qos=1
            )
            self.infos.append((info, eid))

    def start(self) -> None:
        self.started = time.monotonic()
        self._thread.start()

    def _drive(self) -> None:
        while not self._stop.is_set():
            if self.sent >= self.rate_per_s * (time.monotonic() - self.started):
                time.sleep(0.02)
                continue
            self.publish(self.batch)

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(10)

    def acked(self, last: int = 500, wait: float = 30.0) -> set[str]:
        """The ids of the events Mosquitto acknowledged (PUBACK), after waiting up to ``wait`` s
        for the ``last`` most recent to be."""
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and not all(
            info.is_published() for info, _ in self.infos[-last:]
        ):
            time.sleep(0.2)
        return {eid for info, eid in self.infos if info.is_published()}

    def reconcile(self, tail: AnonTail, timeout: float) -> Tally:
        """Stop publishing, then wait up to ``timeout`` s for ``tail`` to have read every event
        Mosquitto acknowledged."""
        self.stop()
        acked = self.acked()
        lost, duplicated = settle(tail, acked, timeout)
        return Tally(self.sent, acked, len(tail.seen), lost, duplicated)

    def close(self) -> None:
        self.stop()
        self.client.disconnect()
        self.client.loop_stop()


class Tally(NamedTuple):
    """A fleet's events: how many it sent, the ids Mosquitto acknowledged, how many ids
    anon.telemetry holds, the acknowledged ones it lacks and its copies beyond the first."""

    sent: int
    acked: set[str]
    read: int
    lost: set[str]
    duplicated: int

    def __str__(self) -> str:
        return (
            f"sent {self.sent}, acknowledged {len(self.acked)}, in anon.telemetry "
            f"{self.read}: lost {len(self.lost)}, duplicated {self.duplicated}"
        )


class _EventId(msgspec.Struct):
    event_id: str


class AnonTail(threading.Thread):
    """Reads anon.telemetry as it is committed, so retention later cannot hide a record."""

    def __init__(self, target: Target) -> None:
        super().__init__(daemon=True)
        self.target = target
        self.seen: Counter[str] = Counter()
        self.errors: list[str] = []
        self.stop = threading.Event()

    def run(self) -> None:
        c = Consumer(
            client_config(
                self.target,
                {
                    "group.id": f"tail-{uuid.uuid4().hex[:8]}",
                    "enable.auto.commit": False,
                    "isolation.level": "read_committed",
                    "log_level": 0,
                },
            )
        )
        c.assign([TopicPartition(topics.ANON_TELEMETRY, p, OFFSET_BEGINNING) for p in range(3)])
        decoder = msgspec.json.Decoder(_EventId)
        try:
            while not self.stop.is_set():
                for msg in c.consume(5000, 0.3):
                    if msg.error():
                        self.errors.append(str(msg.error()))
                        continue
                    self.seen[decoder.decode(msg.value() or b"").event_id] += 1
        finally:
            c.close()

    def __enter__(self) -> AnonTail:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.stop.set()
        self.join(10)


def settle(
    tail: AnonTail, acked: set[str], timeout: float, poll: float = 1.0
) -> tuple[set[str], int]:
    """Wait up to ``timeout`` s for ``tail`` to have read every event id in ``acked``.

    Returns the ids it has not read (lost) and how many copies beyond the first it read of
    any id (duplicated)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not acked <= set(tail.seen):
        time.sleep(poll)
    counts = list(tail.seen.values())
    return acked - set(tail.seen), sum(n - 1 for n in counts if n > 1)


@contextmanager
def refusing_large_records(bootstrap: Target, topic: str, max_bytes: int = 256) -> Iterator[None]:
    """``topic`` refuses record batches over ``max_bytes`` inside the block (a broker-side
    produce failure: the transaction that wrote one can only be aborted), as it was after."""
    from confluent_kafka.admin import AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource

    admin = AdminClient(client_config(bootstrap))

    def alter(op: AlterConfigOpType, value: str = "") -> None:
        entry = ConfigEntry("max.message.bytes", value, incremental_operation=op)
        res = ConfigResource(ConfigResource.Type.TOPIC, topic, incremental_configs=[entry])
        admin.incremental_alter_configs([res])[res].result(30)

    alter(AlterConfigOpType.SET, str(max_bytes))
    time.sleep(1.0)  # the change reaches the partition leaders a moment after the controller
    try:
        yield
    finally:
        alter(AlterConfigOpType.DELETE)
        time.sleep(1.0)


@contextmanager
def mirrors_healed(mirrors: Iterable[Mirror], interval: float = 10.0) -> Iterator[list[str]]:
    """While in the block, restart any of ``mirrors`` whose task Connect killed
    (``Mirror.heal``), as the demo does; yields the list of what was healed (printed too)."""
    healed: list[str] = []
    done = threading.Event()
    watched = list(mirrors)

    def watch() -> None:
        while not done.wait(interval):
            for mm in watched:
                try:
                    failed = mm.heal()
                except Exception as exc:  # noqa: BLE001 - the test's own checks judge the run
                    print(f"{mm.edge_id}'s MirrorMaker could not be healed: {exc}")
                    continue
                for name, error in failed.items():
                    print(f"{mm.edge_id}'s MirrorMaker restarted: {name} had failed ({error})")
                    healed.append(f"{mm.edge_id}: {name}")

    t = threading.Thread(target=watch, name="mirrors-healed", daemon=True)
    t.start()
    try:
        yield healed
    finally:
        done.set()
        t.join(60)
