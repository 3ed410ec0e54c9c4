"""The bridge's MQTT client: PUBLISHes taken in place, PUBACKs sent in batches.

Receiving one message through stock paho costs more CPU than everything else the bridge does
with it: three ``recv`` calls per packet, a decoded properties object, a debug log line, a
condition variable per message, and with manual acknowledgements one ``send`` per PUBACK.
:class:`IntakeClient` keeps paho for the session (CONNECT, CONNACK, SUBSCRIBE, keepalive,
reconnect, DISCONNECT) and, on top of :class:`shared.mqtt_wire.BufferedClient`'s buffered
reads, changes two things:

* a QoS 0 or 1 PUBLISH is parsed in place from the read buffer into an ``MQTTMessage`` with
  the topic, payload, packet id, QoS, dup and retain paho would give it (its MQTT 5
  properties are skipped, not decoded: the bridge reads none, and without a Topic Alias
  Maximum in CONNECT the broker may send no topic alias) and handed to ``on_message``;
  anything else, a QoS 2 PUBLISH included, goes through paho's decoder;
* ``ack(mid, 1)`` appends the 4-byte PUBACK paho would send to a buffer, and
  :meth:`IntakeClient.flush_acks` writes all of them with one ``send``. An ack is still sent
  only when the bridge calls ``ack`` (after Kafka's delivery report or the spool's fsync);
  acks of a connection that dropped are discarded with it (the broker redelivers).

Checked against paho in tests/unit/bridge/test_intake.py: the same packets, split across
reads at every byte, give the messages paho's own decoder gives, and the acks are paho's
bytes.
"""

from __future__ import annotations

import struct
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import MQTTErrorCode

from edge.bridge.errors import BridgeError
from shared.mqtt_wire import INTERNALS, PUBACK, PUBLISH, BufferedClient, missing_internals

_PUBACK_HEAD = bytes([PUBACK, 2])
_MID = struct.Struct("!H")
_REQUIRED = (*INTERNALS, "_on_message", "_userdata", "_manual_ack")


def check_compatible() -> None:
    """Refuse to run on a paho-mqtt whose internals moved (pinned ``>=2.1,<3``)."""
    missing = missing_internals(_REQUIRED)
    if missing:
        raise BridgeError(
            f"paho-mqtt {getattr(mqtt, '__version__', '?')} lacks {missing}; "
            "install paho-mqtt>=2.1,<3"
        )


class IntakeClient(BufferedClient):
    """An MQTT 5 subscriber with manual acknowledgements, for the bridge's hot path."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._acks = bytearray()
        super().__init__(*args, **kwargs)
        if not self._manual_ack:
            raise ValueError("IntakeClient acknowledges only when told: pass manual_ack=True")

    def _take(self, command: int, length: int, body: int, end: int) -> MQTTErrorCode | None:
        if command & 0xF0 != PUBLISH:
            return None
        qos = (command >> 1) & 3
        if qos == 2:
            return None
        buf = self._rbuf
        if length < 3:
            return None  # too short to hold a topic length and properties: paho refuses it
        topic_end = body + 2 + (buf[body] << 8 | buf[body + 1])
        p = topic_end
        mid = 0
        if qos:
            if p + 2 > end:
                return None
            mid = buf[p] << 8 | buf[p + 1]
            p += 2
        # MQTT 5 properties: a variable byte integer length, then that many bytes.
        props, mult = 0, 1
        while True:
            if p >= end or mult > 128**3:
                return None
            b = buf[p]
            p += 1
            props += (b & 127) * mult
            if not b & 128:
                break
            mult *= 128
        p += props
        if p > end:
            return None
        topic, payload = bytes(buf[body + 2 : topic_end]), bytes(buf[p:end])
        self._consumed(end)
        msg = mqtt.MQTTMessage.__new__(mqtt.MQTTMessage)
        msg.timestamp = 0.0
        msg.state = mqtt.mqtt_ms_invalid
        msg.dup = bool(command & 8)
        msg.mid = mid
        msg._topic = topic
        msg.payload = payload
        msg.qos = qos
        msg.retain = bool(command & 1)
        msg.info = None  # type: ignore[assignment]  # only outgoing messages have one
        msg.properties = None
        on_message = self._on_message
        if on_message is not None:
            on_message(self, self._userdata, msg)
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    def ack(self, mid: int, qos: int) -> MQTTErrorCode:
        """Queue the PUBACK of a QoS 1 message (written by :meth:`flush_acks`)."""
        if qos == 1:
            if self._sock is not None:
                self._acks += _PUBACK_HEAD
                self._acks += _MID.pack(mid)
            return MQTTErrorCode.MQTT_ERR_SUCCESS
        return super().ack(mid, qos)

    def pending_acks(self) -> int:
        return len(self._acks) // 4

    def flush_acks(self) -> MQTTErrorCode:
        """Write every queued PUBACK (one ``send``; the rest, if the socket is full, with the
        next loop pass)."""
        if not self._acks:
            return MQTTErrorCode.MQTT_ERR_SUCCESS
        packet, self._acks = bytes(self._acks), bytearray()
        if self._sock is None:
            return MQTTErrorCode.MQTT_ERR_NO_CONN
        self._out_packet.append(
            {
                "command": PUBACK,
                "mid": 0,
                "qos": 1,
                "pos": 0,
                "to_process": len(packet),
                "packet": packet,
                "info": None,
            }
        )
        return self.loop_write()

    def _sock_close(self) -> None:
        # The broker redelivers what this connection did not acknowledge; its packet ids
        # may be reused by the next one, so its queued acks must never be sent there.
        self._acks.clear()
        super()._sock_close()
