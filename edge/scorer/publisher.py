"""Payment decisions to vehicles over MQTT (``fleet/{vin}/commands``, QoS 1).

Decisions go out as soon as a batch is scored, before its Kafka transaction commits: the
vehicle is waiting at the pump. A crash between the two replays the batch and re-sends the
same decision (same ``event_id``), which a vehicle treats as a duplicate. At-least-once is the
right side to err on here: a lost decision leaves a driver stuck.
"""

from __future__ import annotations

import logging
import threading

import paho.mqtt.client as mqtt

from edge.bridge.bridge import mqtt_password
from edge.config import EdgeConfig
from edge.scorer.decisions import commands_topic
from edge.scorer.errors import ScorerError
from shared.contracts import Decision, encode

log = logging.getLogger("scorer.mqtt")


class DecisionPublisher:
    """One MQTT connection for decisions. Constructing it does no I/O."""

    def __init__(self, config: EdgeConfig, client_id: str) -> None:
        self.config = config
        self.client_id = client_id
        self._client: mqtt.Client | None = None
        self._connected = threading.Event()
        self.published = 0

    def start(self, timeout: float = 15.0) -> None:
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=self.client_id,
                        protocol=mqtt.MQTTv5)
        c.username_pw_set(self.config.mqtt.username, mqtt_password(self.config))
        if self.config.mqtt.tls_ca is not None:
            c.tls_set(ca_certs=str(self.config.mqtt.tls_ca))
        c.max_queued_messages_set(0)
        c.max_inflight_messages_set(1000)
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.connect_async(self.config.mqtt.host, self.config.mqtt.port, keepalive=30)
        c.loop_start()
        self._client = c
        if not self._connected.wait(timeout):
            self.close()
            raise ScorerError(f"cannot reach MQTT at {self.config.mqtt.host}:"
                              f"{self.config.mqtt.port} within {timeout:.0f}s")

    def _on_connect(self, _c: mqtt.Client, _u: object, _f: object, reason: object,
                    _p: object) -> None:
        if getattr(reason, "is_failure", False):
            log.error("MQTT connect refused: %s", reason)
            return
        self._connected.set()

    def _on_disconnect(self, _c: mqtt.Client, _u: object, _f: object, reason: object,
                       _p: object) -> None:
        self._connected.clear()
        log.warning("MQTT disconnected (%s); reconnecting", reason)

    def publish(self, vin: str, decision: Decision) -> None:
        if self._client is None:
            raise ScorerError("DecisionPublisher.publish before start()")
        # Queued by paho while reconnecting; QoS 1 re-sends until the broker acknowledges.
        self._client.publish(commands_topic(vin), encode(decision), qos=1)
        self.published += 1

    def close(self) -> None:
        if self._client is not None:
            self._client.disconnect()
            self._client.loop_stop()
            self._client = None
