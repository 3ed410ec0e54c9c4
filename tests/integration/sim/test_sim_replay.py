"""``fleetsentry sim replay`` against the real Mosquitto: every row of a recorded declared
stream is acknowledged and arrives in each device's order; ``--speed`` keeps the pace."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from shared import streams
from shared.infra.stack import Stack
from tests.bridge_support import mqtt_client, unique
from tests.declared_stream import generate, write_declaration

pytestmark = pytest.mark.integration

FLEETSENTRY = str(Path(sys.executable).parent / "fleetsentry")
PASSWORD = "replay-test-password"
COLUMNS = ["unit", "t", "box_temp_c", "setpoint_c", "compressor_kw", "door", "driver", "lat", "lon"]


class Watcher:
    """The admin user subscribed to ``fleet/+/reefer``: what arrives, when, in which order."""

    def __init__(self, stack: Stack) -> None:
        self.arrived: list[tuple[float, str, str]] = []  # (monotonic, device, event_id)
        self._lock = threading.Lock()
        self.client = mqtt_client(stack, unique("replay-watch"))
        self.client.on_message = self._on_message
        done = threading.Event()
        self.client.on_subscribe = lambda *_: done.set()
        self.client.subscribe("fleet/+/reefer", qos=1)
        assert done.wait(10), "no SUBACK"

    def _on_message(self, _c: Any, _ud: Any, msg: Any) -> None:
        p = json.loads(msg.payload)
        with self._lock:
            self.arrived.append((time.monotonic(), p["unit"], p["event_id"]))

    def wait_for(self, n: int, timeout: float = 60.0) -> list[tuple[float, str, str]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if len(self.arrived) >= n:
                    return list(self.arrived)
            time.sleep(0.1)
        with self._lock:
            return list(self.arrived)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _recording(
    tmp_path: Path, name: str, devices: int, events: int, step_ms: int | None = None
) -> tuple[Path, list[dict[str, Any]]]:
    """The test stream's generated events as a CSV; ``step_ms``: each device's events that
    far apart exactly, all devices in step (the generator jitters by a second)."""
    g = generate(devices=devices, events=events, seed=5)
    rows = [{c: p[c] for c in COLUMNS} for _, p in g.messages]
    if step_ms is not None:
        seen: dict[str, int] = {}
        for r in rows:
            k = seen[r["unit"]] = seen.get(r["unit"], -1) + 1
            r["t"] = 1_767_600_000_000 + k * step_ms
        rows.sort(key=lambda r: r["t"])
    path = tmp_path / name
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, COLUMNS)
        w.writeheader()
        w.writerows(rows)
    return path, rows


def _replay(
    stack: Stack, directory: Path, recording: Path, summary: Path, *args: str
) -> dict[str, Any]:
    proc = subprocess.run(
        [
            FLEETSENTRY,
            "sim",
            "replay",
            str(recording),
            "--stream",
            "reefer",
            "--streams-dir",
            str(directory),
            "--mqtt",
            f"{stack.mqtt.host}:{stack.mqtt.port}",
            "--password",
            PASSWORD,
            "--connect-wait",
            "30",
            "--summary-json",
            str(summary),
            *args,
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result: dict[str, Any] = json.loads(summary.read_text())
    return result


@pytest.fixture(scope="module")
def declared(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    directory = tmp_path_factory.mktemp("replay-streams")
    write_declaration(directory)
    # Registered here first: a device's role names the streams known to the registering
    # process.
    new = "reefer" not in {s.name for s in streams.all_streams()}
    streams.use_declarations(directory)
    yield directory
    if new:
        streams._REGISTRY.pop("reefer", None)


@pytest.mark.timeout(300)
def test_every_row_is_acknowledged_in_device_order(
    stack: Stack, declared: Path, tmp_path: Path
) -> None:
    path, rows = _recording(tmp_path, "reefer.csv", devices=6, events=50)
    devices = sorted({r["unit"] for r in rows})
    stack.mqtt.register_vehicles({d: PASSWORD for d in devices})
    watcher = Watcher(stack)
    try:
        summary = _replay(stack, declared, path, tmp_path / "summary.json", "--speed", "max")
        arrived = watcher.wait_for(len(rows))
    finally:
        watcher.close()
    assert summary["rejected"] == 0 and summary["accepted"] == len(rows)
    assert summary["acknowledged"] == len(rows), summary
    assert all(d["unsent"] == 0 and "login_error" not in d for d in summary["per_device"])
    assert {d["device"]: d["acknowledged"] for d in summary["per_device"]} == {
        d: sum(1 for r in rows if r["unit"] == d) for d in devices
    }
    # The row number is in each generated event id: per device, the file's order.
    expected = {d: [f"{d}-{n}" for n, r in enumerate(rows, 1) if r["unit"] == d] for d in devices}
    got: dict[str, list[str]] = {d: [] for d in devices}
    for _, device, event_id in arrived:
        got[device].append(event_id)
    assert got == expected


@pytest.mark.timeout(300)
def test_speed_ten_keeps_the_recorded_pace_roughly(
    stack: Stack, declared: Path, tmp_path: Path
) -> None:
    # Two trailers, 21 events 0.1 s apart: 2 s of recording.
    path, rows = _recording(tmp_path, "short.csv", devices=2, events=21, step_ms=100)
    span_s = 2.0
    stack.mqtt.register_vehicles({r["unit"]: PASSWORD for r in rows})
    watcher = Watcher(stack)
    try:
        summary = _replay(stack, declared, path, tmp_path / "summary.json", "--speed", "10")
        arrived = watcher.wait_for(len(rows))
    finally:
        watcher.close()
    assert summary["acknowledged"] == len(rows)
    # Bounds, not a benchmark: a tenth of the recording's span, give or take a loaded machine.
    assert 0.5 * span_s / 10 <= summary["replay_s"] <= 2.0, summary
    spread = arrived[-1][0] - arrived[0][0]
    assert 0.5 * span_s / 10 <= spread <= 3.0, spread


@pytest.mark.timeout(300)
def test_a_stream_the_devices_role_lacks_is_refused_by_the_broker(
    stack: Stack, declared: Path, tmp_path: Path
) -> None:
    # Declared after the devices were registered: their roles do not name its topic.
    other = tmp_path / "other-streams"
    other.mkdir()
    (other / "reefer_b.toml").write_text(
        (declared / "reefer.toml").read_text().replace('name = "reefer"', 'name = "reefer_b"')
    )
    path, rows = _recording(tmp_path, "late.csv", devices=2, events=5)
    devices = sorted({r["unit"] for r in rows})
    stack.mqtt.register_vehicles({d: PASSWORD for d in devices})
    proc = subprocess.run(
        [
            FLEETSENTRY,
            "sim",
            "replay",
            str(path),
            "--stream",
            "reefer_b",
            "--streams-dir",
            str(other),
            "--mqtt",
            f"{stack.mqtt.host}:{stack.mqtt.port}",
            "--password",
            PASSWORD,
            "--speed",
            "max",
            "--drain-timeout",
            "20",
            "--summary-json",
            str(tmp_path / "summary.json"),
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode != 0, proc.stderr[-3000:]
    assert "nothing was acknowledged" in proc.stderr
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["acknowledged"] == 0 and summary["rejected"] == len(rows)
    reasons = {r for d in summary["per_device"] for r in d["reasons"]}
    assert reasons == {"broker refused: Not authorized"}, reasons
