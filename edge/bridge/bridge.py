"""The bridge: one MQTT 5 shared-subscription member feeding one idempotent Kafka producer.

Everything runs on one thread: ``step()`` reads MQTT packets (``on_message`` validates and
produces) and polls the producer (delivery reports acknowledge the MQTT message). An MQTT
message is acknowledged only after Kafka confirmed the record it became -- the event in
``raw.*`` or its dead letter in ``dlq.ingest`` -- so nothing is lost when the process dies: the
broker keeps the persistent session and redelivers whatever was not acknowledged.

When Kafka confirms nothing for ``[bridge] spool_after_s`` while records wait, the bridge
spools (see ``edge/bridge/spool.py``): every record goes to a local log, and its MQTT message
is acknowledged once the log is fsynced; the spool drains in order once Kafka is back, and
records go straight to Kafka again when it is empty. The broker's queue for the bridge's
session (bounded, and silently dropping past its bound) is then never the outage buffer.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from threading import Event
from typing import Any, cast

import paho.mqtt.client as mqtt
from confluent_kafka import KafkaError, KafkaException, Message, Producer
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from edge import metrics
from edge.bridge.errors import BridgeError, Rejected
from edge.bridge.intake import IntakeClient
from edge.bridge.intake import check_compatible as check_intake
from edge.bridge.ratelimit import VehicleRateLimiter
from edge.bridge.spool import Spool, SpoolError
from edge.bridge.validate import Limits, check, parse_topic
from edge.config import EdgeConfig
from edge.dlq import DeadLetters
from edge.mqtt_login import mqtt_password
from edge.vault.errors import VaultError
from shared import topics
from shared.kafka_config import client_config
from shared.kafka_errors import ErrorLog
from shared.kafka_write import produce

log = logging.getLogger("bridge")
SERVICE = "bridge"
RECONNECT_MIN_S = 0.5
# Short: after a broker restart, shared subscriptions receive nothing until a member is back.
RECONNECT_MAX_S = 2.0
LOG_EVERY_S = 30.0
# Packets read per step before serving Kafka delivery reports (which send the MQTT acks).
BURST_PACKETS = 200
# A vehicle's rate-limited excess becomes one dead letter per this many messages or this
# long, whichever comes first: short enough that the held messages never fill the broker's
# in-flight window (receive_maximum), long enough that a flooder costs one record per burst.
EXCESS_BATCH = 256
EXCESS_WAIT_S = 0.02
# What acknowledges one MQTT message: (connection generation, message id, QoS).
Ack = tuple[int, int, int]
# Spooled records handed to Kafka and not yet confirmed, at most; read per step, at most.
DRAIN_WINDOW = 20_000
DRAIN_BATCH = 5_000
SPOOL_SAVE_EVERY_S = 1.0
# At most this long the bridge waits, when it stops, for Kafka to confirm what it holds:
# well inside the supervisor's grace (10 s), so a stop during an outage ends by itself.
CLOSE_FLUSH_S = 5.0
_PURGED = (KafkaError._PURGE_QUEUE, KafkaError._PURGE_INFLIGHT)


def subscriptions(group: str, limits: Limits, shared: bool = True) -> list[str]:
    """One subscription per stream: shared (``$share/g/fleet/+/telemetry``) when several
    bridge processes split the load, plain (``fleet/+/telemetry``) for one.

    Mosquitto keeps a persistent session's plain subscriptions across a restart but not its
    shared ones: until a bridge reconnects, a shared subscription has no member and what
    vehicles publish is acknowledged and dropped. A plain one queues it for the session.
    """
    if not shared:
        return [f"fleet/+/{suffix}" for suffix in sorted(limits.streams)]
    return [f"$share/{group}/fleet/+/{suffix}" for suffix in sorted(limits.streams)]


class Bridge:
    """MQTT -> raw.* / dlq.ingest. Constructing it does no I/O; ``start()`` connects."""

    def __init__(
        self, config: EdgeConfig, instance: int = 0, clock: Callable[[], float] = time.time
    ) -> None:
        self.config = config
        self.settings = config.bridge
        self.client_id = f"{config.edge_id}-bridge-{instance}"
        self.instance = instance
        s = self.settings
        self.limits = Limits.from_registry(
            s.max_payload_bytes, s.max_future_skew_s, s.max_past_age_s, s.max_json_depth
        )
        self.limiter = (
            VehicleRateLimiter(s.vehicle_rate_per_s, s.vehicle_burst)
            if s.vehicle_rate_per_s > 0
            else None
        )
        self.clock = clock
        self.received = 0
        self.produced = 0
        self.dead_lettered = 0
        self.spooled = 0
        self.dropped = 0
        self._client: IntakeClient | None = None
        self._producer: Producer | None = None
        self._letters: DeadLetters | None = None
        self._init_connection_state()
        self._init_metrics()
        self._init_spool_state()

    def _init_connection_state(self) -> None:
        # Bumped on every (re)connect: an ack for a message of an earlier connection is
        # dropped, because the broker redelivers it anyway and its packet id may be reused.
        self._generation = 0
        self._connected = False
        self._closing = False
        self._connect_error: str | None = None
        self._next_reconnect = 0.0
        self._reconnect_wait = RECONNECT_MIN_S
        self._retry: list[tuple[str, bytes | None, bytes, Callable[..., None]]] = []
        self._fatal: str | None = None
        self._last_log = 0.0

    def _init_metrics(self) -> None:
        # Per-event metrics are counted here and handed to Prometheus once per step.
        self._in = {
            s: metrics.CountBatch(metrics.MESSAGES_IN.labels(SERVICE, spec.name))
            for s, spec in self.limits.streams.items()
        }
        self._in_unknown = metrics.CountBatch(metrics.MESSAGES_IN.labels(SERVICE, "unknown"))
        self._out = {
            spec.name: metrics.CountBatch(metrics.MESSAGES_OUT.labels(SERVICE, spec.name))
            for spec in self.limits.streams.values()
        }
        self._latency = {
            spec.name: metrics.HistogramBatch(metrics.END_TO_END_LATENCY.labels(SERVICE, spec.name))
            for spec in self.limits.streams.values()
        }
        self._batches: list[metrics.CountBatch | metrics.HistogramBatch] = [
            *self._in.values(),
            self._in_unknown,
            *self._out.values(),
            *self._latency.values(),
        ]
        self._limited: dict[str, Callable[[], None]] = {}
        self._limited_other = metrics.RATE_LIMITED.labels(SERVICE, "other").inc
        self._internal_logged: set[str] = set()

    def _init_spool_state(self) -> None:
        # vin -> the rate-limited messages not yet written: the first one, when it came, and
        # the (generation, mid, qos) of every one, acknowledged when their letter is in Kafka.
        self._excess: dict[str, tuple[mqtt.MQTTMessage, float, float, list[Ack]]] = {}
        # The outage spool: while _spooling, records go to it, and the delivery callbacks of
        # those appended since the last fsync wait in _spool_acks.
        self._spool: Spool | None = None
        self._spooling = False
        self._spool_acks: list[Callable[..., None]] = []
        self._drain_retry: list[tuple[int, Message]] = []
        # Delivery reports from Kafka (not the spool): how the bridge tells Kafka is away.
        self._confirmed = 0
        self._confirmed_seen = 0
        self._progress_at = time.monotonic()
        self._saved_at = 0.0
        self._kafka_errors = ErrorLog(log, every_s=LOG_EVERY_S)
        self._spool_bytes = metrics.SPOOL_BYTES.labels(SERVICE)
        self._spooling_gauge = metrics.SPOOLING.labels(SERVICE)
        self._spooled = metrics.SPOOLED.labels(SERVICE).inc
        self._drained = metrics.SPOOL_DRAINED.labels(SERVICE).inc

    # --- lifecycle ------------------------------------------------------------------------

    def start(self, timeout: float = 15.0) -> None:
        """Create the producer, connect to the broker and subscribe (waits for CONNACK)."""
        try:
            self._letters = DeadLetters.load(self.config)
        except VaultError as exc:
            raise BridgeError(f"cannot load the keys dead letters are sealed with: {exc}") from None
        self._open_spool()
        self._producer = self._make_producer()
        check_intake()
        self._client = self._make_client()
        self._connect(self._client, timeout)

    def _open_spool(self) -> None:
        """The outage spool (none when its size is 0); one left from an earlier run goes to
        Kafka first."""
        s = self.settings
        spool_bytes = s.spool_max_bytes
        if spool_bytes is None:
            from edge.disk import plan

            spool_bytes = plan(self.config).spool_bytes // s.processes
        if spool_bytes <= 0:
            return
        try:
            self._spool = Spool(self.config.bridge_spool_dir(self.instance), spool_bytes)
        except SpoolError as exc:
            raise BridgeError(
                f"{exc} (set [bridge] spool_max_bytes = 0 to run without an outage spool)"
            ) from None
        if not self._spool.empty():
            self._set_spooling(True)
            log.warning(
                "the outage spool holds %d bytes from an earlier run: they go to "
                "Kafka first, in order",
                self._spool.size,
            )
        if self.instance == 0:
            self._warn_orphaned_spools()

    def _make_producer(self) -> Producer:
        s = self.settings
        return Producer(
            client_config(
                self.config.kafka,
                {
                    "client.id": self.client_id,
                    "enable.idempotence": True,
                    "acks": "all",
                    "linger.ms": s.linger_ms,
                    "compression.type": s.compression,
                    # With a spool, records wait in order until Kafka is back (none fails by age and
                    # comes back out of order); the spool takes over after spool_after_s.
                    **({"message.timeout.ms": 0} if self._spool is not None else {}),
                    "error_cb": self._kafka_error,
                },
            )
        )

    def _make_client(self) -> IntakeClient:
        client = IntakeClient(
            CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=mqtt.MQTTv5,
            manual_ack=True,
        )
        client.username_pw_set(self.config.mqtt.username, mqtt_password(self.config))
        if self.config.mqtt.tls_ca is not None:
            client.tls_set(ca_certs=str(self.config.mqtt.tls_ca))
        client.on_connect = self._on_connect
        client.on_subscribe = self._on_subscribe
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        return client

    def _connect(self, client: IntakeClient, timeout: float) -> None:
        """Connect (a persistent session) and wait for the CONNACK."""
        s, host, port = self.settings, self.config.mqtt.host, self.config.mqtt.port
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = s.session_expiry_s
        props.ReceiveMaximum = s.receive_maximum
        try:
            client.connect(host, port, s.keepalive_s, clean_start=False, properties=props)
        except OSError as exc:
            raise BridgeError(f"cannot reach MQTT broker {host}:{port}: {exc}") from None
        deadline = time.monotonic() + timeout
        while not self._connected and time.monotonic() < deadline:
            if self._connect_error:
                raise BridgeError(self._connect_error)
            client.loop(0.1)
        if not self._connected:
            raise BridgeError(f"no CONNACK from {host}:{port} within {timeout}s")

    def run(self, stop: Event) -> None:
        while not stop.is_set():
            self.step()

    def step(self, timeout: float = 0.01) -> None:
        """Read available MQTT packets, serve Kafka delivery reports, reconnect if needed."""
        assert self._client is not None and self._producer is not None
        if self._fatal:
            raise BridgeError(self._fatal)
        if self._connected:
            rc = self._client.loop(timeout)
            if rc == MQTTErrorCode.MQTT_ERR_SUCCESS:
                rc = self._read_burst()
            if rc != MQTTErrorCode.MQTT_ERR_SUCCESS and self._connected:
                self._lost(f"MQTT loop: {mqtt.error_string(rc)}")
        else:
            self._try_reconnect()
            time.sleep(timeout)
        if self._excess:
            self._flush_excess(time.monotonic() - EXCESS_WAIT_S)
        if self._spool is not None:
            self._spool_step()
        self._producer.poll(0)
        if self._retry:
            self._produce_retries()
        if self._connected:
            # Every ack this step's delivery reports (and spool syncs) allowed, in one send.
            self._client.flush_acks()
        for batch in self._batches:
            batch.flush()
        now = time.monotonic()
        if now - self._last_log > LOG_EVERY_S:
            self._last_log = now
            log.info(
                "received %d, produced %d, dead-lettered %d, spooled %d, dropped %d",
                self.received,
                self.produced,
                self.dead_lettered,
                self.spooled,
                self.dropped,
            )

    def _read_burst(self) -> MQTTErrorCode:
        """Read further packets already buffered in the socket without a select() per packet.

        ``loop()`` handles one packet per call; under load that select/misc round trip costs
        as much as the packet. Stops at the first read that delivered no message.
        """
        assert self._client is not None
        rc = MQTTErrorCode.MQTT_ERR_SUCCESS
        for _ in range(BURST_PACKETS):
            before = self.received
            rc = self._client.loop_read()
            if rc != MQTTErrorCode.MQTT_ERR_SUCCESS or self.received == before:
                break
        return rc

    def close(self, timeout: float = CLOSE_FLUSH_S) -> int:
        """Flush Kafka (acking what it confirms), disconnect; returns records not confirmed.

        What Kafka has not confirmed is not acknowledged, so the MQTT broker delivers it again
        to the next session; while spooling (Kafka away) the spool holds it. So the flush
        waits ``timeout`` at most, and not at all while spooling: a stop asked for during an
        outage must end inside the supervisor's grace."""
        remaining = 0
        if self._producer is not None:
            self._flush_excess(float("inf"))
            self._ack_spooled()
            remaining = self._producer.flush(0 if self._spooling else timeout)
        if self._spool is not None:
            self._spool.close()
        client = self._client
        if client is not None:
            if self._connected:
                client.flush_acks()
            deadline = time.monotonic() + 2.0
            while self._connected and client.want_write() and time.monotonic() < deadline:
                client.loop_write()
            # The session outlives this connection (expiry set at CONNECT): nothing is lost.
            self._closing = True
            client.disconnect()
            client.loop(0.1)
        self._client = None
        self._producer = None
        for batch in self._batches:
            batch.flush()
        return remaining

    # --- MQTT callbacks -------------------------------------------------------------------

    def _on_connect(
        self, client: mqtt.Client, _userdata: Any, flags: Any, reason: Any, _props: Any
    ) -> None:
        if reason.is_failure:
            self._connect_error = (
                f"MQTT broker refused {self.config.mqtt.username!r}: "
                f"{reason} (check [mqtt] username/password)"
            )
            return
        self._generation += 1
        self._connected = True
        self._reconnect_wait = RECONNECT_MIN_S
        client.subscribe([(t, SubscribeOptions(qos=1)) for t in self._subscriptions()])
        log.info("connected as %s (session present: %s)", self.client_id, flags.session_present)

    def _subscriptions(self) -> list[str]:
        return subscriptions(self.settings.group, self.limits, shared=self.settings.processes > 1)

    def _on_subscribe(
        self, _client: mqtt.Client, _userdata: Any, _mid: int, reasons: list[Any], _props: Any
    ) -> None:
        # The broker denies by default: a refused subscription would leave this bridge
        # connected but receiving nothing, so it stops and says why.
        refused = [
            (topic, str(rc))
            for topic, rc in zip(self._subscriptions(), reasons, strict=False)
            if rc.is_failure
        ]
        if refused:
            self._fatal = (
                f"MQTT broker refused {self.config.mqtt.username!r} the "
                f"subscription(s) {refused}: the bridge needs a service login "
                "(the broker's fleetsentry-bridge role), not a vehicle's"
            )

    def _on_disconnect(
        self, _client: mqtt.Client, _userdata: Any, _flags: Any, reason: Any, _props: Any
    ) -> None:
        if self._connected and not self._closing:
            self._lost(f"disconnected: {reason}")

    def _lost(self, why: str) -> None:
        self._connected = False
        self._generation += 1
        self._next_reconnect = time.monotonic() + self._reconnect_wait
        log.warning("%s; reconnecting in %.1fs", why, self._reconnect_wait)

    def _try_reconnect(self) -> None:
        assert self._client is not None
        if time.monotonic() < self._next_reconnect:
            return
        self._reconnect_wait = min(RECONNECT_MAX_S, self._reconnect_wait * 2)
        self._next_reconnect = time.monotonic() + self._reconnect_wait
        try:
            self._client.reconnect()
        except OSError as exc:
            log.warning("reconnect failed: %s", exc)
            return
        # CONNACK arrives through loop(); on_connect sets _connected.
        deadline = time.monotonic() + 5.0
        while not self._connected and not self._connect_error and time.monotonic() < deadline:
            if self._client.loop(0.1) != MQTTErrorCode.MQTT_ERR_SUCCESS:
                break

    def _on_message(self, _client: mqtt.Client, _userdata: Any, msg: mqtt.MQTTMessage) -> None:
        # Never raises: whatever goes wrong with one message (a rule, a decoder, a bug) makes it
        # a dead letter, acknowledged once Kafka has it. An exception here would end the
        # process before the ack, and the broker would hand the same message to every restart.
        self.received += 1
        now = self.clock()
        try:
            self._bridge(msg, now)
        except Exception as exc:  # noqa: BLE001 - see above
            self._internal_error(msg, exc, now)

    def _bridge(self, msg: mqtt.MQTTMessage, now: float) -> None:
        try:
            spec, vin = parse_topic(msg.topic, self.limits)
        except Rejected as rej:
            self._in_unknown.n += 1
            self._dead_letter(msg, rej.reason, rej.detail, now)
            return
        except UnicodeDecodeError as exc:
            self._in_unknown.n += 1
            self._dead_letter(
                msg, "unknown_topic", f"topic is not UTF-8: {exc.reason} at byte {exc.start}", now
            )
            return
        self._in[spec.mqtt_suffix].n += 1
        # Before any parsing, so a flooder's excess costs the least the bridge can spend.
        if self.limiter is not None and not self.limiter.allow(vin, time.monotonic()):
            self._rate_limited(msg, vin, now)
            return
        payload = cast(bytes, msg.payload)
        try:
            accepted = check(spec, vin, payload, now, self.limits)
        except Rejected as rej:
            self._dead_letter(msg, rej.reason, rej.detail, now)
            return
        self._produce(
            spec.raw_topic,
            vin.encode(),
            payload,
            partial(self._delivered, self._generation, msg.mid, msg.qos, spec.name, accepted.ts),
        )

    def _rate_limited(self, msg: mqtt.MQTTMessage, vin: str, now: float) -> None:
        inc = self._limited.get(vin)
        if inc is None:
            inc = self._limited_other
            if len(self._limited) < metrics.RATE_LIMITED_VINS:
                # Labelled by the vehicle's token, not its VIN: metrics leave the vault's
                # reach (scraped, shipped, shown); `edge vault reveal` names the vehicle.
                assert self._letters is not None
                label = self._letters.vehicle_token(vin)
                inc = self._limited[vin] = metrics.RATE_LIMITED.labels(SERVICE, label).inc
        inc()
        held = self._excess.get(vin)
        if held is None:
            held = self._excess[vin] = (msg, now, time.monotonic(), [])
        held[3].append((self._generation, msg.mid, msg.qos))
        if len(held[3]) >= EXCESS_BATCH:
            self._write_excess(vin)

    def _flush_excess(self, started_before: float) -> None:
        """Write the held excess of every vehicle whose first held message came before
        ``started_before`` (monotonic)."""
        for vin in [v for v, held in self._excess.items() if held[2] <= started_before]:
            self._write_excess(vin)

    def _write_excess(self, vin: str) -> None:
        first, now, _started, acks = self._excess.pop(vin)
        assert self.limiter is not None
        detail = (
            f"{len(acks)} message(s) from this vehicle over {self.limiter.rate:g} "
            f"messages/s (burst {self.limiter.burst:.0f}); the first one's payload is kept"
        )
        self._dead_letter(first, "rate_limited", detail, now, acks=acks)

    def _internal_error(self, msg: mqtt.MQTTMessage, exc: Exception, now: float) -> None:
        """Dead-letter a message whose handling raised; the detail names the exception and
        where it was raised, never its text (which may quote the payload)."""
        tb = exc.__traceback__
        while tb is not None and tb.tb_next is not None:
            tb = tb.tb_next
        where = (
            f"{Path(tb.tb_frame.f_code.co_filename).name}:{tb.tb_lineno}" if tb is not None else "?"
        )
        detail = f"{type(exc).__name__} at {where}"
        if detail not in self._internal_logged:  # once per kind: a vehicle may repeat it
            self._internal_logged.add(detail)
            log.error(
                "bridging a message raised %s; it goes to %s as internal_error (further "
                "ones of this kind are only counted)",
                detail,
                topics.DLQ_INGEST,
            )
        try:
            self._dead_letter(msg, "internal_error", detail, now)
        except Exception as again:  # noqa: BLE001 - the message itself breaks dead-lettering
            # Keep what can be kept: the reason and the MQTT message id (acked on delivery).
            stand_in = mqtt.MQTTMessage(msg.mid, b"")
            stand_in.qos = msg.qos
            self._dead_letter(
                stand_in,
                "internal_error",
                f"{detail}; payload not kept: dead-lettering it raised {type(again).__name__}",
                now,
            )

    # --- Kafka ----------------------------------------------------------------------------

    def _dead_letter(
        self,
        msg: mqtt.MQTTMessage,
        reason: str,
        detail: str,
        now: float,
        acks: list[Ack] | None = None,
    ) -> None:
        """One dead letter for ``msg`` or, with ``acks`` ((generation, mid, qos) each), for
        that many messages of one vehicle, all acknowledged once Kafka has the letter."""
        # Sealed: the payload, the topic's VIN and values quoted in the detail are personal.
        assert self._letters is not None
        acks = acks or [(self._generation, msg.mid, msg.qos)]
        key, value = self._letters.from_mqtt(
            getattr(msg, "_topic", b""), reason, detail, now, bytes(msg.payload), len(acks)
        )
        self._produce(topics.DLQ_INGEST, key, value, partial(self._dead_lettered, acks, reason))

    def _produce(
        self, topic: str, key: bytes | None, value: bytes, on_delivery: Callable[..., None]
    ) -> None:
        if self._spooling:
            assert self._spool is not None
            if self._spool.append(topic, key, value):
                self._spool_acks.append(on_delivery)
                self.spooled += 1
                self._spooled()
            else:
                on_delivery(None, None, dropped=True)
            return
        self._send(topic, key, value, on_delivery)

    def _send(
        self, topic: str, key: bytes | None, value: bytes, on_delivery: Callable[..., None]
    ) -> None:
        assert self._producer is not None
        try:
            produce(self._producer, topic, value, key, on_delivery)
        except KafkaException as exc:
            metrics.PRODUCE_ERRORS.labels(SERVICE, topic).inc()
            log.error("produce to %s failed: %s; will retry", topic, exc)
            self._retry.append((topic, key, value, on_delivery))

    def _produce_retries(self) -> None:
        pending, self._retry = self._retry, []
        for topic, key, value, on_delivery in pending:
            self._produce(topic, key, value, on_delivery)

    def _failed(self, err: KafkaError, msg: Message, on_delivery: Callable[..., None]) -> None:
        topic = msg.topic() or "unknown"
        if err.code() in _PURGED:  # taken back from the producer to go to the spool
            self._retry.append((topic, msg.key(), msg.value() or b"", on_delivery))
            return
        metrics.PRODUCE_ERRORS.labels(SERVICE, topic).inc()
        if err.fatal():
            self._fatal = f"Kafka producer fatal error: {err}"
            return
        # Not acked, so the broker would redeliver only after a reconnect: retry here.
        log.warning("delivery to %s failed: %s; retrying", topic, err)
        value = msg.value() or b""
        self._retry.append((topic, msg.key(), value, on_delivery))

    def _ack(self, generation: int, mid: int, qos: int) -> None:
        if qos and generation == self._generation and self._client is not None:
            self._client.ack(mid, qos)

    def _delivered(
        self,
        generation: int,
        mid: int,
        qos: int,
        stream: str,
        ts: float,
        err: KafkaError | None,
        msg: Message | None,
        dropped: bool = False,
    ) -> None:
        if dropped:
            self._drop(stream, [(generation, mid, qos)])
            return
        if err is not None:
            assert msg is not None
            self._failed(err, msg, partial(self._delivered, generation, mid, qos, stream, ts))
            return
        if msg is not None:
            self._confirmed += 1
        self._ack(generation, mid, qos)
        self.produced += 1
        self._out[stream].n += 1
        self._latency[stream].values.append(self.clock() - ts)

    def _dead_lettered(
        self,
        acks: list[Ack],
        reason: str,
        err: KafkaError | None,
        msg: Message | None,
        dropped: bool = False,
    ) -> None:
        if dropped:
            self._drop("dead_letter", acks)
            return
        if err is not None:
            assert msg is not None
            self._failed(err, msg, partial(self._dead_lettered, acks, reason))
            return
        if msg is not None:
            self._confirmed += 1
        for generation, mid, qos in acks:
            self._ack(generation, mid, qos)
        self.dead_lettered += len(acks)
        metrics.DLQ_MESSAGES.labels(SERVICE, reason).inc(len(acks))

    # --- the outage spool -------------------------------------------------------------------

    def _spool_step(self) -> None:
        """Acknowledge what was spooled, notice an outage, drain after one, save the cursor."""
        spool, producer = self._spool, self._producer
        assert spool is not None and producer is not None
        self._ack_spooled()
        now = time.monotonic()
        if self._confirmed != self._confirmed_seen or len(producer) == 0:
            self._confirmed_seen = self._confirmed
            self._progress_at = now
        elif not self._spooling and now - self._progress_at > self.settings.spool_after_s:
            self._start_spooling(now - self._progress_at, len(producer))
        if self._spooling:
            if self._drain_retry:
                retry, self._drain_retry = self._drain_retry, []
                for ticket, msg in retry:
                    self._send(
                        msg.topic() or "",
                        msg.key(),
                        msg.value() or b"",
                        partial(self._drained_one, ticket),
                    )
            room = DRAIN_WINDOW - spool.unconfirmed()
            if room > 0:
                for rec in spool.read(min(room, DRAIN_BATCH)):
                    self._send(
                        rec.topic, rec.key, rec.value, partial(self._drained_one, rec.ticket)
                    )
            # Drained once the spool is empty and the producer holds nothing: right after
            # the purge of _start_spooling it still holds the records taken back, until
            # their delivery reports bring them to the spool (with a frozen broker, later).
            if spool.empty() and not self._spool_acks and len(producer) == 0:
                self._set_spooling(False)
                log.info(
                    "outage spool drained: records go straight to Kafka again "
                    "(%d spooled so far, %d dropped)",
                    self.spooled,
                    self.dropped,
                )
        if now - self._saved_at > SPOOL_SAVE_EVERY_S:
            self._saved_at = now
            spool.save()
            self._spool_bytes.set(spool.size)

    def _start_spooling(self, waited: float, waiting: int) -> None:
        assert self._producer is not None and self._spool is not None
        log.warning(
            "Kafka confirmed nothing for %.1fs with %d record(s) waiting: spooling to "
            "%s until it is back",
            waited,
            waiting,
            self._spool.dir,
        )
        self._set_spooling(True)
        # Take back what waits in the producer (holding MQTT acks and the broker's in-flight
        # window); its delivery reports (purged) put it in _retry, in order, which spools it.
        # A purged record Kafka did write comes again from the spool: the enricher drops it.
        self._producer.purge(in_queue=True, in_flight=True)
        while self._producer.poll(0):
            pass
        self._produce_retries()
        self._ack_spooled()

    def _warn_orphaned_spools(self) -> None:
        """Spools of bridge processes this gateway no longer runs (``processes`` lowered)."""
        root = self.config.bridge_spool_dir(0).parent
        for path in sorted(root.glob("bridge-*")):
            n = path.name.removeprefix("bridge-")
            if n.isdigit() and int(n) >= self.settings.processes and any(path.glob("*.log")):
                left = Spool(path, 0)
                if not left.empty():
                    log.error(
                        "%s holds %d bytes of acknowledged records for bridge process %s, "
                        "which [bridge] processes = %d no longer starts: raise it again "
                        "until that spool is drained",
                        path,
                        left.size,
                        n,
                        self.settings.processes,
                    )
                left.close()

    @property
    def spooling(self) -> bool:
        """Whether records go to the outage spool (Kafka away, or the spool still draining)."""
        return self._spooling

    def _set_spooling(self, on: bool) -> None:
        self._spooling = on
        self._spooling_gauge.set(1 if on else 0)

    def _ack_spooled(self) -> None:
        """fsync the spool, then run the delivery callbacks of what it now holds (acks)."""
        if self._spool_acks:
            assert self._spool is not None
            self._spool.sync()
            acks, self._spool_acks = self._spool_acks, []
            for on_delivery in acks:
                on_delivery(None, None)

    def _drained_one(self, ticket: int, err: KafkaError | None, msg: Message) -> None:
        assert self._spool is not None
        if err is not None:
            if err.fatal():
                self._fatal = f"Kafka producer fatal error: {err}"
                return
            self._drain_retry.append((ticket, msg))
            return
        self._confirmed += 1
        self._spool.confirm(ticket)
        self._drained()

    def _drop(self, stream: str, acks: list[Ack]) -> None:
        """The spool is full: acknowledge and count what cannot be kept (never silently)."""
        if not self.dropped:
            assert self._spool is not None
            log.error(
                "the outage spool is full (%d bytes, [bridge] spool_max_bytes): "
                "messages are acknowledged and dropped until Kafka is back; counted in "
                "fleetsentry_spool_dropped_total",
                self._spool.size,
            )
        for generation, mid, qos in acks:
            self._ack(generation, mid, qos)
        self.dropped += len(acks)
        metrics.SPOOL_DROPPED.labels(SERVICE, stream).inc(len(acks))

    def _kafka_error(self, err: KafkaError) -> None:
        if err.fatal():
            self._fatal = f"Kafka producer fatal error: {err}"
            return
        self._kafka_errors(err)
