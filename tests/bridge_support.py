"""Run bridge processes against a Stack and read back what they produced (tests and bench)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterable
from pathlib import Path

import msgspec
import paho.mqtt.client as mqtt
import tomli_w
from confluent_kafka import Consumer, TopicPartition
from paho.mqtt.enums import CallbackAPIVersion

from edge import config as edge_config
from edge.dlq import DeadLetters
from shared import contracts
from shared.infra.mosquitto import ADMIN_USER
from shared.infra.stack import Stack
from shared.kafka_config import Target, client_config

ROOT = Path(__file__).resolve().parents[1]


def write_edge_toml(path: Path, stack: Stack, edge_id: str, group: str, extra: str = "") -> Path:
    """An edge.toml pointing at ``stack`` with its own edge id and subscription group;
    ``extra`` is TOML text added as given (lines of the [bridge] table, then more tables)."""
    path.write_text(
        tomli_w.dumps(
            {
                "edge_id": edge_id,
                "data_dir": str(path.parent / "data"),
                "kafka": {
                    "bootstrap": stack.edge.bootstrap,
                    "credentials_file": str(stack.edge.credentials_path),
                },
                "mqtt": {
                    "host": stack.mqtt.host,
                    "port": stack.mqtt.port,
                    "credentials_file": str(stack.mqtt.credentials_path),
                },
                "metrics": {"base_port": 0},
                "bridge": {"group": group},
            }
        )
        + extra
    )
    return path


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


class BridgeProcess:
    """``fleetsentry edge bridge`` as a child process (stdout/stderr to a log file)."""

    def __init__(
        self, config: Path, instance: int = 0, metrics_port: int = 0, log: Path | None = None
    ) -> None:
        self.config = config
        self.instance = instance
        self.metrics_port = metrics_port
        self.log = log or config.with_name(f"bridge-{instance}.log")
        self.proc: subprocess.Popen[bytes] | None = None
        self._log_offset = 0

    def start(self) -> BridgeProcess:
        argv = [
            sys.executable,
            "-m",
            "edge.cli",
            "bridge",
            "--config",
            str(self.config),
            "--instance",
            str(self.instance),
            "--metrics-port",
            str(self.metrics_port),
        ]
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        # A restarted bridge appends to the same log: only look at what this run writes.
        self._log_offset = self.log.stat().st_size if self.log.exists() else 0
        with open(self.log, "ab") as fh:
            self.proc = subprocess.Popen(argv, stdout=fh, stderr=subprocess.STDOUT, env=env)
        return self

    def wait_connected(self, timeout: float = 60.0) -> None:
        """Until the log says the bridge holds its MQTT session (its subscription exists)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"bridge exited: {self.log.read_text()[-3000:]}")
            if self.log.exists() and "connected as" in self._log_text():
                return
            time.sleep(0.1)
        raise AssertionError(f"bridge did not connect: {self.log.read_text()[-3000:]}")

    def _log_text(self) -> str:
        with open(self.log, "rb") as fh:
            fh.seek(self._log_offset)
            return fh.read().decode(errors="replace")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self, timeout: float = 20.0) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def scrape(self) -> str:
        with urllib.request.urlopen(
            f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5
        ) as resp:
            text: str = resp.read().decode()
        return text


def mqtt_client(
    stack: Stack,
    client_id: str,
    user: str = ADMIN_USER,
    password: str | None = None,
    **kwargs: object,
) -> mqtt.Client:
    """A connected MQTT 5 client (network loop started)."""
    if password is None:
        password = json.loads(stack.mqtt.credentials_path.read_text())[user]
    c = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=mqtt.MQTTv5,
        **kwargs,  # type: ignore[arg-type]
    )
    c.username_pw_set(user, password)
    c.max_inflight_messages_set(1000)
    c.max_queued_messages_set(0)
    c.connect(stack.mqtt.host, stack.mqtt.port, 30)
    c.loop_start()
    return c


def publish_all(
    client: mqtt.Client, messages: Iterable[tuple[str, bytes]], timeout: float = 60.0
) -> int:
    """Publish QoS 1 and wait until the broker acknowledged every message."""
    infos = [client.publish(topic, payload, qos=1) for topic, payload in messages]
    deadline = time.monotonic() + timeout
    for info in infos:
        info.wait_for_publish(max(0.1, deadline - time.monotonic()))
        assert info.is_published(), "broker did not acknowledge a publish in time"
    return len(infos)


def drop_session(stack: Stack, client_id: str, user: str = "fleetsentry-bridge") -> None:
    """End a bridge's persistent session so the broker stops queueing for it."""
    creds = json.loads(stack.mqtt.credentials_path.read_text())
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    c.username_pw_set(user, creds[user])
    c.connect(stack.mqtt.host, stack.mqtt.port, 30, clean_start=True)
    c.loop_start()
    time.sleep(0.3)
    c.disconnect()
    c.loop_stop()


def read_topic(
    bootstrap: Target, topic: str, done: object = None, timeout: float = 60.0, idle: float = 5.0
) -> list:
    """Every record of ``topic`` from the start until ``done(records)`` or ``idle`` s quiet."""
    c = Consumer(
        client_config(
            bootstrap,
            {
                "group.id": unique("read"),
                "auto.offset.reset": "earliest",
                "enable.auto.commit": False,
            },
        )
    )
    meta = c.list_topics(topic, timeout=10)
    c.assign([TopicPartition(topic, p, 0) for p in meta.topics[topic].partitions])
    out: list = []
    deadline = time.monotonic() + timeout
    last = time.monotonic()
    try:
        while time.monotonic() < deadline:
            if callable(done) and done(out):
                break
            if time.monotonic() - last > idle and not callable(done):
                break
            for msg in c.consume(1000, 0.2):
                if not msg.error():
                    out.append(msg)
                    last = time.monotonic()
    finally:
        c.close()
    return out


def dead_letters(config: Path) -> DeadLetters:
    """What opens the dead letters of the gateway ``config`` describes (after a bridge ran)."""
    return DeadLetters.load(edge_config.load(config), create=False)


def vehicle_letters(
    letters: DeadLetters, vin: str, records: list
) -> dict[bytes, contracts.DeadLetter]:
    """The dead letters of one vehicle among ``records`` of dlq.ingest, by opened payload.

    Letters name the vehicle only by its token and carry the payload sealed."""
    token = letters.mqtt_source(f"fleet/{vin}/telemetry".encode())[1]
    out = {}
    for rec in records:
        if rec.key() == token:
            letter = msgspec.json.decode(rec.value(), type=contracts.DeadLetter)
            out[letters.open(letter)] = letter
    return out


class BridgeGateway:
    """One bridge process with its own edge id and share group; its session dropped on close."""

    def __init__(
        self, stack: Stack, tmp: Path, extra: str = "", metrics: bool = False, prefix: str = "gw"
    ) -> None:
        from shared.infra.ports import free_ports

        self.stack = stack
        self.edge_id = unique(prefix)
        self.group = unique("g")
        self.config = write_edge_toml(
            tmp / "edge.toml", stack, self.edge_id, self.group, extra=extra
        )
        self.metrics_port = free_ports(1)[0] if metrics else 0
        self.bridge = BridgeProcess(self.config, 0, self.metrics_port)

    def start(self) -> BridgeProcess:
        self.bridge.start().wait_connected()
        return self.bridge

    def close(self) -> None:
        self.bridge.stop()
        drop_session(self.stack, f"{self.edge_id}-bridge-0")
