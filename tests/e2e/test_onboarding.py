"""The "Onboard your own fleet" walkthrough (docs/onboarding.md), command by command.

A recording unlike the built-in streams (its own column names, string truck ids, ISO 8601
times, a fuel-card column, a coordinate pair) goes through `streams infer` (the card and the
position are flagged as personal data), a dry-run `sim replay` for training, `cloud train`
without labels, `cloud registry register --champion` (signed, through the cloud Kafka and
MirrorMaker to the gateway's agent), a live `sim replay` through real Mosquitto into a gateway
that knows the stream only from the inferred file, and `eval` with the labels. Every command
the test runs is on that page, word for word but for the `$VARIABLES`.
"""

from __future__ import annotations

import csv
import json
import math
import os
import random
import shlex
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from shared import streams, topics
from shared.baselines import BASELINE_PUBLIC_KEY
from shared.contracts import Alert, ModelStatus, decode
from shared.declarations import load_file
from shared.infra.stack import Stack
from shared.infra.topics_admin import ensure_topics
from shared.kafka_config import ADMIN_USER, KafkaSettings, Target
from tests.bridge_support import read_topic
from tests.browser_support import cloud_toml
from tests.edge_pipeline import ROOT, EdgePipeline
from tests.support import mirrors_healed

pytestmark = pytest.mark.integration

# The walkthrough, as docs/onboarding.md has it.
COMMANDS = [
    "fleetsentry streams infer trucks.csv --out streams/trucks.toml",
    "fleetsentry streams check streams",
    "fleetsentry cloud keygen fleet.key",
    "fleetsentry sim replay trucks.csv --stream trucks --config edge.toml --dry-run "
    "--out history.jsonl",
    "fleetsentry cloud train --config cloud.toml --events history.jsonl --stream trucks "
    "--out models --key fleet.key",
    "fleetsentry cloud registry register models/trucks --champion --root registry "
    "--config cloud.toml --bootstrap $CLOUD --key fleet.key",
    "fleetsentry sim replay live.csv --stream trucks --config edge.toml --mqtt $MQTT "
    "--password-file devices.json --register-with $MOSQUITTO_HOME --speed max",
    "fleetsentry sim replay live.csv --stream trucks --config edge.toml --dry-run "
    "--out live.jsonl --labels live-labels.csv",
    "fleetsentry eval --config cloud.toml --bootstrap $CLOUD --topic-prefix $EDGE_ID. "
    "--labels labels.jsonl",
]
TRUCKS, LIVE_TRUCKS, FAULTY = 16, 8, ("TRK-0002", "TRK-0005", "TRK-0007")
HISTORY_S, LIVE_S, FAULT_AT, FAULT_S = 600, 150, 90, 12


def _card(rng: random.Random) -> str:
    """A Luhn-valid 16-digit number."""
    digits = [4] + [rng.randint(0, 9) for _ in range(14)]
    total = 0
    for i, d in enumerate(reversed(digits)):
        total += (d * 2 - 9 if d * 2 > 9 else d * 2) if i % 2 == 0 else d
    return "".join(map(str, digits)) + str((10 - total % 10) % 10)


def _recording(
    path: Path,
    trucks: int,
    seconds: int,
    seed: int,
    start: float,
    faults: dict[str, int] | None = None,
) -> None:
    """A telematics export: one row a second per truck; ``faults``: truck -> second an
    overheating (coolant climbing 3 °C a second, a tyre losing pressure) starts."""
    rng = random.Random(seed)
    rows = []
    for n in range(1, trucks + 1):
        truck, card = f"TRK-{n:04d}", _card(rng)
        lat, lon = 50.0 + rng.uniform(-1, 1), 8.0 + rng.uniform(-1, 1)
        base_cool, base_tyre = rng.uniform(84, 88), rng.uniform(228, 236)
        period, phase = rng.uniform(120, 300), rng.uniform(0, 6.3)
        hills = {rng.randrange(seconds) for _ in range(seconds // 60)}
        at = (faults or {}).get(truck)
        climb = 0.0
        for s in range(seconds):
            # Speed follows the road; the engine warms with speed and on hills, the tyres
            # with speed: the sensors move together, as a model can learn.
            speed = 60 + 30 * math.sin(2 * math.pi * s / period + phase) + rng.gauss(0, 1)
            climb = 6.0 if s in hills else climb * 0.95
            cool = base_cool + 0.06 * speed + climb + rng.gauss(0, 0.15)
            intake = 18 + 0.05 * speed + 0.3 * climb + rng.gauss(0, 0.15)
            tyre = base_tyre + 0.03 * speed + rng.gauss(0, 0.15)
            if at is not None and at <= s < at + FAULT_S:
                cool += 3.0 * (s - at + 1)
                tyre -= 2.5 * (s - at + 1)
            lat += rng.gauss(0, 0.0005)
            lon += rng.gauss(0, 0.0005)
            rows.append(
                {
                    "time": datetime.fromtimestamp(start + s, UTC)
                    .isoformat()
                    .replace("+00:00", "Z"),
                    "truck": truck,
                    "speed": round(speed, 1),
                    "coolant_temp": round(cool, 2),
                    "intake_air_temp": round(intake, 2),
                    "tire_pressure_1_1": round(tyre, 1),
                    "fuel_card": card,
                    "lat": round(lat, 5),
                    "lon": round(lon, 5),
                }
            )
    rows.sort(key=lambda r: (r["time"], r["truck"]))
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def _run(command: str, cwd: Path, values: dict[str, str], timeout: float = 600) -> str:
    """Run a walkthrough command in ``cwd``, its ``$VARIABLES`` set from ``values``."""
    for name, value in values.items():
        command = command.replace(f"${name}", value)
    argv = shlex.split(command)
    fleetsentry = str(Path(sys.executable).parent / "fleetsentry")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run(
        [fleetsentry, *argv[1:]],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    out = done.stdout + done.stderr
    assert done.returncode == 0, f"{command}\n{out[-4000:]}"
    return out


def test_the_documented_walkthrough_onboards_a_fleet_the_simulator_never_made(
    stack: Stack, cloud_kafka: KafkaSettings, tmp_path: Path
) -> None:
    page = " ".join((ROOT / "docs" / "onboarding.md").read_text().split())
    for command in COMMANDS:
        assert command in page, f"docs/onboarding.md's walkthrough lacks: {command}"
    work = tmp_path
    now = time.time()
    _recording(work / "trucks.csv", TRUCKS, HISTORY_S, seed=1, start=now - 30 * 86400)
    live_start = now - 7 * 86400
    _recording(
        work / "live.csv",
        LIVE_TRUCKS,
        LIVE_S,
        seed=2,
        start=live_start,
        faults={t: FAULT_AT for t in FAULTY},
    )
    with open(work / "live-labels.csv", "w") as fh:
        fh.write("device,start,end,kind\n")
        for truck in FAULTY:
            start = datetime.fromtimestamp(live_start + FAULT_AT, UTC).isoformat()
            end = datetime.fromtimestamp(live_start + FAULT_AT + FAULT_S - 1, UTC).isoformat()
            fh.write(f"{truck},{start},{end},overheating\n")
    (work / "devices.json").write_text(
        json.dumps({f"TRK-{n:04d}": f"pw-{n}" for n in range(1, LIVE_TRUCKS + 1)})
    )

    gateway = EdgePipeline(stack, work / "edge", services=("bridge", "enricher", "scorer", "agent"))
    (work / "cloud.toml").write_text(
        cloud_toml(cloud_kafka, work / "registry", 0, work / "dash")
        + f"\n[streams]\ndir = {json.dumps(str(work / 'streams'))}\n"
    )
    values = {
        "CLOUD": cloud_kafka.bootstrap,
        "MQTT": f"{stack.mqtt.host}:{stack.mqtt.port}",
        "MOSQUITTO_HOME": str(stack.mqtt.home),
        "EDGE_ID": gateway.edge_id,
    }

    # Infer a declaration: the personal columns are flagged, and it loads as written.
    _run(COMMANDS[0], work, values)
    declaration = (work / "streams" / "trucks.toml").read_text()
    assert 'fuel_card = { type = "str", pii = "token" }' in declaration, declaration
    assert 'cell = ["lat", "lon"]' in declaration
    assert 'device = { field = "truck"' in declaration
    assert 'time = { field = "time", unit = "iso8601" }' in declaration
    _run(COMMANDS[1], work, values)

    # The gateway, configured with the stream directory, as `edge.toml` of the walkthrough.
    keys = [str(BASELINE_PUBLIC_KEY), str(work / "fleet.pub")]
    gateway.scorer_toml = f"public_keys = {json.dumps(keys)}\n"
    gateway.extra = (
        f"\n[agent]\nshadow_window = 200\n[streams]\ndir = {json.dumps(str(work / 'streams'))}\n"
    )
    edge_toml = gateway.write_config()
    (work / "edge.toml").write_text(edge_toml.read_text())

    # A signing key; a dry-run replay is the training set; train without labels.
    _run(COMMANDS[2], work, values)
    _run(COMMANDS[3], work, values)
    out = _run(COMMANDS[4], work, values)
    assert "detection quality unknown" in out, out[-3000:]

    # The gateway side: its topics for the stream, MirrorMaker to the cloud, its services.
    streams.use_declarations(work / "streams")
    ensure_topics(stack.edge.login(ADMIN_USER), "edge", 1)
    mirror = stack.mirror(gateway.edge_id, home=work)
    mirror.start()
    gateway.start()
    try:
        mirror.wait_healthy(240)
        with mirrors_healed([mirror]):
            # Deploy: the signed champion travels registry -> cloud models -> MirrorMaker ->
            # agent.
            _run(COMMANDS[5], work, values)
            _wait_active(gateway, stack, "trucks")
            # Live: the recording replayed as the trucks, each its own MQTT session.
            _run(COMMANDS[6], work, values)
            _run(COMMANDS[7], work, values)
            login = stack.edge.login()
            alerts = _alerts(login, "trucks", set(FAULTY))
            _run(COMMANDS[8], work, values)
            report = json.loads((work / "eval-report" / "report.json").read_text())
    finally:
        gateway.stop()
        mirror.stop()

    labels = {f.label for f in load_file(work / "streams" / "trucks.toml").features}
    for truck in FAULTY:
        mine = [a for a in alerts if a.token == truck]
        assert mine, f"{truck}: no alert\n{gateway.tail()}"
        assert {c.feature for a in mine for c in a.top_features} <= labels
    block = report["streams"]["trucks"]
    assert block["episodes"]["episodes"] == len(FAULTY)
    assert block["episodes"]["detected"] >= 2, block["episodes"]


def _wait_active(gateway: EdgePipeline, stack: Stack, stream: str, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for m in read_topic(stack.edge.login(), topics.MODEL_STATUS, timeout=10, idle=2):
            status = decode(ModelStatus, m.value())
            if status.stream == stream and status.edge_id == gateway.edge_id:
                assert status.state != "rejected", status.reason
                if status.state == "active":
                    return
        time.sleep(2)
    raise AssertionError(f"the agent never activated the {stream} model\n{gateway.tail()}")


def _alerts(login: Target, stream: str, tokens: set[str], timeout: float = 120) -> list[Alert]:
    deadline = time.monotonic() + timeout
    got: list[Alert] = []
    while time.monotonic() < deadline:
        got = [
            a
            for a in (
                decode(Alert, m.value())
                for m in read_topic(login, topics.ALERTS, timeout=15, idle=3)
            )
            if a.stream == stream
        ]
        if tokens <= {a.token for a in got}:
            break
        time.sleep(2)
    return got
