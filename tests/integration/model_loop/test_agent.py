"""The model agent against the real edge Kafka: verify, shadow, switch, report, roll back."""

from __future__ import annotations

import time
from pathlib import Path

import msgspec
import pytest

from edge.agent.agent import ModelAgent
from edge.config import KafkaSettings
from edge.scorer.model_runner import load_model
from shared import model_bundle, topics
from shared.contracts import ModelStatus, Score, decode, encode
from shared.kafka_config import Target
from shared.signing import generate_private_key, write_public_key
from tests.agent_models import (
    ModelKit,
    agent_config,
    deliver,
    drop_file,
    flip_byte,
    recent_window,
    skip_to_end,
)
from tests.support import consume_all, produce_all

pytestmark = pytest.mark.integration


def _statuses(bootstrap: Target, edge_id: str, expect: int) -> list[ModelStatus]:
    msgs = consume_all(bootstrap, topics.MODEL_STATUS, timeout=20, idle=3)
    out = [decode(ModelStatus, m.value()) for m in msgs]
    return [s for s in out if s.edge_id == edge_id]


def test_signed_model_is_shadowed_activated_and_reported(
    agent: ModelAgent, kit: ModelKit, edge_kafka: KafkaSettings
) -> None:
    recent_window(edge_kafka, kit, seed=1)
    first = kit.variant("pay-first")
    outcome = deliver(agent, edge_kafka, *kit.message(first))
    assert outcome.state == "active", outcome.reason
    link = agent.store.link("payments")
    assert (
        link.is_symlink()
        and (link / "model.tflite").read_bytes() == (first / "model.tflite").read_bytes()
    )

    second = kit.variant("pay-second")
    outcome = deliver(agent, edge_kafka, *kit.message(second))
    assert outcome.state == "active", outcome.reason
    assert outcome.verdict is not None and outcome.verdict.events >= 500
    assert agent.store.active_version("payments") == "pay-second"
    assert agent.store.previous("payments")[0] == "pay-first"

    # (At start the agent also reported the telemetry champion missing: test_models_topic.py.)
    states = [
        (s.version, s.state)
        for s in _statuses(edge_kafka, agent.config.edge_id, 8)
        if s.state != "missing"
    ]
    assert states == [
        ("pay-first", "received"),
        ("pay-first", "shadowing"),
        ("pay-first", "active"),
        ("pay-second", "received"),
        ("pay-second", "shadowing"),
        ("pay-second", "active"),
    ]


def _install_running(agent: ModelAgent, kit: ModelKit, bootstrap: Target) -> Path:
    recent_window(bootstrap, kit, seed=2)
    running = kit.variant()
    assert deliver(agent, bootstrap, *kit.message(running)).state == "active"
    return agent.store.link("payments").resolve()


@pytest.mark.parametrize(
    "case",
    [
        "flipped_model_byte",
        "flipped_manifest_byte",
        "unsigned",
        "other_key",
        "wrong_stream",
        "wrong_feature_spec",
        "alert_flood",
    ],
)
def test_bad_models_are_rejected_and_running_model_kept(
    case: str, agent: ModelAgent, kit: ModelKit, edge_kafka: KafkaSettings
) -> None:
    running = _install_running(agent, kit, edge_kafka)
    running_version = agent.store.active_version("payments")
    key, value = kit.message(kit.variant())
    expect = {
        "flipped_model_byte": "model.tflite is not the file release",
        "flipped_manifest_byte": "manifest.json is not the file release",
        "unsigned": "unsigned model",
        "other_key": "signature does not match",
        "wrong_stream": "is for stream 'payments', not 'telemetry'",
        "wrong_feature_spec": "feature spec",
        "alert_flood": "alert rate",
    }[case]
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


def test_live_alert_jump_rolls_back_to_previous(
    agent: ModelAgent, kit: ModelKit, edge_kafka: KafkaSettings
) -> None:
    before = _install_running(agent, kit, edge_kafka)
    before_version = agent.store.active_version("payments")
    new = kit.variant()
    outcome = deliver(agent, edge_kafka, *kit.message(new))
    assert outcome.state == "active"
    # The scorer now scores with the new model, and it alerts on every event.
    scores = [
        encode(
            Score(
                event_id=f"s-{i}",
                ts=time.time(),
                stream="payments",
                token="cardtoken0001",
                score=9.0,
                threshold=1.0,
                model_version=outcome.version,
                anomalous=True,
            )
        )
        for i in range(150)
    ]
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


def test_scorer_that_never_switches_triggers_rollback(
    agent: ModelAgent, kit: ModelKit, edge_kafka: KafkaSettings
) -> None:
    before = _install_running(agent, kit, edge_kafka)
    outcome = deliver(agent, edge_kafka, *kit.message(kit.variant()))
    assert outcome.state == "active"
    old = [
        encode(
            Score(
                event_id=f"o-{i}",
                ts=time.time(),
                stream="payments",
                token="cardtoken0001",
                score=0.1,
                threshold=1.0,
                model_version="still-the-old-one",
                anomalous=False,
            )
        )
        for i in range(20)
    ]
    produce_all(edge_kafka, topics.SCORES_PAYMENTS, ((None, v) for v in old))
    deadline = time.monotonic() + 30
    while "payments" in agent.watches and time.monotonic() < deadline:
        agent.step(0.2)
    assert agent.statuses[-1].state == "rolled_back"
    assert "could not load" in agent.statuses[-1].reason
    assert agent.store.link("payments").resolve() == before


def test_a_replayed_older_release_is_refused_and_cannot_flip_models(
    agent: ModelAgent, kit: ModelKit, edge_kafka: KafkaSettings
) -> None:
    recent_window(edge_kafka, kit, seed=3)
    old_key, old_value = kit.message(kit.variant("pay-old", threshold=kit.manifest.threshold * 50))
    new_key, new_value = kit.message(kit.variant("pay-new"))
    assert deliver(agent, edge_kafka, old_key, old_value).state == "active"
    assert deliver(agent, edge_kafka, new_key, new_value).state == "active"
    # An attacker who can write cloud.models replays the older, validly signed message.
    outcome = deliver(agent, edge_kafka, old_key, old_value)
    assert outcome.state == "rejected" and "not newer than release" in outcome.reason
    assert agent.store.active_version("payments") == "pay-new"
    # The current one again is no change, and flipping back still fails.
    assert deliver(agent, edge_kafka, new_key, new_value).state == "skipped"
    assert deliver(agent, edge_kafka, old_key, old_value).state == "rejected"
    assert agent.store.active_version("payments") == "pay-new"
    # Going back to the older model is the cloud's call: a new release of it, numbered higher.
    outcome = deliver(agent, edge_kafka, *kit.message(kit.root / "variants" / "pay-old"))
    assert outcome.state == "active" and agent.store.active_version("payments") == "pay-old"


@pytest.mark.parametrize(
    "case", ["expired", "other_fleet", "untrusted_key", "no_release", "release_of_another_model"]
)
def test_releases_that_are_not_for_this_gateway_now_are_refused(
    case: str, agent: ModelAgent, kit: ModelKit, edge_kafka: KafkaSettings
) -> None:
    running = _install_running(agent, kit, edge_kafka)
    model = kit.variant()
    expect = {
        "expired": "expired at",
        "other_fleet": "is for fleet 'other'",
        "untrusted_key": "which this gateway does not trust",
        "no_release": "carries no signed release",
        "release_of_another_model": "the release names payments",
    }[case]
    if case == "expired":
        key, value = kit.message(model, now=time.time() - 7200, ttl_s=3600)
    elif case == "other_fleet":
        key, value = kit.message(model, fleet="other")
    elif case == "untrusted_key":
        key, value = kit.message(model, release_key=generate_private_key())
    elif case == "no_release":
        key, value = kit.message(model)
        value = msgspec.json.encode(
            msgspec.structs.replace(model_bundle.unpack(value), release=b"")
        )
    else:  # a genuine release, attached to another (validly signed) model's files
        _, other = kit.message(kit.variant())
        key, value = kit.message(model)
        value = msgspec.json.encode(
            msgspec.structs.replace(
                model_bundle.unpack(value), release=model_bundle.unpack(other).release
            )
        )
    outcome = deliver(agent, edge_kafka, key, value)
    assert outcome.state == "rejected" and expect in outcome.reason, outcome.reason
    assert agent.store.link("payments").resolve() == running


def test_key_rotation_without_an_outage(
    kit: ModelKit, edge_kafka: KafkaSettings, tmp_path: Path
) -> None:
    """Gateways trust old and new key; the cloud signs with the new one; the old is retired."""
    new = generate_private_key()
    new_pub = tmp_path / "new.pub"
    write_public_key(new, new_pub)
    recent_window(edge_kafka, kit, seed=4)
    both = agent_config(edge_kafka, tmp_path, [kit.public_key, new_pub])
    skip_to_end(edge_kafka, f"{both.edge_id}-agent")
    a = ModelAgent(both).start()
    try:
        assert deliver(a, edge_kafka, *kit.message(kit.variant("rot-old"))).state == "active"
        signed_new = kit.variant("rot-new", key=new)
        outcome = deliver(a, edge_kafka, *kit.message(signed_new, release_key=new))
        assert outcome.state == "active", outcome.reason
    finally:
        a.close()
    # The old key retired: the same gateway (same models, same state) trusts only the new one.
    retired = msgspec.structs.replace(
        both, scorer=msgspec.structs.replace(both.scorer, public_keys=[new_pub])
    )
    a = ModelAgent(retired).start()
    try:
        assert load_model(a.store.link("payments"), "payments", retired.scorer.trusted_keys())
        outcome = a.handle(*kit.message(kit.variant("rot-stale")))  # signed by the old key
        assert outcome.state == "rejected" and "does not trust" in outcome.reason
        outcome = deliver(
            a, edge_kafka, *kit.message(kit.variant("rot-next", key=new), release_key=new)
        )
        assert outcome.state == "active", outcome.reason
    finally:
        a.close()
