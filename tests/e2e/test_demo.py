"""``fleetsentry demo``, shortened, closes the loop it promises.

The demo runs as a user runs it (the same command, shorter: fewer vehicles, a shorter drive):
two gateways, each its own edge Kafka, Mosquitto, MirrorMaker 2 and ``fleetsentry edge run``;
the 3-node cloud Kafka, the store and ``fleetsentry cloud run``; a simulated fleet per gateway,
the second one joined by a new vehicle model part way through. From what it prints and from
the cloud Kafka: labels reach the cloud while the fleets drive, the drift on gateway 2 starts a
training run, the challenger is promoted, both gateways' agents report it active, and no run
fails.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator

import pytest

from shared import topics
from shared.contracts import Label, ModelStatus, decode
from shared.kafka_config import ADMIN_USER, KafkaSettings
from tests.demo_support import demo_command, demo_ports
from tests.support import consume_all

pytestmark = pytest.mark.integration

VEHICLES = 60
DURATION_S = 300.0


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, KafkaSettings]]:
    """(what the demo printed, the cloud's admin login)."""
    home = tmp_path_factory.mktemp("demo-home")
    ports = demo_ports()
    cmd = demo_command(
        home, ports, "--vehicles", str(VEHICLES), "--duration", str(DURATION_S), "--interval", "20"
    )
    out = home / "demo.out"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    try:
        with open(out, "wb") as f:
            proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env)
            try:
                proc.wait(timeout=1200)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                raise AssertionError(
                    "the demo did not finish in 20 minutes:\n" + out.read_text()[-5000:]
                ) from None
        text = out.read_text()
        print(text)
        assert proc.returncode == 0, text[-5000:]
        # The cloud as its admin sees it (TLS, the node's PLAIN login `infra up` made).
        yield (
            text,
            KafkaSettings(
                bootstrap=",".join(f"127.0.0.1:{p}" for p in ports.cloud),
                username=ADMIN_USER,
                mechanism="PLAIN",
                credentials_file=home / "cloud-kafka" / "credentials.json",
                ca_file=home / "cloud-kafka" / "tls" / "ca.pem",
            ),
        )
    finally:
        # Both homes at once: each `infra down` can wait out its brokers' shutdown.
        downs = [
            subprocess.Popen(
                [sys.executable, "-m", "shared.cli", "infra", "down", "--home", str(h)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for h in (home, home / "gateway-2")
        ]
        for down in downs:
            try:
                down.wait(timeout=180)
            except subprocess.TimeoutExpired:
                down.kill()
                down.wait()


def _cloud_labels(text: str, before: str) -> list[int]:
    """The demo's summary counts of labels in the cloud, printed before ``before``."""
    head = text.split(before, 1)[0]
    return [int(n) for n in re.findall(r"cloud: labels (\d+),", head)]


@pytest.mark.timeout(1500)
def test_the_demo_closes_the_loop(demo_run: tuple[str, KafkaSettings]) -> None:
    text, cloud = demo_run
    assert "the fleets have stopped" in text
    # Labels reach the cloud while the fleets drive, not only when they stop.
    during = _cloud_labels(text, "the fleets have stopped")
    assert during and max(during) > 0, "no labels reached the cloud while the fleets drove"
    # The drift on gateway 2 is seen and named.
    drift = re.search(r"drift detected \(telemetry\): (.*)", text)
    assert drift and "edge-2" in drift.group(1), text
    assert "edge-1: alert rate" not in drift.group(1), "gateway 1's fleet did not drift"
    promoted = re.search(r"run #(\d+) \(telemetry\): challenger (\S+) trained .* -> PROMOTED", text)
    assert promoted, text
    version = promoted.group(2)
    for edge in ("edge-1", "edge-2"):
        assert re.search(rf"{edge} agent, telemetry: {re.escape(version)} active", text), (
            f"{edge} did not report {version} active"
        )
        assert re.search(rf"{edge} runs: telemetry {re.escape(version)}", text), text
    assert "failed" not in re.findall(r"-> (\w+)", text)
    closing = re.search(
        r"training runs: (\d+) \((\d+) promoted, (\d+) kept the champion, "
        r"(\d+) failed\)",
        text,
    )
    assert closing and int(closing.group(2)) >= 1 and closing.group(4) == "0", text

    # From the cloud Kafka itself: labels, the published model, both agents active on it.
    labels = [
        decode(Label, m.value()) for m in consume_all(cloud, topics.LABELS, timeout=60, idle=5)
    ]
    assert labels and max(during) <= len(labels)
    published = [m.key() for m in consume_all(cloud, topics.MODELS, timeout=60, idle=5)]
    assert b"telemetry" in published
    for edge in ("edge-1", "edge-2"):
        statuses = [
            decode(ModelStatus, m.value())
            for m in consume_all(cloud, f"{edge}.{topics.MODEL_STATUS}", timeout=60, idle=5)
        ]
        assert any(s.version == version and s.state == "active" for s in statuses), statuses
