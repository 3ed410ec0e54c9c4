"""Payment decisions to vehicles over MQTT (``fleet/{vin}/commands``, QoS 1).

Decisions go out as soon as a batch is scored, before its Kafka transaction commits: the
vehicle is waiting at the pump. The scorer commits a batch only once the broker has
acknowledged (PUBACK) every decision of it (``wait_acknowledged``), so a crash at any point
either replays the batch, and re-sends the same decision (same ``event_id``, which a vehicle
treats as a duplicate), or finds its decisions already with the broker. At-least-once is the
right side to err on here: a lost decision leaves a driver stuck.
"""

from __future__ import annotations

import logging
import threading
import time

import paho.mqtt.client as mqtt

from edge.config import EdgeConfig
from edge.mqtt_login import mqtt_password
from edge.scorer.decisions import commands_topic
from edge.scorer.errors import ScorerError
from shared.contracts import Decision, encode

log = logging.getLogger("scorer.mqtt")

# How long close() waits for the broker to acknowledge decisions still in flight. Those of a
# committed batch are acknowledged already; what is left belongs to a batch that was not
# committed and is scored, and its decisions sent, again by the next scorer.
CLOSE_WAIT_S = 5.0


class DecisionPublisher:
    """One MQTT connection for decisions. Constructing it does no I/O."""

    def __init__(self, config: EdgeConfig, client_id: str) -> None:
        self.config = config
        self.client_id = client_id
        self._client: mqtt.Client | None = None
        self._connected = threading.Event()
        self.published = 0
        # Message ids published and not yet acknowledged; a PUBACK may arrive before publish()
        # has recorded its id (the network thread is fast on loopback): then it waits in _early.
        self._acks = threading.Condition()
        self._unacked: set[int] = set()
        self._early: set[int] = set()

    def start(self, timeout: float = 15.0) -> None:
        c = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=self.client_id, protocol=mqtt.MQTTv5
        )
        c.username_pw_set(self.config.mqtt.username, mqtt_password(self.config))
        if self.config.mqtt.tls_ca is not None:
            c.tls_set(ca_certs=str(self.config.mqtt.tls_ca))
        c.max_queued_messages_set(0)
        c.max_inflight_messages_set(1000)
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_publish = self._on_publish
        c.connect_async(self.config.mqtt.host, self.config.mqtt.port, keepalive=30)
        c.loop_start()
        self._client = c
        if not self._connected.wait(timeout):
            self.close()
            raise ScorerError(
                f"cannot reach MQTT at {self.config.mqtt.host}:"
                f"{self.config.mqtt.port} within {timeout:.0f}s"
            )

    def _on_connect(
        self, _c: mqtt.Client, _u: object, _f: object, reason: object, _p: object
    ) -> None:
        if getattr(reason, "is_failure", False):
            log.error("MQTT connect refused: %s", reason)
            return
        self._connected.set()

    def _on_disconnect(
        self, _c: mqtt.Client, _u: object, _f: object, reason: object, _p: object
    ) -> None:
        self._connected.clear()
        log.warning("MQTT disconnected (%s); reconnecting", reason)

    def _on_publish(
        self, _c: mqtt.Client, _u: object, mid: int, reason: object, _p: object
    ) -> None:
        if getattr(reason, "is_failure", False):
            # Acknowledged, but refused (e.g. not authorized): sending it again cannot help.
            log.error("MQTT broker refused decision message %d: %s", mid, reason)
        with self._acks:
            if mid in self._unacked:
                self._unacked.discard(mid)
            else:
                self._early.add(mid)
            self._acks.notify_all()

    def publish(self, vin: str, decision: Decision) -> None:
        if self._client is None:
            raise ScorerError("DecisionPublisher.publish before start()")
        # Kept by paho while disconnected (no queue limit, see start()) and re-sent after a
        # reconnect until the broker acknowledges it.
        info = self._client.publish(commands_topic(vin), encode(decision), qos=1)
        if info.rc == mqtt.MQTT_ERR_QUEUE_SIZE:  # 65,535 message ids all in flight
            raise ScorerError(
                f"cannot queue the decision for event {decision.event_id}: "
                f"too many decisions wait for the MQTT broker; is it up?"
            )
        with self._acks:
            if info.mid in self._early:
                self._early.discard(info.mid)
            else:
                self._unacked.add(info.mid)
        self.published += 1

    def unacknowledged(self) -> int:
        """Decisions published that the broker has not acknowledged yet."""
        with self._acks:
            return len(self._unacked)

    def wait_acknowledged(self, timeout: float) -> int:
        """Wait up to ``timeout`` s for the broker to acknowledge every decision published so
        far; return how many it has not (0: all of them are with the broker)."""
        deadline = time.monotonic() + timeout
        with self._acks:
            while self._unacked:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._acks.wait(left)
            return len(self._unacked)

    def close(self, timeout: float = CLOSE_WAIT_S) -> None:
        """Wait (bounded) for the decisions in flight, then disconnect."""
        if self._client is None:
            return
        # Also while reconnecting: paho re-sends what is in flight once the broker is back.
        left = self.wait_acknowledged(timeout)
        if left:
            log.warning(
                "closing with %d decisions the MQTT broker has not acknowledged after "
                "%.0fs; their batch is not committed and is scored again on restart",
                left,
                timeout,
            )
        self._client.disconnect()
        self._client.loop_stop()
        self._client = None
