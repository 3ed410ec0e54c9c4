"""Episode state written by an older scorer, under the bare group id, against the real edge
Kafka: a gateway upgraded in place carries its open episodes over, rewrites them under the
stream's key, and deletes the old keys, so no closed episode comes back on a later restart."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest

from edge.scorer.scorer import ScorerService
from shared import topics
from shared.contracts import Alert
from shared.kafka_config import KafkaSettings
from tests.conftest import MqttBroker
from tests.integration.scorer.test_scorer_service import (
    edge_config,
    models,
    running,
    telemetry,
    wait_for,
    wait_until,
)
from tests.support import consume_all, produce_all

__all__ = ["models"]  # the module's fixture: both streams' models signed with one key

pytestmark = pytest.mark.integration

T0 = 1_700_000_000.0


def _latest(bootstrap: KafkaSettings, prefix: str) -> dict[str, bytes | None]:
    """The last value of each scorer.episodes key that starts with ``prefix``."""
    out: dict[str, bytes | None] = {}
    for m in consume_all(bootstrap, topics.SCORER_EPISODES, idle=1.5, timeout=20):
        key = (m.key() or b"").decode()
        if key.startswith(prefix):
            out[key] = m.value()
    return out


def test_episodes_under_the_old_bare_keys_carry_over_and_the_old_keys_are_deleted(
    tmp_path: Path,
    edge_kafka: KafkaSettings,
    mqtt_broker: MqttBroker,
    models: tuple[Path, Path, dict[str, Any]],
) -> None:
    models_dir, pub, data = models
    cfg = edge_config(tmp_path, edge_kafka, mqtt_broker, models_dir, pub)
    run_id = f"k{uuid.uuid4().hex[:10]}"
    faulty = f"{run_id}-veh-faulty"
    frames = telemetry(data["telemetry"], run_id, faulty, T0, 150, anomalous=range(40, 90))
    produce_all(edge_kafka, topics.ANON_TELEMETRY, frames[:60])
    with running(ScorerService(cfg)) as svc:
        opened = wait_for(edge_kafka, topics.ALERTS, Alert, run_id, 1)
        group = svc.group_id
    assert opened[0].state == "open"
    ours = f"{group}@telemetry/{faulty}"
    state = _latest(edge_kafka, ours).get(ours)
    assert state is not None, "the open episode's state is not under the stream's key"
    # What an older scorer left: the same state under the bare group id, nothing under the
    # stream's key.
    bare = f"{group}/{faulty}"
    produce_all(edge_kafka, topics.SCORER_EPISODES, [(ours.encode(), None)])
    produce_all(edge_kafka, topics.SCORER_EPISODES, [(bare.encode(), state)])

    upgraded = ScorerService(cfg)
    with running(upgraded):
        assert upgraded.open_episodes() == 1, "the episode under the old key was not restored"
        produce_all(edge_kafka, topics.ANON_TELEMETRY, frames[60:])
        alerts = wait_until(
            edge_kafka,
            topics.ALERTS,
            Alert,
            run_id,
            lambda got: any(a.state == "closed" for a in got),
            timeout=90,
        )
    states = [a.state for a in alerts if a.state != "update"]
    assert states == ["open", "closed"], states
    assert len({a.alert_id for a in alerts}) == 1, "the carried-over episode became another"
    latest = _latest(edge_kafka, f"{group}")
    assert latest[bare] is None, "the old key was not deleted"
    assert latest[ours] is None  # the episode closed

    again = ScorerService(cfg)
    with running(again):
        assert again.open_episodes() == 0, "a closed episode came back from the old key"
