"""The vehicles' MQTT client: a cheaper hot path for thousands of sessions on one selector loop.

On top of :class:`shared.mqtt_wire.BufferedClient` (buffered reads, coalesced writes), two
per-message costs of stock paho go: it builds a reason-code object and a properties object
for every PUBACK, and builds a condition variable, validates and logs for every QoS 1
publish. At 10,000 events/s that overhead, not the simulation, bounds a process. So:

* a PUBACK that says "success" without properties (what brokers send almost always) is
  handled in place with shared, read-only reason-code and properties objects; anything
  else (a refusal, a reason string) goes through paho's decoder;
* a plain QoS 1 publish builds the same packet bytes paho would, without per-call checks,
  logging or a condition variable (nothing in a selector loop may block on one anyway).

It relies on private attributes of paho-mqtt 2.x (pinned ``>=2.1,<3`` in pyproject.toml);
:func:`check_compatible` fails loudly if they move, and tests/unit/sim/test_wire.py checks
the bytes against paho's own.
"""

from __future__ import annotations

import struct
from typing import Any

import paho.mqtt.client as mqtt
from firmware_sim.errors import SimError
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from shared.mqtt_wire import INTERNALS, PUBACK, PUBLISH, BufferedClient, missing_internals

# Shared, never mutated: one reason-code object per successful PUBACK code.
_PUBACK_CODES = {
    0: ReasonCode(PacketTypes.PUBACK, identifier=0),
    0x10: ReasonCode(PacketTypes.PUBACK, identifier=0x10),
}
_NO_PROPS = Properties(PacketTypes.PUBACK)
_MID = struct.Struct("!H")
_REQUIRED = (
    *INTERNALS,
    "_do_on_publish",
    "_out_message_mutex",
    "_out_messages",
    "_mid_generate",
    "_raise_for_invalid_topic",
    "_max_queued_messages",
    "_max_inflight_messages",
    "_inflight_messages",
    "_call_socket_register_write",
    "_packet_queue",
    "_sockpairW",
    "_on_socket_register_write",
    "_update_inflight",
    "_on_publish",
    "_in_callback_mutex",
)


def check_compatible() -> None:
    missing = missing_internals(_REQUIRED)
    if missing:
        raise SimError(
            f"paho-mqtt {getattr(mqtt, '__version__', '?')} lacks {missing}; "
            "install paho-mqtt>=2.1,<3"
        )


class _LoopInfo(mqtt.MQTTMessageInfo):
    """Message info without a condition variable: sessions driven by one selector loop learn
    of acks through ``on_publish`` and never block waiting for one."""

    __slots__ = ()

    def __init__(self, mid: int) -> None:  # no super().__init__: that builds the Condition
        self.mid = mid
        self._published = False
        self._condition = None  # type: ignore[assignment]
        self.rc = MQTTErrorCode.MQTT_ERR_SUCCESS
        self._iterpos = 0

    def _set_as_published(self) -> None:
        self._published = True

    def wait_for_publish(self, timeout: float | None = None) -> None:
        if not self._published:
            raise SimError("this session is driven by a selector loop; use on_publish")

    def is_published(self) -> bool:
        return self._published


def _new_message(mid: int, topic: bytes, payload: bytes) -> mqtt.MQTTMessage:
    """What ``MQTTMessage(mid, topic)`` builds for an outgoing QoS 1 event, cheaper."""
    m = mqtt.MQTTMessage.__new__(mqtt.MQTTMessage)
    m.timestamp = mqtt.time_func()
    m.state = mqtt.mqtt_ms_invalid
    m.dup = False
    m.mid = mid
    m._topic = topic
    m.payload = payload
    m.qos = 1
    m.retain = False
    m.info = _LoopInfo(mid)
    m.properties = None
    return m


class FastClient(BufferedClient):
    """``BufferedClient`` with a fast PUBACK path and a cheaper QoS 1 publish."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        try:
            super().__init__(*args, **kwargs)
        except ValueError as exc:
            raise SimError(str(exc)) from None
        self._topics: dict[str, bytes] = {}

    def _take(self, command: int, length: int, body: int, end: int) -> MQTTErrorCode | None:
        buf = self._rbuf
        if command == PUBACK and length <= 4:
            # mid [reason code [properties length = 0]]: brokers say "success" or, with no
            # subscriber yet, "no matching subscribers" (0x10); neither carries properties.
            code = buf[body + 2] if length > 2 else 0
            if (length < 4 or buf[body + 3] == 0) and code in _PUBACK_CODES:
                mid = buf[body] << 8 | buf[body + 1]
                self._consumed(end)
                with self._out_message_mutex:
                    if mid in self._out_messages:
                        return self._do_on_publish(mid, _PUBACK_CODES[code], _NO_PROPS)
                return MQTTErrorCode.MQTT_ERR_SUCCESS
        return None  # anything else: paho's decoder

    # --- publishing ---------------------------------------------------------------------------

    def publish(
        self,
        topic: str,
        payload: Any = None,
        qos: int = 0,
        retain: bool = False,
        properties: Properties | None = None,
    ) -> mqtt.MQTTMessageInfo:
        """paho's QoS 1 publish without its per-call checks and logging (same state changes).

        Anything but a plain QoS 1 event (retained status, properties, QoS 0/2) takes paho's
        own path.
        """
        if qos != 1 or retain or properties is not None or type(payload) is not bytes:
            return super().publish(topic, payload, qos, retain, properties)
        topic_bytes = self._topics.get(topic)
        if topic_bytes is None:
            topic_bytes = topic.encode()
            self._raise_for_invalid_topic(topic_bytes)
            self._topics[topic] = topic_bytes
        mid = self._mid_generate()
        message = _new_message(mid, topic_bytes, payload)
        info = message.info
        with self._out_message_mutex:
            if mid in self._out_messages or 0 < self._max_queued_messages <= len(
                self._out_messages
            ):
                info.rc = MQTTErrorCode.MQTT_ERR_QUEUE_SIZE
                return info
            self._out_messages[mid] = message
            if (
                self._max_inflight_messages
                and self._inflight_messages >= self._max_inflight_messages
            ):
                message.state = mqtt.mqtt_ms_queued
                info.rc = MQTTErrorCode.MQTT_ERR_SUCCESS
                return info
            self._inflight_messages += 1
            message.state = mqtt.mqtt_ms_wait_for_puback
            rc = self._queue_publish(mid, topic_bytes, payload, info)
            if rc == MQTTErrorCode.MQTT_ERR_NO_CONN:
                # sent after the next CONNACK, as paho does
                self._inflight_messages -= 1
                message.state = mqtt.mqtt_ms_publish
            info.rc = rc
            return info

    def _queue_publish(
        self, mid: int, topic: bytes, payload: bytes, info: mqtt.MQTTMessageInfo
    ) -> MQTTErrorCode:
        if self._sock is None:
            return MQTTErrorCode.MQTT_ERR_NO_CONN
        # fixed header, topic, packet id, empty MQTT 5 properties, payload
        remaining = 2 + len(topic) + 2 + 1 + len(payload)
        packet = bytearray(b"\x32")
        while True:
            byte, remaining = remaining & 127, remaining >> 7
            packet.append(byte | 128 if remaining else byte)
            if not remaining:
                break
        packet += _MID.pack(len(topic))
        packet += topic
        packet += _MID.pack(mid)
        packet += b"\x00"
        packet += payload
        if self._sockpairW is not None or self._on_socket_register_write is None:
            return self._packet_queue(PUBLISH, packet, mid, 1, info)  # not in a selector loop
        # paho's _packet_queue, minus the wake-up of a network thread there is none of
        self._out_packet.append(
            {
                "command": PUBLISH,
                "mid": mid,
                "qos": 1,
                "pos": 0,
                "to_process": len(packet),
                "packet": packet,
                "info": info,
            }
        )
        self._call_socket_register_write()
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    def _do_on_publish(
        self, mid: int, reason_code: ReasonCode, properties: Properties
    ) -> MQTTErrorCode:
        """paho's, except that it looks for queued messages only when there can be some."""
        on_publish = self._on_publish
        if on_publish is not None:
            with self._in_callback_mutex:
                try:
                    on_publish(
                        self,
                        self._userdata,
                        mid,
                        reason_code,  # type: ignore[call-arg]
                        properties,
                    )
                except Exception as err:
                    self._easy_log(mqtt.MQTT_LOG_ERR, "Caught exception in on_publish: %s", err)
                    if not self.suppress_exceptions:
                        raise
        msg = self._out_messages.pop(mid)
        msg.info._set_as_published()
        if msg.qos > 0:
            self._inflight_messages -= 1
            if (
                self._max_inflight_messages > 0
                and len(self._out_messages) > self._inflight_messages
            ):
                return self._update_inflight()
        return MQTTErrorCode.MQTT_ERR_SUCCESS
