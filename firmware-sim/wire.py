"""A paho client with a cheaper hot path for thousands of sessions on one selector loop.

Stock paho reads a packet with three ``recv`` calls (command byte, length byte, body), builds a
reason-code object and a properties object for every PUBACK, and sends every queued packet
with its own ``send``. At 10,000 events/s that per-message overhead, not the simulation,
bounds a process. This subclass keeps paho's protocol state machine (connect, persistent
session, resend on reconnect, will, subscribe, keepalive) and changes only the byte plumbing:

* reads fill a 64 KiB buffer with one ``recv`` and packets are parsed from it;
* a PUBACK that says "success" with no properties (what brokers send almost always) is
  answered with shared, read-only reason-code and properties objects;
* queued packets are written with one ``send`` per socket per loop pass.

It relies on private attributes of paho-mqtt 2.x (pinned ``>=2.1,<3`` in pyproject.toml);
:func:`check_compatible` fails loudly if they move.
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
# Shared, never mutated: one reason-code object per successful PUBACK code.
_PUBACK_CODES = {0: ReasonCode(PacketTypes.PUBACK, identifier=0),
                 0x10: ReasonCode(PacketTypes.PUBACK, identifier=0x10)}
_NO_PROPS = Properties(PacketTypes.PUBACK)
_MID = struct.Struct("!H")
_REQUIRED = ("_packet_handle", "_loop_rc_handle", "_last_bytes_received", "_sock_close",
             "_sock_recv", "_sock_send", "_packet_read", "_packet_write", "_out_packet",
             "_in_packet", "_handle_pubackcomp", "_do_on_publish", "_out_message_mutex",
             "_out_messages", "_last_msg_out", "_msgtime_mutex")


def check_compatible() -> None:
    probe = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    missing = [name for name in _REQUIRED if not hasattr(probe, name)]
    if missing:
        raise SimError(f"paho-mqtt {getattr(mqtt, '__version__', '?')} lacks {missing}; "
                       "install paho-mqtt>=2.1,<3")


class _Malformed(Exception):
    pass


def _idle_in_packet() -> dict[str, Any]:
    return {"command": 0, "have_remaining": 0, "remaining_count": [], "remaining_mult": 1,
            "remaining_length": 0, "packet": bytearray(), "to_process": 0, "pos": 0}


class FastClient(mqtt.Client):
    """``mqtt.Client`` with buffered reads, a fast PUBACK path and coalesced writes."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._rbuf = bytearray()
        self._rpos = 0

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
        self._in_packet = {"command": command, "have_remaining": 1, "remaining_count": [],
                           "remaining_mult": 1, "remaining_length": length,
                           "packet": self._rbuf[body:end], "to_process": 0, "pos": 0}
        if end >= len(self._rbuf):
            self._rbuf.clear()
            self._rpos = 0
        else:
            self._rpos = end
        try:
            rc = self._packet_handle()
        except MalformedPacket:
            rc = MQTTErrorCode.MQTT_ERR_PROTOCOL
        self._in_packet = _idle_in_packet()
        return rc

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

    def _handle_pubackcomp(self, cmd: Any) -> MQTTErrorCode:
        pkt = self._in_packet["packet"]
        n = len(pkt)
        # mid [reason code [properties length = 0]]: brokers say "success" or, without a
        # subscriber yet, "no matching subscribers" (0x10); neither carries properties.
        code = pkt[2] if n > 2 else 0
        if cmd == "PUBACK" and (n <= 3 or n == 4 and pkt[3] == 0) and code in _PUBACK_CODES:
            mid = _MID.unpack_from(pkt)[0]
            with self._out_message_mutex:
                if mid in self._out_messages:
                    return self._do_on_publish(mid, _PUBACK_CODES[code], _NO_PROPS)
            return MQTTErrorCode.MQTT_ERR_SUCCESS
        return super()._handle_pubackcomp(cmd)

    def _sock_close(self) -> None:
        # Bytes left from a dead connection must never be parsed as the next one's.
        self._rbuf.clear()
        self._rpos = 0
        super()._sock_close()

    # --- writing ----------------------------------------------------------------------------

    def _packet_write(self) -> MQTTErrorCode:
        out = self._out_packet
        if len(out) > 1:
            rc = self._write_coalesced()
            if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                return rc
        return super()._packet_write()

    def _write_coalesced(self) -> MQTTErrorCode:
        """One ``send`` for the leading run of packets that need no completion handling."""
        out = self._out_packet
        run = []
        for p in out:
            command = p["command"] & 0xF0
            if command == _DISCONNECT or command == _PUBLISH and p["qos"] == 0:
                break
            run.append(p)
        if len(run) < 2:
            return MQTTErrorCode.MQTT_ERR_SUCCESS
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
