"""The model half of the closed loop through the real MirrorMaker 2, one gateway.

registry (champion) -> publisher -> cloud ``models`` -> MirrorMaker 2 -> the gateway's
``cloud.models`` -> agent (verify, shadow, switch) -> ``model-status`` -> MirrorMaker 2 -> the
cloud's ``<edge_id>.model-status``. A model with one byte flipped on the cloud topic is
refused at the gateway, and the refusal is what the cloud sees.

The full drift scenario with two gateways (simulator drift -> retrain -> both gateways switch ->
false alerts fall) builds on this and on the trainer-service test in
tests/integration/model_loop/test_cloud_loop.py.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cloud.publisher import Publisher
from cloud.registry import Registry
from edge.agent.agent import ModelAgent
from edge.config import AgentSettings, EdgeConfig, KafkaSettings, ScorerSettings
from shared import topics
from shared.contracts import ModelStatus, decode
from shared.infra.mirror import Mirror
from shared.infra.stack import Stack
from tests.agent_models import ModelKit, flip_byte, recent_window
from tests.support import consume_all, produce_all

pytestmark = pytest.mark.integration
EDGE_ID = "edge-loop"


@pytest.fixture(scope="module")
def mirror(stack: Stack, cloud_bootstrap: str) -> Iterator[Mirror]:
    mm = stack.mirror(EDGE_ID)
    mm.start()
    try:
        mm.wait_healthy(240)
        yield mm
    finally:
        mm.stop()


def _until(agent: ModelAgent, version: str, timeout: float = 180.0) -> str:
    """Step the agent until it has dealt with ``version``; returns the final state."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = agent.step(0.5)
        if out is not None and out.version == version:
            return out.state
    raise AssertionError(f"{version} never reached the gateway's agent")


def _cloud_sees(cloud_bootstrap: str, mirror: Mirror, version: str, state: str,
                timeout: float = 180.0) -> ModelStatus:
    topic = mirror.cloud_topic(topics.MODEL_STATUS)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            msgs = consume_all(cloud_bootstrap, topic, timeout=15, idle=2)
        except KeyError:  # the topic appears with the first replicated record
            msgs = []
        for m in msgs:
            s = decode(ModelStatus, m.value())
            if s.edge_id == EDGE_ID and s.version == version and s.state == state:
                return s
        time.sleep(2)
    raise AssertionError(f"the cloud never saw {EDGE_ID} report {version} {state}")


def test_champion_reaches_the_gateway_and_its_status_comes_back(
        mirror: Mirror, stack: Stack, cloud_bootstrap: str, edge_bootstrap: str,
        tmp_path: Path) -> None:
    kit = ModelKit.shared()
    registry = Registry(tmp_path / "registry").start()
    config = EdgeConfig(edge_id=EDGE_ID, data_dir=tmp_path,
                        kafka=KafkaSettings(bootstrap=edge_bootstrap),
                        scorer=ScorerSettings(models_dir=tmp_path / "models",
                                              public_key=kit.public_key),
                        agent=AgentSettings(shadow_window=600))
    agent = ModelAgent(config).start()
    try:
        recent_window(edge_bootstrap, kit, seed=41)
        champion = registry.register(kit.variant("loop-v1"), state="champion")
        with Publisher(cloud_bootstrap) as pub:
            pub.publish(champion)
        assert _until(agent, "loop-v1") == "active"
        assert agent.store.active_version("payments") == "loop-v1"
        active = _cloud_sees(cloud_bootstrap, mirror, "loop-v1", "active")
        print(f"\ncloud sees {active.edge_id}: {active.version} {active.state} ({active.reason})")

        key, value = kit.message(kit.variant("loop-tampered"))
        produce_all(cloud_bootstrap, topics.MODELS, [(key, flip_byte(value))])
        assert _until(agent, "loop-tampered") == "rejected"
        assert agent.store.active_version("payments") == "loop-v1"
        refused = _cloud_sees(cloud_bootstrap, mirror, "loop-tampered", "rejected")
        assert "signature does not match" in refused.reason
        print(f"cloud sees {refused.edge_id}: {refused.version} rejected ({refused.reason})")
    finally:
        agent.close()
        registry.close()
