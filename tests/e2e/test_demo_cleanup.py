"""``fleetsentry demo`` leaves no process behind when its start-up is interrupted (Ctrl-C) or
fails: not the brokers it started, not MirrorMaker, the cloud services or the gateway, though
each runs in a session of its own (out of reach of the terminal's Ctrl-C).

The demo runs as a user runs it, as small as it goes: one gateway, one vehicle.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from tests.demo_support import demo_command, demo_ports, descendants, naming, still_running

pytestmark = pytest.mark.integration

SMALLEST = ("--vehicles", "1", "--duration", "60", "--interval", "60")
ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}


def _all_gone(seen: dict[int, float], home: Path, log: Path, within: float = 30.0) -> None:
    """Every process seen under the demo, and any naming its home, ends within ``within``."""
    deadline = time.monotonic() + within
    while True:
        left = still_running(seen) + naming(home)
        if not left or time.monotonic() >= deadline:
            break
        time.sleep(0.5)
    assert not left, "left behind:\n" + "\n".join(left) + "\n" + log.read_text()[-3000:]


def _runs_gateway(pid: int) -> bool:
    for child in psutil.Process(pid).children(recursive=True):
        try:
            if "edge-1.toml" in " ".join(child.cmdline()):
                return True
        except psutil.NoSuchProcess:
            pass
    return False


@pytest.mark.timeout(400)
def test_a_demo_interrupted_during_start_up_leaves_no_process_behind(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    home = tmp_path_factory.mktemp("demo-interrupted")
    log = home / "demo.out"
    cmd = demo_command(home, demo_ports(), "--gateways", "1", *SMALLEST)
    with open(log, "wb") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=ENV)
    seen: dict[int, float] = {}
    try:
        # Interrupt once the gateway runs: the brokers, MirrorMaker and the cloud services
        # run too, MirrorMaker is not yet healthy and the fleet not started.
        deadline = time.monotonic() + 300
        while proc.poll() is None and time.monotonic() < deadline:
            seen.update(descendants(proc.pid))
            if _runs_gateway(proc.pid):
                break
            time.sleep(0.1)
        assert proc.poll() is None, log.read_text()[-3000:]
        seen.update(descendants(proc.pid))
        assert "Dashboard:" not in log.read_text(), "start-up was over before the interrupt"
        names = [" ".join(psutil.Process(p).cmdline()) for p in seen if psutil.pid_exists(p)]
        assert any("kafka.Kafka" in n for n in names), names  # the brokers it started
        assert any("mosquitto" in n for n in names), names
        assert any("MirrorMaker" in n for n in names), names
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    _all_gone(seen, home, log)
    out = log.read_text()
    assert "Stopping" in out and "Start-up was cut short" in out, out[-3000:]


@pytest.mark.timeout(400)
def test_a_demo_whose_start_up_fails_leaves_no_process_behind(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """Gateway 2's Mosquitto port is taken: the demo fails once the cloud and gateway 1's
    brokers are up."""
    home = tmp_path_factory.mktemp("demo-failed")
    log = home / "demo.out"
    ports = demo_ports()
    seen: dict[int, float] = {}
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", ports.mqtt + 1))
        taken.listen()
        with open(log, "wb") as f:
            proc = subprocess.Popen(
                demo_command(home, ports, "--gateways", "2", *SMALLEST),
                stdout=f,
                stderr=subprocess.STDOUT,
                env=ENV,
            )
        try:
            proc.wait(timeout=0.1)
        except subprocess.TimeoutExpired:
            deadline = time.monotonic() + 300
            while proc.poll() is None and time.monotonic() < deadline:
                seen.update(descendants(proc.pid))
                time.sleep(0.1)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    out = log.read_text()
    assert proc.returncode == 1, out[-3000:]
    assert f"port {ports.mqtt + 1}" in out and "Start-up was cut short" in out, out[-3000:]
    assert len(seen) >= 5, out[-3000:]  # 4 Kafka nodes and a Mosquitto, at least
    _all_gone(seen, home, log)
