"""A stream that exists only in this test's TOML file, end to end with no code of its own.

``reefer`` (tests/declared_stream.py: string device ids ``RT-0001``, millisecond times, a
tokenized driver and a coordinate pair) is declared in a tmp directory; its model is trained
with ``fleetsentry cloud train --stream reefer`` (real TensorFlow, no labels, int8); a gateway
whose ``[streams] dir`` points at the directory runs it through real Mosquitto, bridge,
enricher and scorer (the int8 LiteRT model). The trailers log in with their own ids and
publish on ``fleet/RT-000n/reefer``. Asserted: the injected anomalies are alerted with the
declared labels as explanations; no personal value of the declared fields reaches
``anon.reefer``; a malformed event names the declared field in the dead letters.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from shared import signing, streams, topics
from shared.baselines import BASELINE_PUBLIC_KEY
from shared.contracts import Alert, AnonRecord, DeadLetter, Score, decode, encode
from shared.declarations import load_file
from shared.infra.stack import Stack
from shared.infra.topics_admin import ensure_topics
from shared.kafka_config import ADMIN_USER, KafkaSettings
from tests import declared_stream as reefer
from tests.bridge_support import mqtt_client, publish_all, read_topic
from tests.edge_pipeline import ROOT, EdgePipeline

pytestmark = pytest.mark.integration

DEVICES = 6
EVENTS = 90  # per trailer, 10 s apart in device time: 15 minutes of each trailer's data
PASSWORD = "trailer-password"


def _train(root: Path, streams_dir: Path) -> Path:
    """`fleetsentry cloud train --stream reefer` on a dry-run recording (no labels)."""
    generated = reefer.generate(devices=16, events=400, seed=11)
    events = reefer.write_events(root / "train.jsonl", generated)
    config = root / "cloud.toml"
    config.write_text(f"[streams]\ndir = {json.dumps(str(streams_dir))}\n")
    key = root / "fleet.pem"
    signing.create_private_key(key)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "shared.cli",
            "cloud",
            "train",
            "--config",
            str(config),
            "--events",
            str(events),
            "--stream",
            "reefer",
            "--out",
            str(root / "models"),
            "--key",
            str(key),
            "--public-key-out",
            str(root / "fleet.pub"),
            "--epochs",
            "6",
            "--seed",
            "5",
        ],
        check=False,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "detection quality unknown" in done.stdout + done.stderr, done.stderr[-3000:]
    return root / "models"


def _eval(root: Path) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "shared.cli",
            "eval",
            "--config",
            str(root / "cloud.toml"),
            "--labels",
            str(root / "labels.jsonl"),
            "--scores",
            str(root / "scores.jsonl"),
            "--alerts",
            str(root / "alerts.jsonl"),
            "--out",
            str(root / "report"),
        ],
        check=False,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report: dict[str, Any] = json.loads((root / "report" / "report.json").read_text())
    return report


def _publish(stack: Stack, generated: reefer.Generated) -> int:
    """Each trailer publishes its own events, logged in with its own id."""
    by_device: dict[str, list[tuple[str, bytes]]] = {}
    for topic, payload in generated.messages:
        by_device.setdefault(str(payload["unit"]), []).append((topic, json.dumps(payload).encode()))
    sent = 0
    for device, messages in by_device.items():
        client = mqtt_client(stack, device, user=device, password=PASSWORD)
        try:
            sent += publish_all(client, messages)
        finally:
            client.disconnect()
            client.loop_stop()
    return sent


def test_a_declared_stream_is_trained_anonymized_scored_and_explained(
    stack: Stack, edge_kafka: KafkaSettings, tmp_path: Path
) -> None:
    streams_dir = tmp_path / "streams"
    reefer.write_declaration(streams_dir)
    declaration = load_file(streams_dir / reefer.FILE_NAME)
    # This process creates the stream's topics and logs the trailers in, as `infra up` and
    # Ansible do with the gateway's [streams] dir.
    streams.use_declarations(streams_dir)
    ensure_topics(stack.edge.login(ADMIN_USER), "edge", 1)
    now_ms = int(time.time() * 1000)
    live = reefer.generate(
        devices=DEVICES, events=EVENTS, seed=23, start_ms=now_ms - (EVENTS + 6) * 10_000
    )
    stack.mqtt.register_vehicles({reefer.device_id(d): PASSWORD for d in range(DEVICES)})

    models = _train(tmp_path, streams_dir)
    keys = json.dumps([str(BASELINE_PUBLIC_KEY), str(tmp_path / "fleet.pub")])
    gateway = EdgePipeline(
        stack,
        tmp_path / "edge",
        scorer=f"models_dir = {json.dumps(str(models))}\npublic_keys = {keys}\n",
        extra=f"\n[streams]\ndir = {json.dumps(str(streams_dir))}\n",
    )
    gateway.start()
    try:
        sent = _publish(stack, live)
        bad = dict(live.messages[0][1], event_id="bad-1", box_temp_c="warm")
        client = mqtt_client(stack, "RT-0001", user="RT-0001", password=PASSWORD)
        publish_all(client, [("fleet/RT-0001/reefer", json.dumps(bad).encode())])
        client.disconnect()
        client.loop_stop()

        login = edge_kafka
        scores = read_topic(login, "scores.reefer", done=lambda rs: len(rs) >= sent, timeout=180)
        assert len(scores) == sent, gateway.tail()
        alerts = [
            a
            for a in (
                decode(Alert, m.value())
                for m in read_topic(login, topics.ALERTS, done=None, timeout=60, idle=8)
            )
            if a.stream == "reefer"
        ]
        anon = read_topic(login, "anon.reefer", done=lambda rs: len(rs) >= sent, timeout=60)
        letters = [
            decode(DeadLetter, m.value())
            for m in read_topic(login, topics.DLQ_INGEST, done=None, timeout=30, idle=5)
        ]
    finally:
        gateway.stop()

    # Personal data: the drivers' names and the exact coordinates never leave the vault.
    assert len(anon) == sent
    blob = b"\n".join(m.value() for m in anon)
    for _topic, payload in live.messages:
        assert str(payload["driver"]).encode() not in blob
        for exact in (json.dumps(payload["lat"]), json.dumps(payload["lon"])):
            if len(exact.partition(".")[2]) >= 4:  # shorter ones turn up in any number
                assert exact.encode() not in blob, exact
    for message in anon:
        record = decode(AnonRecord, message.value())
        assert set(record.tokens) == {"driver_token"} and record.cell is not None
        assert not {"driver", "lat", "lon"} & set(record.values)
        assert list(record.features) == declaration.feature_names

    # Detection: every trailer's injected episode is alerted, explained in declared labels.
    by_event = {s.event_id: s for s in (decode(Score, m.value()) for m in scores)}
    flagged = [e for e in live.anomalies if by_event[e].anomalous]
    # An episode's first events differ little from normal (a failing compressor's box has
    # warmed 1.5 °C): most, not all, of its events score above the threshold.
    assert len(flagged) >= 0.6 * len(live.anomalies), (len(flagged), len(live.anomalies))
    normal = [e for e in by_event if e not in live.anomalies and e not in live.recovery]
    false_rate = sum(by_event[e].anomalous for e in normal) / len(normal)
    assert false_rate < 0.02, false_rate
    labels = {f.label for f in declaration.features}
    episodes = {ep for ep, _dev in live.episodes.values()}
    alerted = set()
    for alert in alerts:
        assert alert.top_features and {c.feature for c in alert.top_features} <= labels
        for event_id in alert.event_ids:
            if event_id in live.episodes:
                alerted.add(live.episodes[event_id][0])
    assert alerted == episodes, (sorted(alerted), sorted(episodes))

    # `fleetsentry eval` knows the stream from cloud.toml's [streams] dir: the gateway's alert
    # episodes against the injected ones.
    (tmp_path / "scores.jsonl").write_bytes(b"\n".join(m.value() for m in scores) + b"\n")
    (tmp_path / "alerts.jsonl").write_bytes(b"\n".join(encode(a) for a in alerts) + b"\n")
    reefer.write_labels(tmp_path / "labels.jsonl", live)
    report = _eval(tmp_path)["streams"]["reefer"]["episodes"]
    # Detected, for eval: an alert raised (opened) while the injected episode ran. One opened
    # by the episode's last events can come a frame after it, and counts as late.
    spans: dict[str, list[float]] = {}
    for event_id, (episode, _dev) in live.episodes.items():
        t = live.ts_of(event_id)
        span = spans.setdefault(episode, [t, t])
        span[0], span[1] = min(span[0], t), max(span[1], t)
    opened = [a for a in alerts if a.state == "open"]
    in_time = {
        ep
        for ep, (start, end) in spans.items()
        if any(a.token == ep.split("-ep")[0] and start <= a.end_ts <= end for a in opened)
    }
    assert report["episodes"] == len(episodes)
    assert report["detected"] == len(in_time) >= len(episodes) // 2, (report, sorted(in_time))

    # The malformed event: in the dead letters, its declared field named.
    ours = [d for d in letters if "box_temp_c" in d.detail]
    assert ours and ours[0].reason == "wrong_type", [(d.reason, d.detail) for d in letters]
