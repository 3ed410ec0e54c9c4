"""One vehicle's MQTT session, as its firmware would run it.

MQTT 5, client id = VIN, persistent session (clean_start=False with a session expiry), QoS 1,
a retained ``fleet/{vin}/status`` with a last will of ``offline``, and flow control: at most
``window`` events in flight; the rest wait in memory and, while the broker is away or the
backlog is long, in the on-disk outbox. Events leave in the order they were generated.

Sessions do no I/O of their own: a :class:`~firmware_sim.live.LiveRunner` drives every
session's socket from one selector loop.
"""

from __future__ import annotations

import functools
import random
import ssl
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec
import paho.mqtt.client as mqtt
from firmware_sim.acklog import AckLog
from firmware_sim.outbox import Outbox
from firmware_sim.wire import FastClient
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from shared.contracts import Decision, VehicleStatus, decode
from shared.errors import ContractError

SESSION_EXPIRY_S = 24 * 3600
MEMORY_BACKLOG = 256


@dataclass(frozen=True)
class ConnectSettings:
    host: str = "127.0.0.1"
    port: int = 1883
    password: str = "fleetsentry-sim"
    keepalive: int = 60
    tls_ca: str | None = None
    window: int = 20  # QoS 1 messages in flight per vehicle
    backoff_base_s: float = 0.5
    backoff_max_s: float = 30.0


@dataclass
class SessionStats:
    acked: int = 0
    rejected: int = 0
    connects: int = 0
    failures: int = 0
    declines: list[dict[str, Any]] = field(default_factory=list)
    # Why connects failed (message -> count): a fleet that cannot get in says why.
    connect_errors: Counter[str] = field(default_factory=Counter)
    last_connect_error: str = ""

    def connect_failed(self, message: str) -> None:
        self.failures += 1
        self.connect_errors[message] += 1
        self.last_connect_error = message


@functools.lru_cache(maxsize=4)
def tls_context(ca_file: str) -> ssl.SSLContext:
    """One client context per CA for the whole fleet: building one per vehicle (what
    ``tls_set`` does) costs a millisecond and a certificate store each."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies the chain and the host name
    ctx.load_verify_locations(ca_file)
    return ctx


def describe_connect_error(exc: BaseException, tls: bool) -> str:
    """What went wrong opening a session, in words that point at the fix."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return (
            f"TLS: the broker's certificate was not accepted ({exc.verify_message}); "
            "is --tls-ca the CA that signed it?"
        )
    if isinstance(exc, ssl.SSLError):
        return f"TLS handshake failed ({exc.reason or exc}); is this the broker's TLS port?"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused: no broker listens on that address"
    if isinstance(exc, TimeoutError):
        what = "TLS handshake" if tls else "TCP connect"
        return f"{what} timed out; is this the broker's {'TLS ' if tls else ''}port?"
    return f"{type(exc).__name__}: {exc}"


CLOSED_BEFORE_CONNACK = (
    "the broker closed the connection before accepting the login; "
    "is this a TLS port (then pass --tls-ca)?"
)


class _EventId(msgspec.Struct):
    event_id: str = ""


_ids = msgspec.json.Decoder(_EventId)


class VehicleSession:
    """MQTT client state of one vehicle; ``runner`` supplies the loop and the outbox."""

    def __init__(
        self,
        index: int,
        vin: str,
        firmware: str,
        conf: ConnectSettings,
        outbox: Outbox,
        rng: random.Random,
        stats: SessionStats,
        on_ack: Callable[[str], None] | None = None,
        ack_log: AckLog | None = None,
    ) -> None:
        self.index = index
        self.vin = vin
        self.firmware = firmware
        self.conf = conf
        self.outbox = outbox
        self.rng = rng
        self.stats = stats
        self.on_ack = on_ack
        self.ack_log = ack_log
        self.client: mqtt.Client | None = None
        self.connected = False
        self.connecting_since: float | None = None
        self.attempts = 0
        self.ever_connected = False
        self.memory: deque[tuple[str, bytes]] = deque()
        # mid -> (topic, payload): the event id and stream of what the broker acknowledges
        self.inflight: dict[int, tuple[str, bytes]] = {}
        self.closing = False

    # --- client -----------------------------------------------------------------------------

    def make_client(self, socket_callbacks: dict[str, Callable[..., None]]) -> mqtt.Client:
        c = FastClient(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=self.vin,
            protocol=mqtt.MQTTv5,
            reconnect_on_failure=False,
        )
        c.username_pw_set(self.vin, self.conf.password)
        offline = msgspec.json.encode(
            VehicleStatus(vin=self.vin, state="offline", ts=time.time(), firmware=self.firmware)
        )
        c.will_set(f"fleet/{self.vin}/status", offline, qos=1, retain=True)
        if self.conf.tls_ca:
            c.tls_set_context(tls_context(self.conf.tls_ca))
        # We keep our own window; paho must not queue behind our back.
        c.max_inflight_messages_set(self.conf.window + 2)
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_publish = self._on_publish
        c.on_message = self._on_message
        for name, cb in socket_callbacks.items():
            setattr(c, name, cb)
        c.user_data_set(self)
        self.client = c
        return c

    def connect(self) -> None:
        """Open the TCP connection and send CONNECT (CONNACK arrives through the loop)."""
        assert self.client is not None
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = SESSION_EXPIRY_S
        self.connecting_since = time.monotonic()
        first = not self.ever_connected and self.attempts == 0
        # Counted before trying: a connect that raises (refused, TLS handshake) must still
        # lengthen the next backoff.
        self.attempts += 1
        if first:
            self.client.connect(
                self.conf.host,
                self.conf.port,
                self.conf.keepalive,
                clean_start=False,
                properties=props,
            )
        else:
            self.client.reconnect()

    def backoff(self) -> float:
        """Jittered exponential backoff: spreads a fleet's reconnects after an outage."""
        cap = min(self.conf.backoff_max_s, self.conf.backoff_base_s * 2 ** min(self.attempts, 10))
        return cap * self.rng.uniform(0.5, 1.0)

    # --- callbacks --------------------------------------------------------------------------

    def _on_connect(
        self, client: mqtt.Client, _ud: object, _flags: Any, reason: Any, _props: Any
    ) -> None:
        self.connecting_since = None
        if reason.is_failure:
            self.stats.connect_failed(f"the broker refused the login: {reason}")
            return
        self.connected = True
        self.ever_connected = True
        self.attempts = 0
        self.stats.connects += 1
        online = msgspec.json.encode(
            VehicleStatus(vin=self.vin, state="online", ts=time.time(), firmware=self.firmware)
        )
        client.publish(f"fleet/{self.vin}/status", online, qos=1, retain=True)
        client.subscribe(f"fleet/{self.vin}/commands", qos=1)
        self.pump()

    def _on_disconnect(
        self, _c: mqtt.Client, _ud: object, _flags: Any, _reason: Any, _props: Any
    ) -> None:
        if not self.connected and self.connecting_since is not None:
            # Neither accepted nor refused: typically plain MQTT spoken to a TLS listener.
            self.stats.connect_failed(
                CLOSED_BEFORE_CONNACK
                if not self.conf.tls_ca
                else "the broker closed the connection before CONNACK"
            )
        self.connected = False
        self.connecting_since = None

    def _on_publish(self, _c: mqtt.Client, _ud: object, mid: int, reason: Any, _props: Any) -> None:
        sent = self.inflight.pop(mid, None)
        if sent is None:
            return  # our status message
        if reason.is_failure:
            self.stats.rejected += 1
        else:
            self.stats.acked += 1
            if self.on_ack is not None or self.ack_log is not None:
                topic, payload = sent
                event_id = _ids.decode(payload).event_id
                if self.on_ack is not None:
                    self.on_ack(event_id)
                if self.ack_log is not None:
                    self.ack_log.record(self.vin, topic, event_id)
        self.pump()

    def _on_message(self, _c: mqtt.Client, _ud: object, msg: mqtt.MQTTMessage) -> None:
        try:
            d = decode(Decision, bytes(msg.payload))
        except ContractError as exc:
            self.stats.declines.append({"vin": self.vin, "error": str(exc)})
            return
        if d.decision != "approve":
            # The vehicle obeys: the payment is void and the driver is told so.
            self.stats.declines.append(
                {
                    "vin": self.vin,
                    "event_id": d.event_id,
                    "decision": d.decision,
                    "reason": d.reason,
                    "score": d.score,
                    "received_ts": time.time(),
                }
            )

    # --- sending ----------------------------------------------------------------------------

    def backlog(self) -> int:
        return len(self.memory) + self.outbox.counts.get(self.index, 0) + len(self.inflight)

    def send(self, topic: str, payload: bytes) -> None:
        """Queue one event; it leaves now if the window allows, else in order later."""
        on_disk = self.outbox.counts.get(self.index, 0)
        if (
            self.connected
            and not on_disk
            and not self.memory
            and len(self.inflight) < self.conf.window
        ):
            self._publish(topic, payload)
        elif self.connected and not on_disk and len(self.memory) < MEMORY_BACKLOG:
            self.memory.append((topic, payload))
        else:
            self.outbox.append(self.index, topic, payload)

    def pump(self) -> None:
        """Fill the in-flight window from memory, then from disk (oldest first)."""
        if not self.memory and not self.outbox.counts.get(self.index):
            return  # the common case on every ack: nothing waits
        window = self.conf.window
        while self.connected and len(self.inflight) < window:
            if not self.memory:
                batch = self.outbox.take(self.index, MEMORY_BACKLOG)
                if not batch:
                    return
                self.memory.extend(batch)
            topic, payload = self.memory.popleft()
            self._publish(topic, payload)

    def _publish(self, topic: str, payload: bytes) -> None:
        assert self.client is not None
        info = self.client.publish(topic, payload, qos=1)
        self.inflight[info.mid] = (topic, payload)

    def publish_offline(self) -> None:
        """A clean shutdown sends no will, so the vehicle says it is going offline itself."""
        assert self.client is not None
        offline = msgspec.json.encode(
            VehicleStatus(vin=self.vin, state="offline", ts=time.time(), firmware=self.firmware)
        )
        self.client.publish(f"fleet/{self.vin}/status", offline, qos=1, retain=True)
