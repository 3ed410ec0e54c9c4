"""paho's MQTT 5 client with cheaper byte plumbing, shared by the vehicles' and the bridge's clients.

Stock paho reads a packet with three ``recv`` calls (command byte, length byte, body), builds a
reason code and a properties object for every acknowledgement, logs every packet, and sends
every queued packet with its own ``send``. At tens of thousands of packets a second that
plumbing, not the work on the messages, bounds a process. :class:`BufferedClient` keeps paho's
protocol state machine (connect, persistent session, resend on reconnect, will, subscribe,
keepalive, in-flight limit) and changes only how bytes come and go:

* reads fill a buffer with one ``recv`` and every whole packet in it is handled in one
  ``loop_read()`` call;
* a subclass may take a packet in place (:meth:`BufferedClient._take`): the vehicles' client
  takes PUBACKs (``firmware_sim.wire``), the bridge's takes PUBLISHes and sends PUBACKs
  in batches (``edge.bridge.intake``); every other packet goes through paho's own decoder;
* queued packets are written with one ``send`` per loop pass.

It relies on private attributes of paho-mqtt 2.x (pinned ``>=2.1,<3`` in pyproject.toml):
:func:`missing_internals` names those that moved, and the subclasses' tests check the bytes
against paho's own.
"""

from __future__ import annotations

from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.exception import MalformedPacket

READ_CHUNK = 65536
PUBLISH = 0x30
PUBACK = 0x40
DISCONNECT = 0xE0
# What BufferedClient itself uses of paho's internals.
INTERNALS = (
    "_packet_handle",
    "_loop_rc_handle",
    "_last_bytes_received",
    "_sock_close",
    "_sock_recv",
    "_sock_send",
    "_packet_read",
    "_packet_write",
    "_out_packet",
    "_in_packet",
    "_msgtime_mutex",
    "_last_msg_out",
    "_callback_api_version",
    "_protocol",
)


def missing_internals(names: tuple[str, ...] = INTERNALS) -> list[str]:
    """The private paho attributes among ``names`` this paho-mqtt lacks (none: compatible)."""
    probe = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    return [name for name in names if not hasattr(probe, name)]


class Malformed(Exception):
    """A packet's remaining length is not a valid variable byte integer."""


def idle_in_packet() -> Any:  # paho's private _InPacket TypedDict
    return {
        "command": 0,
        "have_remaining": 0,
        "remaining_count": [],
        "remaining_mult": 1,
        "remaining_length": 0,
        "packet": bytearray(),
        "to_process": 0,
        "pos": 0,
    }


class BufferedClient(mqtt.Client):
    """``mqtt.Client`` (MQTT 5, VERSION2 callbacks) with buffered reads and coalesced writes."""

    read_chunk = READ_CHUNK  # bytes one recv() may take

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if (
            self._callback_api_version != mqtt.CallbackAPIVersion.VERSION2
            or self._protocol != mqtt.MQTTv5
        ):
            raise ValueError(
                f"{type(self).__name__} speaks MQTT 5 with the VERSION2 callback API only"
            )
        self._rbuf = bytearray()
        self._rpos = 0

    # --- reading ----------------------------------------------------------------------------

    def _fill(self) -> MQTTErrorCode:
        """Append what the socket has to the read buffer (one ``recv``, more under TLS)."""
        try:
            data = super()._sock_recv(self.read_chunk)
            pending = getattr(self._sock, "pending", None)
            if data and pending is not None:
                # TLS: decrypted bytes the selector cannot see must be taken now.
                while pending() > 0:
                    data += super()._sock_recv(self.read_chunk)
        except BlockingIOError:
            return MQTTErrorCode.MQTT_ERR_AGAIN
        except OSError:
            return MQTTErrorCode.MQTT_ERR_CONN_LOST
        if not data:
            return MQTTErrorCode.MQTT_ERR_CONN_LOST
        buf = self._rbuf
        if self._rpos:
            del buf[: self._rpos]
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
            if i - pos > 4:
                raise Malformed
        if n - i < length:
            return None
        return buf[pos], length, i, i + length

    def _take(self, command: int, length: int, body: int, end: int) -> MQTTErrorCode | None:
        """Handle the buffered packet in place and return paho's result code, or None to hand
        it to paho's decoder. A packet taken is consumed by ``_take`` itself
        (``self._consumed(end)``) once it has read what it needs and before any callback, so a
        callback that raises never sees its packet again."""
        return None

    def _packet_read(self) -> MQTTErrorCode:
        """Handle one packet from the buffer, reading the socket only when it holds none."""
        try:
            found = self._next_packet()
            while found is None:
                rc = self._fill()
                if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                    return rc
                found = self._next_packet()
        except Malformed:
            return MQTTErrorCode.MQTT_ERR_PROTOCOL
        command, length, body, end = found
        taken = self._take(command, length, body, end)
        if taken is not None:
            return taken
        self._in_packet = {
            "command": command,
            "have_remaining": 1,
            "remaining_count": [],
            "remaining_mult": 1,
            "remaining_length": length,
            "packet": self._rbuf[body:end],
            "to_process": 0,
            "pos": 0,
        }
        self._consumed(end)
        try:
            rc = self._packet_handle()
        except MalformedPacket:
            rc = MQTTErrorCode.MQTT_ERR_PROTOCOL
        self._in_packet = idle_in_packet()
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
            except Malformed:
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
            if command == DISCONNECT or command == PUBLISH and p["qos"] == 0:
                break
            run.append(p)
        if not run:
            return MQTTErrorCode.MQTT_ERR_SUCCESS
        if len(run) == 1:
            data: Any = memoryview(run[0]["packet"])[run[0]["pos"] :]
        else:
            data = b"".join(memoryview(p["packet"])[p["pos"] :] for p in run)
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
        return (
            MQTTErrorCode.MQTT_ERR_SUCCESS
            if not out or out[0]["pos"] == 0
            else MQTTErrorCode.MQTT_ERR_AGAIN
        )
