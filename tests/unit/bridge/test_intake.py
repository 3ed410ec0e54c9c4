"""The bridge's MQTT client against stock paho, over socket pairs: the same bytes in give the same
messages out, and its batched acks are paho's PUBACK bytes."""

from __future__ import annotations

import random
import socket
from collections.abc import Iterator
from typing import Any, Generic, TypeVar

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge.bridge.intake import IntakeClient, check_compatible

Received = tuple[bytes, bytes, int, int, bool, bool]


def _publish_bytes(
    topic: bytes,
    payload: bytes,
    qos: int,
    mid: int,
    *,
    retain: bool = False,
    dup: bool = False,
    properties: Properties | None = None,
) -> bytes:
    """The PUBLISH packet stock paho sends (how a broker frames one for a subscriber too)."""
    stock = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="S", protocol=mqtt.MQTTv5)
    sent: list[bytes] = []
    stock._sock = object()  # type: ignore[assignment]
    stock._packet_queue = lambda _cmd, pkt, *_a: sent.append(bytes(pkt))  # type: ignore
    stock._send_publish(mid, topic, payload, qos, retain, dup, None, properties)
    stock._sock = None
    return sent[0]


def _props() -> Properties:
    p = Properties(PacketTypes.PUBLISH)
    p.MessageExpiryInterval = 60
    p.ContentType = "application/json"
    p.UserProperty = [("fw", "1.2.3"), ("k" * 200, "v" * 300)]  # a 2-byte properties length
    return p


PACKETS = [
    _publish_bytes(b"fleet/1HGCM82633A004352/telemetry", b'{"a":1}', 1, 1),
    _publish_bytes(b"fleet/1HGCM82633A004352/payments", b"y" * 200, 1, 65535, dup=True),
    _publish_bytes(b"fleet/X/telemetry", b"", 1, 7),
    _publish_bytes(b"fleet/X/telemetry", b"q0", 0, 0, retain=True),
    _publish_bytes(b"fleet/X/telemetry", b"z" * 20_000, 1, 300, properties=_props()),
    _publish_bytes(b"fleet/\xff\xfe/telemetry", b"not utf-8 topic", 1, 9),
    _publish_bytes(b"", b"empty topic", 1, 10),
    _publish_bytes(b"fleet/X/telemetry", b"w" * 2_100_000, 1, 11),  # 4-byte remaining length
]


C = TypeVar("C", bound=mqtt.Client)


class _Pair(Generic[C]):
    def __init__(self, client: C) -> None:
        self.client = client
        self.got: list[Received] = []
        client.on_message = lambda _c, _u, m: self.got.append(
            (m._topic, bytes(m.payload), m.mid, m.qos, bool(m.dup), bool(m.retain))
        )
        self.ours, self.broker = socket.socketpair()
        self.ours.setblocking(False)
        self.broker.settimeout(2.0)
        client._sock = self.ours  # as if CONNACK had arrived

    def feed(self, data: bytes) -> None:
        """Send ``data`` in pieces the socket takes, letting the client read until it has
        taken all of it."""
        view = memoryview(data)
        while True:
            if view:
                view = view[self.broker.send(view[:65536]) :]
            for _ in range(10_000):
                rc = self.client.loop_read()
                if rc != mqtt.MQTT_ERR_SUCCESS or not self._unread():
                    break
            if not view or rc != mqtt.MQTT_ERR_SUCCESS:
                return

    def _unread(self) -> bool:
        try:
            return bool(self.ours.recv(1, socket.MSG_PEEK))
        except BlockingIOError:
            return False

    def sent(self) -> bytes:
        self.broker.settimeout(0.2)
        out = b""
        try:
            while chunk := self.broker.recv(1 << 20):
                out += chunk
        except TimeoutError:
            pass
        return out

    def close(self) -> None:
        self.ours.close()
        self.broker.close()


def _client(cls: type[C]) -> C:
    return cls(
        mqtt.CallbackAPIVersion.VERSION2, client_id="B", protocol=mqtt.MQTTv5, manual_ack=True
    )


# Ours (the bridge's IntakeClient) beside stock paho, fed the same bytes.
Pairs = tuple[_Pair[IntakeClient], _Pair[mqtt.Client]]


@pytest.fixture
def pairs() -> Iterator[Pairs]:
    check_compatible()
    ours, stock = _Pair(_client(IntakeClient)), _Pair(_client(mqtt.Client))
    yield ours, stock
    ours.close()
    stock.close()


def test_messages_are_what_paho_decodes(pairs: Pairs) -> None:
    ours, stock = pairs
    data = b"".join(PACKETS)
    stock.feed(data)
    ours.feed(data)
    assert len(stock.got) == len(PACKETS)
    assert ours.got == stock.got


def test_packets_split_at_every_byte(pairs: Pairs) -> None:
    ours, stock = pairs
    small = b"".join(PACKETS[:4] + PACKETS[5:7])
    stock.feed(small)
    for i in range(len(small)):
        ours.feed(small[i : i + 1])
    assert ours.got == stock.got
    assert not ours.client._rbuf  # nothing left over


def test_random_splits_of_a_long_stream(pairs: Pairs) -> None:
    ours, stock = pairs
    rng = random.Random(7)
    data = b"".join(rng.choice(PACKETS[:7]) for _ in range(400))
    stock.feed(data)
    i = 0
    while i < len(data):
        n = rng.choice((1, 2, 3, 17, 1000, 70_000))
        ours.feed(data[i : i + n])
        i += n
    assert len(ours.got) == 400
    assert ours.got == stock.got


def test_batched_acks_are_paho_pubacks(pairs: Pairs) -> None:
    ours, stock = pairs
    mids = [1, 2, 255, 256, 65535]
    for mid in mids:
        ours.client.ack(mid, 1)
        stock.client.ack(mid, 1)
    assert ours.sent() == b""  # nothing written before the flush
    assert ours.client.pending_acks() == len(mids)
    assert ours.client.flush_acks() == mqtt.MQTT_ERR_SUCCESS
    want = stock.sent()
    assert want == b"".join(bytes([0x40, 2, m >> 8, m & 255]) for m in mids)
    assert ours.sent() == want
    assert ours.client.ack(3, 0) == mqtt.MQTT_ERR_SUCCESS and ours.client.pending_acks() == 0


def test_qos2_goes_through_paho(pairs: Pairs) -> None:
    ours, stock = pairs
    packet = _publish_bytes(b"fleet/X/telemetry", b"two", 2, 42)
    stock.feed(packet)
    ours.feed(packet)
    assert ours.sent() == stock.sent() != b""  # paho's PUBREC


def test_acks_of_a_lost_connection_are_never_sent(pairs: Pairs) -> None:
    ours, _ = pairs
    ours.feed(PACKETS[0])
    ours.client.ack(1, 1)
    ours.broker.shutdown(socket.SHUT_WR)
    assert ours.client.loop_read() == mqtt.MQTT_ERR_CONN_LOST
    assert ours.client.pending_acks() == 0
    assert ours.client.flush_acks() == mqtt.MQTT_ERR_SUCCESS


def test_a_malformed_publish_ends_the_connection_as_paho_does(pairs: Pairs) -> None:
    ours, stock = pairs
    # A QoS 1 PUBLISH whose properties length runs past the packet.
    bad = bytes([0x32, 8, 0, 1]) + b"t" + bytes([0, 5, 0x7F, 0, 0])
    stock.broker.sendall(bad)
    ours.broker.sendall(bad)
    rc_stock = stock.client.loop_read()
    rc_ours = ours.client.loop_read()
    assert rc_stock != mqtt.MQTT_ERR_SUCCESS
    assert rc_ours == rc_stock
    assert ours.got == stock.got == []


def test_manual_ack_is_required() -> None:
    with pytest.raises(ValueError, match="manual_ack"):
        IntakeClient(mqtt.CallbackAPIVersion.VERSION2, client_id="B", protocol=mqtt.MQTTv5)


def test_a_message_whose_callback_raised_is_not_handed_over_again(pairs: Pairs) -> None:
    ours, _ = pairs
    seen: list[int] = []

    def once(_c: Any, _u: Any, m: Any) -> None:
        seen.append(m.mid)
        if len(seen) == 1:
            raise RuntimeError("callback failed")

    ours.client.on_message = once
    ours.broker.sendall(PACKETS[0] + PACKETS[2])
    with pytest.raises(RuntimeError):
        ours.client.loop_read()
    ours.client.loop_read()
    assert seen == [1, 7]  # the first packet was consumed before its callback ran
