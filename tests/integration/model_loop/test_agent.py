"""The model agent against the real edge Kafka: verify, shadow, switch, report, roll back."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge.agent.agent import ModelAgent
from edge.config import AgentSettings, EdgeConfig, KafkaSettings, ScorerSettings
from shared import topics
from shared.contracts import ModelStatus, Score, decode, encode
from shared.kafka_config import Target
from shared.signing import generate_private_key
from tests.agent_models import ModelKit, deliver, drop_file, flip_byte, recent_window, skip_to_end
from tests.support import consume_all, produce_all

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def kit() -> ModelKit:
    return ModelKit.shared()


@pytest.fixture()
def agent(edge_kafka: KafkaSettings, kit: ModelKit, tmp_path: Path) -> Iterator[ModelAgent]:
    edge_id = f"agent-{uuid.uuid4().hex[:6]}"
    config = EdgeConfig(
        edge_id=edge_id, data_dir=tmp_path, kafka=edge_kafka,
        scorer=ScorerSettings(models_dir=tmp_path / "models", public_key=kit.public_key),
        agent=AgentSettings(shadow_window=600, watch_min_events=100, activation_timeout_s=3.0,
                            watch_s=120.0))
    skip_to_end(edge_kafka, f"{edge_id}-agent")
    a = ModelAgent(config).start()
    try:
        yield a
    finally:
        a.close()


def _statuses(bootstrap: Target, edge_id: str, expect: int) -> list[ModelStatus]:
    msgs = consume_all(bootstrap, topics.MODEL_STATUS, timeout=20, idle=3)
    out = [decode(ModelStatus, m.value()) for m in msgs]
    return [s for s in out if s.edge_id == edge_id]


def test_signed_model_is_shadowed_activated_and_reported(agent: ModelAgent, kit: ModelKit,
                                                         edge_kafka: KafkaSettings) -> None:
    recent_window(edge_kafka, kit, seed=1)
    first = kit.variant("pay-first")
    outcome = deliver(agent, edge_kafka, *kit.message(first))
    assert outcome.state == "active", outcome.reason
    link = agent.store.link("payments")
    assert link.is_symlink() and (link / "model.tflite").read_bytes() == (
        first / "model.tflite").read_bytes()

    second = kit.variant("pay-second")
    outcome = deliver(agent, edge_kafka, *kit.message(second))
    assert outcome.state == "active", outcome.reason
    assert outcome.verdict is not None and outcome.verdict.events >= 500
    assert agent.store.active_version("payments") == "pay-second"
    assert agent.store.previous("payments")[0] == "pay-first"

    states = [(s.version, s.state) for s in _statuses(edge_kafka, agent.config.edge_id, 8)]
    assert states == [("pay-first", "received"), ("pay-first", "shadowing"),
                      ("pay-first", "active"), ("pay-second", "received"),
                      ("pay-second", "shadowing"), ("pay-second", "active")]


def _install_running(agent: ModelAgent, kit: ModelKit, bootstrap: Target) -> Path:
    recent_window(bootstrap, kit, seed=2)
    running = kit.variant()
    assert deliver(agent, bootstrap, *kit.message(running)).state == "active"
    return agent.store.link("payments").resolve()


@pytest.mark.parametrize("case", ["flipped_model_byte", "flipped_manifest_byte", "unsigned",
                                  "other_key", "wrong_stream", "wrong_feature_spec",
                                  "alert_flood"])
def test_bad_models_are_rejected_and_running_model_kept(case: str, agent: ModelAgent,
                                                        kit: ModelKit,
                                                        edge_kafka: KafkaSettings) -> None:
    running = _install_running(agent, kit, edge_kafka)
    running_version = agent.store.active_version("payments")
    key, value = kit.message(kit.variant())
    expect = {"flipped_model_byte": "signature does not match",
              "flipped_manifest_byte": "signature does not match",
              "unsigned": "unsigned model", "other_key": "signature does not match",
              "wrong_stream": "is for stream 'payments', not 'telemetry'",
              "wrong_feature_spec": "feature spec", "alert_flood": "alert rate"}[case]
    if case == "flipped_model_byte":
        value = flip_byte(value)
    elif case == "flipped_manifest_byte":
        value = flip_byte(value, "manifest.json", offset=40)
    elif case == "unsigned":
        value = drop_file(value, "signature")
    elif case == "other_key":
        key, value = kit.message(kit.variant(key=generate_private_key()))
    elif case == "wrong_stream":
        key, value = kit.message(kit.variant(), stream="telemetry")
    elif case == "wrong_feature_spec":
        key, value = kit.message(kit.variant(feature_spec="fs0-old"))
    elif case == "alert_flood":  # a threshold far too low: nearly every event would alert
        key, value = kit.message(kit.variant(threshold=1e-9))
    outcome = deliver(agent, edge_kafka, key, value)
    assert outcome.state == "rejected"
    assert expect in outcome.reason, outcome.reason
    assert agent.store.link("payments").resolve() == running
    assert agent.store.active_version("payments") == running_version
    rejected = agent.statuses[-1]
    assert rejected.state == "rejected" and expect in rejected.reason
    if case == "flipped_model_byte":  # what the agent reports reaches model-status
        published = _statuses(edge_kafka, agent.config.edge_id, 0)
        assert published[-1].state == "rejected" and expect in published[-1].reason


def test_live_alert_jump_rolls_back_to_previous(agent: ModelAgent, kit: ModelKit,
                                               edge_kafka: KafkaSettings) -> None:
    before = _install_running(agent, kit, edge_kafka)
    before_version = agent.store.active_version("payments")
    new = kit.variant()
    outcome = deliver(agent, edge_kafka, *kit.message(new))
    assert outcome.state == "active"
    # The scorer now scores with the new model, and it alerts on every event.
    scores = [encode(Score(event_id=f"s-{i}", ts=time.time(), stream="payments",
                           token="cardtoken0001", score=9.0, threshold=1.0,
                           model_version=outcome.version, anomalous=True)) for i in range(150)]
    produce_all(edge_kafka, topics.SCORES_PAYMENTS, ((None, v) for v in scores))
    deadline = time.monotonic() + 30
    while "payments" in agent.watches and time.monotonic() < deadline:
        agent.step(0.2)
    assert agent.statuses[-1].state == "rolled_back", agent.statuses[-1]
    assert "live alert rate 100.00%" in agent.statuses[-1].reason
    assert agent.store.link("payments").resolve() == before
    assert agent.store.active_version("payments") == before_version
    # Redelivered, the rolled-back version is refused without touching the running model.
    again = agent.handle(*kit.message(new))
    assert again.state == "rejected" and "rolled back before" in again.reason


def test_scorer_that_never_switches_triggers_rollback(agent: ModelAgent, kit: ModelKit,
                                                     edge_kafka: KafkaSettings) -> None:
    before = _install_running(agent, kit, edge_kafka)
    outcome = deliver(agent, edge_kafka, *kit.message(kit.variant()))
    assert outcome.state == "active"
    old = [encode(Score(event_id=f"o-{i}", ts=time.time(), stream="payments",
                        token="cardtoken0001", score=0.1, threshold=1.0,
                        model_version="still-the-old-one", anomalous=False)) for i in range(20)]
    produce_all(edge_kafka, topics.SCORES_PAYMENTS, ((None, v) for v in old))
    deadline = time.monotonic() + 30
    while "payments" in agent.watches and time.monotonic() < deadline:
        agent.step(0.2)
    assert agent.statuses[-1].state == "rolled_back"
    assert "could not load" in agent.statuses[-1].reason
    assert agent.store.link("payments").resolve() == before
