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
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from shared import topics
from shared.contracts import Label, ModelStatus, decode
from shared.infra.ports import free_ports
from shared.kafka_config import ADMIN_USER, KafkaSettings
from tests.support import consume_all

pytestmark = pytest.mark.integration

VEHICLES = 60
DURATION_S = 360.0


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _ports() -> dict[str, object]:
    """Ports for both gateways (the demo puts gateway 2's edge Kafka 200 above gateway 1's
    and its Mosquitto one above), the cloud, the dashboard and the metrics."""
    for _ in range(50):
        p = free_ports(12)
        edge, ctrl, mqtt = p[0], p[1], p[2]
        others = [edge + 200, ctrl + 200, mqtt + 1]
        metrics = [p[11] + i for i in range(8)] + [p[11] + 100 + i for i in range(8)]
        if all(_free(x) for x in others + metrics) and not set(others) & set(p):
            return {"edge": edge, "ctrl": ctrl, "mqtt": mqtt, "cloud": p[3:6],
                    "cloud_ctrl": p[6:9], "dashboard": p[9], "metrics": p[11]}
    raise RuntimeError("no free ports for the demo")


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, KafkaSettings]]:
    """(what the demo printed, the cloud's admin login)."""
    home = tmp_path_factory.mktemp("demo-home")
    ports = _ports()
    cloud = ",".join(str(p) for p in ports["cloud"])  # type: ignore[attr-defined]
    cloud_ctrl = ",".join(str(p) for p in ports["cloud_ctrl"])  # type: ignore[attr-defined]
    cmd = [sys.executable, "-m", "shared.cli", "demo", "--home", str(home),
           "--edge-port", str(ports["edge"]), "--edge-controller-port", str(ports["ctrl"]),
           "--mqtt-port", str(ports["mqtt"]), "--cloud-ports", cloud,
           "--cloud-controller-ports", cloud_ctrl, "--dashboard-port", str(ports["dashboard"]),
           "--metrics-port", str(ports["metrics"]), "--vehicles", str(VEHICLES),
           "--duration", str(DURATION_S), "--interval", "20"]
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
                raise AssertionError("the demo did not finish in 20 minutes:\n"
                                     + out.read_text()[-5000:]) from None
        text = out.read_text()
        print(text)
        assert proc.returncode == 0, text[-5000:]
        # The cloud as its admin sees it (TLS, the node's PLAIN login `infra up` made).
        yield text, KafkaSettings(
            bootstrap=",".join(f"127.0.0.1:{p}" for p in ports["cloud"]),  # type: ignore[attr-defined]
            username=ADMIN_USER, mechanism="PLAIN",
            credentials_file=home / "cloud-kafka" / "credentials.json",
            ca_file=home / "cloud-kafka" / "tls" / "ca.pem")
    finally:
        for h in (home, home / "gateway-2"):
            subprocess.run([sys.executable, "-m", "shared.cli", "infra", "down", "--home",
                            str(h)], check=False, capture_output=True, timeout=180)


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
    promoted = re.search(r"run #(\d+) \(telemetry\): challenger (\S+) trained .* -> PROMOTED",
                         text)
    assert promoted, text
    version = promoted.group(2)
    for edge in ("edge-1", "edge-2"):
        assert re.search(rf"{edge} agent, telemetry: {re.escape(version)} active", text), \
            f"{edge} did not report {version} active"
        assert re.search(rf"{edge} runs: telemetry {re.escape(version)}", text), text
    assert "failed" not in re.findall(r"-> (\w+)", text)
    closing = re.search(r"training runs: (\d+) \((\d+) promoted, (\d+) kept the champion, "
                        r"(\d+) failed\)", text)
    assert closing and int(closing.group(2)) >= 1 and closing.group(4) == "0", text

    # From the cloud Kafka itself: labels, the published model, both agents active on it.
    labels = [decode(Label, m.value()) for m in consume_all(cloud, topics.LABELS, timeout=60,
                                                              idle=5)]
    assert labels and max(during) <= len(labels)
    published = [m.key() for m in consume_all(cloud, topics.MODELS, timeout=60, idle=5)]
    assert b"telemetry" in published
    for edge in ("edge-1", "edge-2"):
        statuses = [decode(ModelStatus, m.value())
                    for m in consume_all(cloud, f"{edge}.{topics.MODEL_STATUS}", timeout=60,
                                         idle=5)]
        assert any(s.version == version and s.state == "active" for s in statuses), statuses


def _holding(path: Path) -> list[str]:
    """Command lines of live processes that name ``path`` (brokers, MirrorMaker, services,
    simulators of a demo under it)."""
    out = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if str(path) in cmd and state != "Z":
            out.append(f"{proc.name}: {cmd[:200]}")
    return out


@pytest.mark.timeout(600)
def test_an_interrupted_demo_leaves_no_process_behind(
        tmp_path_factory: pytest.TempPathFactory) -> None:
    home = tmp_path_factory.mktemp("demo-interrupted")
    ports = _ports()
    cmd = [sys.executable, "-m", "shared.cli", "demo", "--home", str(home),
           "--edge-port", str(ports["edge"]), "--edge-controller-port", str(ports["ctrl"]),
           "--mqtt-port", str(ports["mqtt"]),
           "--cloud-ports", ",".join(str(p) for p in ports["cloud"]),  # type: ignore[attr-defined]
           "--cloud-controller-ports",
           ",".join(str(p) for p in ports["cloud_ctrl"]),  # type: ignore[attr-defined]
           "--dashboard-port", str(ports["dashboard"]), "--metrics-port", str(ports["metrics"]),
           "--vehicles", "5", "--duration", "600", "--down"]
    log = home / "demo.out"
    with open(log, "wb") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        # Interrupt during start-up: once the gateways' services are started, before the
        # MirrorMakers report healthy and the fleets drive.
        started = home / "demo" / "logs" / "edge-2.log"
        deadline = time.monotonic() + 300
        while not started.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert started.exists(), log.read_text()[-3000:]
        assert _holding(home), "nothing was running to leave behind"
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
    left: list[str] = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        left = _holding(home)
        if not left:
            break
        time.sleep(1)
    assert not left, "\n".join(left) + "\n" + log.read_text()[-3000:]
    assert "Stopping" in log.read_text()
