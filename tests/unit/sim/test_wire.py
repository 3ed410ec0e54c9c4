"""The fast MQTT client's byte plumbing, over a socket pair: no broker needed."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import paho.mqtt.client as mqtt
import pytest
from firmware_sim.wire import FastClient, check_compatible

Pair = tuple[FastClient, socket.socket, list[tuple[int, int]]]


@pytest.fixture
def pair() -> Iterator[Pair]:
    check_compatible()
    acks: list[tuple[int, int]] = []
    c = FastClient(mqtt.CallbackAPIVersion.VERSION2, client_id="T", protocol=mqtt.MQTTv5)
    c.on_publish = lambda _c, _u, mid, reason, _p: acks.append((mid, reason.value))
    ours, broker = socket.socketpair()
    ours.setblocking(False)
    broker.settimeout(2.0)
    c._sock = ours  # as if CONNACK had arrived
    yield c, broker, acks
    ours.close()
    broker.close()


def _stock_publish_bytes(topic: str, payload: bytes, mid: int) -> bytes:
    stock = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="S", protocol=mqtt.MQTTv5)
    sent: list[bytes] = []
    stock._sock = object()  # type: ignore[assignment]
    stock._packet_queue = lambda _cmd, pkt, *_a: sent.append(bytes(pkt))  # type: ignore
    stock._send_publish(mid, topic.encode(), payload, 1, False, False)
    stock._sock = None
    return sent[0]


def test_publish_bytes_are_what_paho_sends(pair: Pair) -> None:
    c, broker, _ = pair
    payloads = [b"x", b"y" * 200, b"z" * 20_000]  # 1-, 2- and 3-byte remaining lengths
    infos = [c.publish("fleet/T/telemetry", p, qos=1) for p in payloads]
    c.loop_write()
    want = b"".join(
        _stock_publish_bytes("fleet/T/telemetry", p, i.mid)
        for p, i in zip(payloads, infos, strict=True)
    )
    got = b""
    while len(got) < len(want):
        got += broker.recv(65536)
    assert got == want
    assert all(i.rc == mqtt.MQTT_ERR_SUCCESS for i in infos)


def test_acks_split_and_batched_across_reads(pair: Pair) -> None:
    c, broker, acks = pair
    mids = [c.publish("fleet/T/telemetry", b"e%d" % i, qos=1).mid for i in range(4)]
    c.loop_write()
    broker.send(b"\x40\x03\x00")  # half of the first PUBACK
    c.loop_read()
    assert acks == []
    # its rest, then a short success ack and one "no matching subscribers" in one read
    broker.send(
        bytes([mids[0], 0x00])
        + b"\x40\x02\x00"
        + bytes([mids[1]])
        + b"\x40\x04\x00"
        + bytes([mids[2], 0x10, 0x00])
    )
    c.loop_read()
    assert acks == [(mids[0], 0), (mids[1], 0), (mids[2], 0x10)]
    # a refusal carrying a reason string takes paho's full decoder
    reason = b"\x1f\x00\x03acl"
    body = b"\x00" + bytes([mids[3], 0x87, len(reason)]) + reason
    broker.send(bytes([0x40, len(body)]) + body)
    c.loop_read()
    assert acks[-1] == (mids[3], 0x87)
    assert not c._out_messages and c._inflight_messages == 0


def test_window_full_publishes_queue_and_leave_on_ack(pair: Pair) -> None:
    c, broker, acks = pair
    c.max_inflight_messages_set(2)
    mids = [c.publish("fleet/T/telemetry", b"e%d" % i, qos=1).mid for i in range(3)]
    c.loop_write()
    assert c._inflight_messages == 2 and len(c._out_messages) == 3
    broker.send(b"\x40\x02\x00" + bytes([mids[0]]))
    c.loop_read()
    c.loop_write()
    assert c._inflight_messages == 2 and acks == [(mids[0], 0)]
    data = b""
    want = b"".join(
        _stock_publish_bytes("fleet/T/telemetry", b"e%d" % i, m) for i, m in enumerate(mids)
    )
    while len(data) < len(want):
        data += broker.recv(65536)
    assert data == want


def test_a_closed_connection_is_reported(pair: Pair) -> None:
    c, broker, _ = pair
    broker.send(b"\x40\x02\x00")  # a packet cut short by the broker going away
    broker.shutdown(socket.SHUT_WR)
    assert c.loop_read() == mqtt.MQTT_ERR_CONN_LOST
    assert c._sock is None and not c._rbuf
