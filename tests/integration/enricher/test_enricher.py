"""The enricher against the real edge Kafka: exactly once, no PII in anon.*, crash-safe."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path

import msgspec
import pytest
from firmware_sim import Fleet, SimSettings

from edge import config as edge_config
from edge.enricher import Enricher
from edge.vault.setup import fleet_tokenizer, open_vault
from shared import contracts, streams, topics
from shared.config import convert
from tests.support import consume_all, produce_all

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[3]


def sim_events(tag: str, vehicles: int, duration_s: int, seed: int) -> list[msgspec.Struct]:
    """Simulator events with event ids made unique to this test (topics are shared)."""
    fleet = Fleet(SimSettings(vehicles=vehicles, duration_s=duration_s, seed=seed,
                              payment_rate=40.0))
    out: list[msgspec.Struct] = []
    for topic, payload in fleet.events():
        spec = streams.by_mqtt_suffix(topic.rsplit("/", 1)[-1])
        assert spec is not None
        ev = contracts.decode(spec.event, payload)
        out.append(msgspec.structs.replace(ev, event_id=f"{tag}-{ev.event_id}"))  # type: ignore[type-var]
    return out


def produce_raw(bootstrap: str, events: list[msgspec.Struct], duplicate_every: int = 0) -> None:
    """Write events to raw.* keyed by VIN, re-sending some (as a redelivering bridge would)."""
    by_topic: dict[str, list[tuple[bytes, bytes]]] = {}
    for i, ev in enumerate(events):
        spec = streams.TELEMETRY if isinstance(ev, contracts.Telemetry) else streams.PAYMENTS
        rec = (ev.vin.encode(), contracts.encode(ev))  # type: ignore[attr-defined]
        copies = 2 if duplicate_every and i % duplicate_every == 0 else 1
        by_topic.setdefault(spec.raw_topic, []).extend([rec] * copies)
    for topic, recs in by_topic.items():
        produce_all(bootstrap, topic, recs)


def pii_values(events: list[msgspec.Struct]) -> set[bytes]:
    values: set[str] = set()
    for ev in events:
        values.update({ev.vin, ev.driver_id})  # type: ignore[attr-defined]
        if isinstance(ev, contracts.Payment):
            values.update({ev.card_number, ev.driver_name, ev.cardholder})
        raw = json.loads(contracts.encode(ev))
        values.update({json.dumps(raw["lat"]), json.dumps(raw["lon"])})
    return {v.encode() for v in values if len(v) >= 5}


def settings(bootstrap: str, tmp: Path, batch: int = 2000) -> dict[str, object]:
    return {"edge_id": f"t{uuid.uuid4().hex[:10]}", "data_dir": str(tmp),
            "kafka": {"bootstrap": bootstrap}, "metrics": {"base_port": 0},
            "enricher": {"group": f"enricher-{uuid.uuid4().hex[:10]}", "batch_size": batch,
                         "batch_wait_ms": 50.0}}


def read_anon(bootstrap: str, ids: set[str], timeout: float = 90.0) -> Counter[str]:
    """Count, per event id of ours, the committed anon records (all of anon.* is read)."""
    seen: Counter[str] = Counter()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        seen.clear()
        for topic in (topics.ANON_TELEMETRY, topics.ANON_PAYMENTS):
            for msg in consume_all(bootstrap, topic, idle=2.0, timeout=60):
                eid = msgspec.json.decode(msg.value())["event_id"]
                if eid in ids:
                    seen[eid] += 1
        if set(seen) >= ids:
            break
        time.sleep(1)
    return seen


def test_exactly_once_without_pii(edge_bootstrap: str, tmp_path: Path) -> None:
    tag = uuid.uuid4().hex[:8]
    events = sim_events(tag, vehicles=8, duration_s=240, seed=11)
    assert any(isinstance(e, contracts.Payment) for e in events)
    produce_raw(edge_bootstrap, events, duplicate_every=7)
    cfg = convert(settings(edge_bootstrap, tmp_path), edge_config.EdgeConfig)
    vault = open_vault(cfg)
    enricher = Enricher(cfg, vault, fleet_tokenizer(cfg))
    enricher.start()
    try:
        deadline = time.monotonic() + 90
        while enricher.produced < len(events) and time.monotonic() < deadline:
            enricher.step()
        assert enricher.duplicates >= len(events) // 7
    finally:
        enricher.close()
    ids = {e.event_id for e in events}  # type: ignore[attr-defined]
    seen = read_anon(edge_bootstrap, ids)
    assert set(seen) == ids and set(seen.values()) == {1}

    pii = pii_values(events)
    for topic in (topics.ANON_TELEMETRY, topics.ANON_PAYMENTS):
        for msg in consume_all(edge_bootstrap, topic, idle=2.0):
            blob = (msg.key() or b"") + msg.value()
            leaked = [v for v in pii if v in blob]
            assert not leaked, (topic, leaked[:3])
    # The vault turns an anon token back into the VIN, on the gateway only.
    first = next(e for e in events if isinstance(e, contracts.Payment))
    tok = fleet_tokenizer(cfg)
    assert vault.reveal(tok.token("vin", first.vin), "test") == first.vin
    assert vault.reveal(tok.token("card", first.card_number), "test") == first.card_number
    vault.close()


def test_crash_at_any_point_still_exactly_once(edge_bootstrap: str, tmp_path: Path) -> None:
    tag = uuid.uuid4().hex[:8]
    events = sim_events(tag, vehicles=20, duration_s=300, seed=23)
    produce_raw(edge_bootstrap, events, duplicate_every=11)
    conf = tmp_path / "edge.toml"
    s = settings(edge_bootstrap, tmp_path, batch=300)
    conf.write_text(toml(s))
    ids = {e.event_id for e in events}  # type: ignore[attr-defined]
    rng = random.Random(5)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    argv = [sys.executable, "-m", "edge.cli", "enricher", "--config", str(conf)]
    kills = 0
    for _ in range(4):
        proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE)
        time.sleep(rng.uniform(3.0, 7.0))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait(10)
    assert kills >= 3
    proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    try:
        seen = read_anon(edge_bootstrap, ids, timeout=150)
    finally:
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=30)
    assert set(seen) == ids, f"{len(ids - set(seen))} missing; stderr: {err.decode()[-2000:]}"
    dups = {k: n for k, n in seen.items() if n > 1}
    assert not dups, f"{len(dups)} events duplicated"
    assert proc.returncode == 0, err.decode()[-2000:]


def toml(s: dict[str, object]) -> str:
    lines = []
    tables = {k: v for k, v in s.items() if isinstance(v, dict)}
    for k, v in s.items():
        if not isinstance(v, dict):
            lines.append(f"{k} = {json.dumps(v)}")
    for name, table in tables.items():
        lines.append(f"[{name}]")
        lines += [f"{k} = {json.dumps(v)}" for k, v in table.items()]
    return "\n".join(lines) + "\n"


