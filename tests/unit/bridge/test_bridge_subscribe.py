"""A bridge whose subscriptions the broker refuses stops with the reason, not silently idle."""

from __future__ import annotations

import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

from edge.bridge import Bridge
from edge.bridge.errors import BridgeError
from edge.config import EdgeConfig


def _codes(*names: str) -> list[ReasonCode]:
    return [ReasonCode(PacketTypes.SUBACK, name) for name in names]


def test_granted_subscriptions_keep_the_bridge_running() -> None:
    bridge = Bridge(EdgeConfig())
    n = len(bridge._subscriptions())
    bridge._on_subscribe(None, None, 1, _codes(*["Granted QoS 1"] * n), None)  # type: ignore[arg-type]
    assert bridge._fatal is None


def test_a_refused_subscription_is_fatal_and_named() -> None:
    bridge = Bridge(EdgeConfig())
    topics = bridge._subscriptions()
    codes = _codes("Granted QoS 1", *["Not authorized"] * (len(topics) - 1))
    bridge._on_subscribe(None, None, 1, codes, None)  # type: ignore[arg-type]
    assert bridge._fatal is not None and topics[-1] in bridge._fatal
    bridge._client = bridge._producer = object()  # type: ignore[assignment]
    with pytest.raises(BridgeError, match="refused 'fleetsentry-bridge'"):
        bridge.step()
