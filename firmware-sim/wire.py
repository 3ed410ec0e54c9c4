"""A paho client with a cheaper hot path for thousands of sessions on one selector loop.

Stock paho reads a packet with three ``recv`` calls (command byte, length byte, body), builds a
reason-code object and a properties object for every PUBACK, builds a condition variable for
every QoS 1 message, validates and logs every publish, and sends every queued packet with its
own ``send``. At 10,000 events/s that per-message overhead, not the simulation, bounds a
process. This subclass keeps paho's protocol state machine (connect, persistent session,
resend of unacknowledged messages on reconnect, will, subscribe, keepalive, in-flight limit)
and changes only the plumbing around it:

* reads fill a 64 KiB buffer with one ``recv`` and every whole packet in it is handled;
* a PUBACK that says "success" without properties (what brokers send almost always) is
  handled in place with shared, read-only reason-code and properties objects; anything
  else (a refusal, a reason string) goes through paho's decoder;
* a plain QoS 1 publish builds the same packet bytes paho would, without per-call checks,
  logging or a condition variable (nothing in a selector loop may block on one anyway);
* queued packets are written with one ``send`` per socket per loop pass.

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
from paho.mqtt.exception import MalformedPacket
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

READ_CHUNK = 65536
# Only these packets finish with nothing to do but "sent": PUBLISH QoS 1/2, PUBACK,
# SUBSCRIBE, PINGREQ... Anything else (QoS 0 PUBLISH, DISCONNECT) goes through paho's own path.
_PUBLISH = 0x30
_DISCONNECT = 0xE0
_PUBACK = 0x40
# Shared, never mutated: one reason-code object per successful PUBACK code.
_PUBACK_CODES = {0: ReasonCode(PacketTypes.PUBACK, identifier=0),
                 0x10: ReasonCode(PacketTypes.PUBACK, identifier=0x10)}
_NO_PROPS = Properties(PacketTypes.PUBACK)
_MID = struct.Struct("!H")
_REQUIRED = ("_packet_handle", "_loop_rc_handle", "_last_bytes_received", "_sock_close",
             "_sock_recv", "_sock_send", "_packet_read", "_packet_write", "_out_packet",
             "_in_packet", "_do_on_publish", "_out_message_mutex",
             "_out_messages", "_last_msg_out", "_msgtime_mutex", "_mid_generate",
             "_raise_for_invalid_topic", "_max_queued_messages", "_max_inflight_messages",
             "_inflight_messages", "_call_socket_register_write", "_packet_queue", "_sockpairW",
             "_on_socket_register_write", "_update_inflight", "_on_publish",
             "_in_callback_mutex", "_callback_api_version", "_protocol")


def check_compatible() -> None:
    probe = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    missing = [name for name in _REQUIRED if not hasattr(probe, name)]
    if missing:
        raise SimError(f"paho-mqtt {getattr(mqtt, '__version__', '?')} lacks {missing}; "
                       "install paho-mqtt>=2.1,<3")


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


class _Malformed(Exception):
    pass


def _idle_in_packet() -> Any:  # paho's private _InPacket TypedDict
    return {"command": 0, "have_remaining": 0, "remaining_count": [], "remaining_mult": 1,
            "remaining_length": 0, "packet": bytearray(), "to_process": 0, "pos": 0}


class FastClient(mqtt.Client):
    """``mqtt.Client`` with buffered reads, a fast PUBACK path and coalesced writes."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self._callback_api_version != mqtt.CallbackAPIVersion.VERSION2 or \
                self._protocol != mqtt.MQTTv5:
            raise SimError("FastClient speaks MQTT 5 with the VERSION2 callback API only")
        self._rbuf = bytearray()
        self._rpos = 0
        self._topics: dict[str, bytes] = {}

    # --- reading ----------------------------------------------------------------------------

    def _fill(self) -> MQTTErrorCode:
        """Append what the socket has to the read buffer (one ``recv``, more under TLS)."""
        try:
            data = super()._sock_recv(READ_CHUNK)
            pending = getattr(self._sock, "pending", None)
            if data and pending is not None:
                # TLS: decrypted bytes the selector cannot see must be taken now.
                while pending() > 0:
                    data += super()._sock_recv(READ_CHUNK)
        except BlockingIOError:
            return MQTTErrorCode.MQTT_ERR_AGAIN
        except OSError:
            return MQTTErrorCode.MQTT_ERR_CONN_LOST
        if not data:
            return MQTTErrorCode.MQTT_ERR_CONN_LOST
        buf = self._rbuf
        if self._rpos:
            del buf[:self._rpos]
            self._rpos = 0
        buf += data
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    def _next_packet(self) -> tuple[int, int, int, int] | None:
        """(command, remaining length, body start, body end) of a whole buffered packet."""
        buf, pos = self._rbuf, self._rpos
        n = len(buf)
        if n - pos < 2:
            return None
        length, mult, i = 0, 1, pos + 1
        while True:
            if i >= n:
                return None
            b = buf[i]
            length += (b & 127) * mult
            i += 1
            if not b & 128:
                break
            mult *= 128
            if i - pos > 5:
                raise _Malformed
        if n - i < length:
            return None
        return buf[pos], length, i, i + length

    def _packet_read(self) -> MQTTErrorCode:
        """Parse one packet from the buffer, reading the socket only when it holds none."""
        try:
            found = self._next_packet()
            while found is None:
                rc = self._fill()
                if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                    return rc
                found = self._next_packet()
        except _Malformed:
            return MQTTErrorCode.MQTT_ERR_PROTOCOL
        command, length, body, end = found
        buf = self._rbuf
        if command == _PUBACK and length <= 4:
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
        self._in_packet = {"command": command, "have_remaining": 1, "remaining_count": [],
                           "remaining_mult": 1, "remaining_length": length,
                           "packet": buf[body:end], "to_process": 0, "pos": 0}
        self._consumed(end)
        try:
            rc = self._packet_handle()
        except MalformedPacket:
            rc = MQTTErrorCode.MQTT_ERR_PROTOCOL
        self._in_packet = _idle_in_packet()
        return rc

    def _consumed(self, end: int) -> None:
        if end >= len(self._rbuf):
            self._rbuf.clear()
            self._rpos = 0
        else:
            self._rpos = end

    def loop_read(self, max_packets: int = 1) -> MQTTErrorCode:
        """Handle every whole packet that one ``recv`` brought in (bounded), not just one.

        Stops when the buffer holds no whole packet, so no ``recv`` is wasted on a socket
        that has nothing more: the level-triggered selector reports it again when it has.
        """
        if self._sock is None:
            return MQTTErrorCode.MQTT_ERR_NO_CONN
        rc = self._packet_read()  # the selector said readable: this reads the socket
        for _ in range(100_000):
            if rc > 0:
                return self._loop_rc_handle(rc)
            if rc == MQTTErrorCode.MQTT_ERR_AGAIN or self._sock is None:
                break
            try:
                if self._next_packet() is None:
                    break
            except _Malformed:
                return self._loop_rc_handle(MQTTErrorCode.MQTT_ERR_PROTOCOL)
            rc = self._packet_read()
        with self._msgtime_mutex:
            self._last_bytes_received = mqtt.time_func()
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    def _sock_close(self) -> None:
        # Bytes left from a dead connection must never be parsed as the next one's.
        self._rbuf.clear()
        self._rpos = 0
        super()._sock_close()

    # --- publishing ---------------------------------------------------------------------------

    def publish(self, topic: str, payload: Any = None, qos: int = 0, retain: bool = False,
                properties: Properties | None = None) -> mqtt.MQTTMessageInfo:
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
                    self._out_messages):
                info.rc = MQTTErrorCode.MQTT_ERR_QUEUE_SIZE
                return info
            self._out_messages[mid] = message
            if self._max_inflight_messages and \
                    self._inflight_messages >= self._max_inflight_messages:
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

    def _queue_publish(self, mid: int, topic: bytes, payload: bytes,
                       info: mqtt.MQTTMessageInfo) -> MQTTErrorCode:
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
            return self._packet_queue(_PUBLISH, packet, mid, 1, info)  # not in a selector loop
        # paho's _packet_queue, minus the wake-up of a network thread there is none of
        self._out_packet.append({"command": _PUBLISH, "mid": mid, "qos": 1, "pos": 0,
                                 "to_process": len(packet), "packet": packet, "info": info})
        self._call_socket_register_write()
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    def _do_on_publish(self, mid: int, reason_code: ReasonCode,
                       properties: Properties) -> MQTTErrorCode:
        """paho's, except that it looks for queued messages only when there can be some."""
        on_publish = self._on_publish
        if on_publish is not None:
            with self._in_callback_mutex:
                try:
                    on_publish(self, self._userdata, mid, reason_code,  # type: ignore[call-arg]
                               properties)
                except Exception as err:
                    self._easy_log(mqtt.MQTT_LOG_ERR, "Caught exception in on_publish: %s", err)
                    if not self.suppress_exceptions:
                        raise
        msg = self._out_messages.pop(mid)
        msg.info._set_as_published()
        if msg.qos > 0:
            self._inflight_messages -= 1
            if self._max_inflight_messages > 0 and \
                    len(self._out_messages) > self._inflight_messages:
                return self._update_inflight()
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    # --- writing ----------------------------------------------------------------------------

    def _packet_write(self) -> MQTTErrorCode:
        if self._out_packet:
            rc = self._write_coalesced()
            if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                return rc
        return super()._packet_write()

    def _write_coalesced(self) -> MQTTErrorCode:
        """One ``send`` for the leading run of packets that need no completion handling
        (paho's own loop handles QoS 0 publishes and DISCONNECT, which do)."""
        out = self._out_packet
        run = []
        for p in out:
            command = p["command"] & 0xF0
            if command == _DISCONNECT or command == _PUBLISH and p["qos"] == 0:
                break
            run.append(p)
        if not run:
            return MQTTErrorCode.MQTT_ERR_SUCCESS
        if len(run) == 1:
            data: Any = memoryview(run[0]["packet"])[run[0]["pos"]:]
        else:
            data = b"".join(memoryview(p["packet"])[p["pos"]:] for p in run)
        try:
            sent = self._sock_send(data)
        except (AttributeError, ValueError):
            return MQTTErrorCode.MQTT_ERR_SUCCESS
        except BlockingIOError:
            return MQTTErrorCode.MQTT_ERR_AGAIN
        except OSError:
            return MQTTErrorCode.MQTT_ERR_CONN_LOST
        for p in run:
            if sent <= 0:
                break
            take = min(sent, p["to_process"])
            p["pos"] += take
            p["to_process"] -= take
            sent -= take
            if p["to_process"] == 0:
                out.popleft()
        with self._msgtime_mutex:
            self._last_msg_out = mqtt.time_func()
        return MQTTErrorCode.MQTT_ERR_SUCCESS if not out or out[0]["pos"] == 0 \
            else MQTTErrorCode.MQTT_ERR_AGAIN
