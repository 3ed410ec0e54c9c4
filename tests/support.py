"""Helpers the test tiers share: free-port infra settings and Kafka read/write shortcuts."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import msgspec
import pytest
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition

from shared.infra.ports import free_ports
from shared.infra.stack import InfraSettings
from shared.kafka_config import Target, client_config


def free_infra_settings(home: Path) -> InfraSettings:
    """Settings on ports the OS says are free, so two test runs side by side do not clash."""
    p = free_ports(9)
    return InfraSettings(home=home, edge_port=p[0], edge_controller_port=p[1], mqtt_port=p[2],
                         cloud_ports=p[3:6], cloud_controller_ports=p[6:9], kafka_heap="384m")


def kafka_table(target: Target) -> dict[str, object]:
    """``target`` as the [kafka] table of an edge.toml (a dict for msgspec.convert)."""
    if isinstance(target, str):
        return {"bootstrap": target, "username": ""}
    table: dict[str, object] = msgspec.to_builtins(target, enc_hook=str)
    return {k: v for k, v in table.items() if v is not None}  # TOML has no null


def producer(bootstrap: Target, **extra: object) -> Producer:
    return Producer(client_config(bootstrap, {"enable.idempotence": True, "acks": "all",
                                              "linger.ms": 5, **extra}))


def produce_all(bootstrap: Target, topic: str, records: Iterable[tuple[bytes | None, bytes]]) -> int:
    """Produce and wait for every delivery report; raises on any delivery error."""
    errors: list[KafkaError] = []
    p = producer(bootstrap)
    n = 0
    for key, value in records:
        p.produce(topic, value=value, key=key,
                  on_delivery=lambda err, msg: errors.append(err) if err else None)
        p.poll(0)
        n += 1
    remaining = p.flush(30)
    assert remaining == 0, f"{remaining} messages not delivered"
    assert not errors, errors
    return n


def consume_all(bootstrap: Target, topic: str, expect: int | None = None, timeout: float = 30.0,
                idle: float = 3.0, isolation: str = "read_committed") -> list:
    """Read ``topic`` from the beginning until ``expect`` messages (or ``idle`` s of quiet)."""
    c = Consumer(client_config(bootstrap, {
        "group.id": f"test-{uuid.uuid4()}", "auto.offset.reset": "earliest",
        "enable.auto.commit": False, "isolation.level": isolation}))
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


@contextmanager
def tmpfs(mount: Path, size_mb: int) -> Iterator[Path]:
    """A size-limited filesystem of the test's own at ``mount`` (root), unmounted after.

    Skips where it cannot be made (not root, no mount): a full-disk test needs a real one."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("needs root to mount a tmpfs")
    mount.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs",
                           str(mount)], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)
