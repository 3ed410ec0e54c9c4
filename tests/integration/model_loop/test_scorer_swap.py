"""The real scorer switches to the agent's model between transactions: every event scored
exactly once, the old model before the switch and the new one after, nothing in between."""

from __future__ import annotations

import json
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest

from edge.agent.store import ModelStore
from edge.config import EdgeConfig, KafkaSettings, ScorerSettings
from edge.scorer.model_runner import ModelHolder, load_model
from edge.scorer.scorer import ScorerService
from shared import topics
from shared.contracts import Score, decode
from shared.kafka_config import Target
from tests.agent_models import ModelKit
from tests.support import consume_all, produce_all

pytestmark = pytest.mark.integration
N = 3000


def test_swap_between_transactions_scores_every_event_once(
    edge_kafka: KafkaSettings, tmp_path: Path
) -> None:
    kit = ModelKit.shared()
    config = EdgeConfig(
        edge_id=f"swap-{uuid.uuid4().hex[:6]}",
        data_dir=tmp_path,
        kafka=edge_kafka,
        scorer=ScorerSettings(
            models_dir=tmp_path / "models", public_key=kit.public_key, max_batch=256
        ),
    )
    holders = {
        "payments": ModelHolder(load_model(kit.variant("swap-old"), "payments", kit.public_key)),
        "telemetry": ModelHolder(load_model(kit.telemetry(), "telemetry", kit.public_key)),
    }
    seed = 10_000 + int(uuid.uuid4().int % 1_000_000)
    first, second = kit.recent_payments(N, seed=seed), kit.recent_payments(N, seed=seed + 1)
    ids_first = {decode_id(v) for v in first}
    ids = ids_first | {decode_id(v) for v in second}
    store = ModelStore(config.models_dir).start()
    new_dir = store.install(kit.variant("swap-new"), "payments", "swap-new")
    svc = ScorerService(config, holders=holders)
    svc.start()
    try:
        _produce(edge_kafka, first)
        _drain(svc, N)
        _produce(edge_kafka, second)
        early = None
        while early is None:  # some of the second half scored by the old model ...
            early = svc.step()
        store.activate("payments", new_dir, "swap-new")  # ... the agent switches ...
        svc._next_reload = 0.0  # (the scorer looks at the next batch boundary at once)
        _drain(svc, N - early.events.get("payments", 0))  # ... the rest by the new one
    finally:
        svc.close()
    assert holders["payments"].current.version == "swap-new"
    mine = [
        decode(Score, m.value())
        for m in consume_all(edge_kafka, topics.SCORES_PAYMENTS, timeout=60, idle=4)
    ]
    mine = [s for s in mine if s.event_id in ids]
    counts = Counter(s.event_id for s in mine)
    assert set(counts) == ids, f"{len(ids - set(counts))} events never scored"
    assert max(counts.values()) == 1, "an event was scored twice"
    versions = Counter(s.model_version for s in mine)
    print(f"\nscored by version: {dict(versions)}")
    assert set(versions) == {"swap-old", "swap-new"}
    assert all(s.model_version == "swap-old" for s in mine if s.event_id in ids_first)


def _produce(bootstrap: Target, values: list[bytes]) -> None:
    produce_all(bootstrap, topics.ANON_PAYMENTS, ((uuid.uuid4().hex.encode(), v) for v in values))


def _drain(svc: ScorerService, at_least: int, timeout: float = 120.0) -> int:
    """Step until ``at_least`` payments are scored and 2 s pass with nothing new (bounded)."""
    deadline, scored, quiet_since = time.monotonic() + timeout, 0, time.monotonic()
    while time.monotonic() < deadline:
        result = svc.step()
        if result is not None:
            scored += result.events.get("payments", 0)
            quiet_since = time.monotonic()
        elif scored >= at_least and time.monotonic() - quiet_since > 2.0:
            break
    return scored


def decode_id(value: bytes) -> str:
    return str(json.loads(value)["event_id"])
