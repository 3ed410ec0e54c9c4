"""The gateway's one TOML file (``edge.toml``), as frozen typed objects.

Every setting has a default that works on one machine with ``fleetsentry infra up``.
Each service reads its own table; shared connection settings live in ``[kafka]``/``[mqtt]``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from shared import config as cfg
from shared.baselines import BASELINE_PUBLIC_KEY
from shared.config import Secret
from shared.kafka_config import KafkaSettings
from shared.releases import DEFAULT_FLEET, FLEET_PATTERN

__all__ = ["EdgeConfig", "KafkaSettings", "load", "parse_size"]

# Settings that may come from the environment (and only these).
ENV = {
    "edge_id": "FLEETSENTRY_EDGE_ID",
    "kafka.bootstrap": "FLEETSENTRY_KAFKA_BOOTSTRAP",
    "kafka.password": "FLEETSENTRY_KAFKA_PASSWORD",
    "mqtt.host": "FLEETSENTRY_MQTT_HOST",
    "mqtt.port": "FLEETSENTRY_MQTT_PORT",
    "mqtt.password": "FLEETSENTRY_MQTT_PASSWORD",
}


SIZE_PATTERN = r"^\s*[0-9]+(\.[0-9]+)?\s*([KMGT]i?B|B)?\s*$"
_UNITS = {
    "": 1,
    "B": 1,
    "KB": 1000,
    "MB": 1000**2,
    "GB": 1000**3,
    "TB": 1000**4,
    "KiB": 1 << 10,
    "MiB": 1 << 20,
    "GiB": 1 << 30,
    "TiB": 1 << 40,
}


def parse_size(text: str) -> int:
    """Bytes in a size such as ``"20 GiB"``, ``"512MB"`` or ``"1048576"``.

    >>> parse_size("1.5 KiB")
    1536
    """
    match = re.match(SIZE_PATTERN, text)
    if match is None:
        raise ValueError(f'{text!r} is no size (e.g. "20 GiB")')
    number = text.strip()[: len(text.strip()) - len(match.group(2) or "")]
    return int(float(number) * _UNITS[match.group(2) or ""])


class _Section(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    pass


class MqttSettings(_Section, frozen=True, kw_only=True):
    """``[mqtt]``: the gateway's Mosquitto, as the bridge and the scorer reach it."""

    # The broker's address (the gateway's own services use its loopback listener).
    host: str = "127.0.0.1"
    # Its port: 1883 plain on loopback; a TLS listener needs tls_ca too.
    port: Annotated[int, Meta(ge=1, le=65535)] = 1883
    # The gateway services' MQTT login (the bridge reads, the scorer sends decisions).
    username: str = "fleetsentry-bridge"
    # Default: read from `fleetsentry infra`'s credentials file when not set here.
    password: Secret | None = None
    # Where that file is; default: the Mosquitto home of `fleetsentry infra`.
    credentials_file: Path | None = None
    # The CA certificate (PEM) the broker's certificate is checked against; set: TLS.
    tls_ca: Path | None = None


class MetricsSettings(_Section, frozen=True, kw_only=True):
    """``[metrics]``: the Prometheus endpoints of the gateway's services."""

    # The address every service's metrics endpoint binds.
    host: str = "127.0.0.1"
    # Each service listens on base_port + its offset; 0 turns metrics off.
    base_port: Annotated[int, Meta(ge=0, le=65500)] = 9400


class BridgeSettings(_Section, frozen=True, kw_only=True):
    """``[bridge]``: MQTT -> raw.* with validation, manual acks after Kafka delivery."""

    # Shared-subscription group: processes in one group split the vehicles' messages.
    group: Annotated[str, Meta(pattern=r"^[A-Za-z0-9_-]{1,64}$")] = "fleetsentry-bridge"
    # Bridge processes `edge run` starts (each gets client id {edge_id}-bridge-{n}).
    processes: Annotated[int, Meta(ge=1, le=16)] = 1
    # Reject events whose device time is further ahead of the gateway clock than this.
    max_future_skew_s: Annotated[float, Meta(ge=0)] = 300.0
    # Reject events whose device time is further behind the gateway clock than this. Three
    # days: a vehicle parked out of coverage over a weekend still delivers its buffered
    # events. raw.* keeps records 2 days from when the bridge wrote them (not device time), so
    # an accepted old event still gets its full 2 days there; older ones are dead letters.
    max_past_age_s: Annotated[float, Meta(gt=0)] = 3 * 86400.0
    # Reject payloads larger than this (the contract's limit is the ceiling).
    max_payload_bytes: Annotated[int, Meta(ge=256, le=16384)] = 16384
    # Reject JSON nesting deeper than this, checked before decoding (events are flat: 1).
    # The ceiling keeps every decoder far from Python's recursion limit.
    max_json_depth: Annotated[int, Meta(ge=1, le=64)] = 16
    # Per-vehicle rate limit (token bucket on the topic's VIN): messages per second on average
    # and at once; the excess goes to dlq.ingest as "rate_limited". A vehicle sends about 1
    # telemetry frame per second and a payment now and then; the burst lets one back from an
    # hour without coverage send its buffered frames at once. 0 turns the limit off.
    vehicle_rate_per_s: Annotated[float, Meta(ge=0)] = 20.0
    # The token bucket's size: messages a vehicle may send at once beyond the rate.
    vehicle_burst: Annotated[int, Meta(ge=1, le=10_000_000)] = 3600
    # Unacknowledged MQTT messages the broker may have in flight to one bridge process. A
    # message is acked after Kafka's delivery report (linger, the broker's round trip, the
    # process's turn on the CPU): at 2,000 two processes of 0.3 CPU each waited on the window
    # (bench/bridge.py: 1.5x one, 2.0x at 5,000). Held in memory until acked: at most this
    # many payloads of up to max_payload_bytes (80 MB at 16 KiB; events are ~0.5 KiB).
    receive_maximum: Annotated[int, Meta(ge=1, le=65535)] = 5000
    # How long the broker keeps the bridge's session (and queues for it) while it is away.
    session_expiry_s: Annotated[int, Meta(ge=0)] = 7 * 24 * 3600
    # MQTT keepalive: the broker drops the bridge's connection after 1.5x this in silence.
    keepalive_s: Annotated[int, Meta(ge=5, le=300)] = 30
    # The Kafka producer's wait to fill a batch into raw.* (librdkafka's linger.ms).
    linger_ms: Annotated[int, Meta(ge=0, le=1000)] = 10
    # The Kafka producer's compression of raw.* batches.
    compression: Literal["none", "lz4", "zstd", "snappy", "gzip"] = "lz4"
    # Outage spool: when Kafka has confirmed nothing for spool_after_s while records wait,
    # the bridge writes them (and what follows) to <data_dir>/spool/bridge-<n>, acknowledges
    # the MQTT messages once they are on disk, and drains the spool in order when Kafka is
    # back. spool_max_bytes bounds each process's spool: past it, messages are acknowledged
    # and dropped, counted in fleetsentry_spool_dropped_total (see docs/gateway.md, "When
    # the edge Kafka is away"). Unset: the disk plan's spool share ([disk] budget, 10 %) split
    # between the processes. 0 turns the spool off (the broker's queue is the only buffer).
    spool_after_s: Annotated[float, Meta(ge=0.5, le=3600)] = 5.0
    # Bytes each bridge process may spool (see spool_after_s above): unset, the disk plan's
    # share; 0, no spool.
    spool_max_bytes: Annotated[int, Meta(ge=0)] | None = None


class ScorerSettings(_Section, frozen=True, kw_only=True):
    """``[scorer]``: anon.* -> scores.*, alerts and payment decisions (int8 models)."""

    # Directory with one model directory per stream (<models_dir>/<stream>/); a stream
    # without one is scored by the baseline shipped in the package.
    models_dir: Path | None = None
    # Ed25519 public key models must be signed with (default: the one shipped with baselines).
    public_key: Path | None = None
    # Several keys, during a key rotation: models and releases signed by any of them are
    # accepted (replaces public_key when set). See docs/models.md, "Rotating the signing key".
    public_keys: list[Path] = []
    # Micro-batch: score what has arrived, up to max_batch, waiting at most max_wait_ms.
    max_batch: Annotated[int, Meta(ge=1, le=65536)] = 2048
    # The longest wait, in milliseconds, for a micro-batch to fill.
    max_wait_ms: Annotated[float, Meta(ge=0, le=1000)] = 5.0
    # Alert episodes, of every stream whose alerts are episodes: open after this many anomalous
    # events within the window... (unset: each stream's declared rule; telemetry's is 4 in 10 s)
    episode_open_events: Annotated[int, Meta(ge=1, le=100)] | None = None
    # ... the window, in seconds, those anomalous events must fall within (unset: declared).
    episode_open_window_s: Annotated[float, Meta(gt=0)] | None = None
    # ... close after this long without one (unset: each stream's declared rule, telemetry 30 s).
    episode_quiet_gap_s: Annotated[float, Meta(gt=0)] | None = None
    # An open episode's update (a new peak) is sent at most this often, in seconds.
    episode_update_interval_s: Annotated[float, Meta(ge=0)] = 10.0
    # Send approvals too (the vehicle waits for a decision either way); declines always go.
    send_approvals: bool = True
    # How long the group waits for a silent scorer before giving its partitions away (a scorer
    # started again takes them back at once: it is a static member of its group).
    session_timeout_ms: Annotated[int, Meta(ge=6000, le=300_000)] = 15_000

    def trusted_keys(self) -> list[Path]:
        """The public keys this gateway accepts models and releases from."""
        if self.public_keys:
            return list(self.public_keys)
        return [self.public_key or BASELINE_PUBLIC_KEY]


class VaultSettings(_Section, frozen=True, kw_only=True):
    """``[vault]``: the encrypted PII store (default paths: under ``data_dir``)."""

    # SQLite file (default: <data_dir>/vault.sqlite).
    path: Path | None = None
    # The master key (created 0600 when missing; default: <data_dir>/vault.key). Back it up
    # apart from the database: without it the vault cannot be read.
    key_file: Path | None = None
    # The fleet secret tokens are keyed with: the SAME file on every gateway of a fleet, so a
    # card gets one token everywhere (created when missing; default: <data_dir>/fleet.secret).
    # The vault remembers the secret's fingerprint: the services refuse to start with another.
    fleet_secret_file: Path | None = None
    # Values not seen for this many days are deleted: by the running enricher, a bounded
    # number at a time, and by `fleetsentry edge vault purge`.
    retention_days: Annotated[float, Meta(gt=0)] = 90.0


class EnricherSettings(_Section, frozen=True, kw_only=True):
    """``[enricher]``: raw.* -> vault + anon.*, exactly once through Kafka transactions."""

    # The Kafka consumer group the enricher's instances share raw.* in.
    group: Annotated[str, Meta(pattern=r"^[A-Za-z0-9_.-]{1,128}$")] = "fleetsentry-enricher"
    # Records consumed and written per transaction, and the longest wait to fill a batch.
    # A backlog fills whole batches at once whatever the wait, so the wait only bounds the
    # delay of a quiet stream: consumers (the scorer) see records when their transaction
    # commits, and a payment decision waits for it. 20 ms keeps decisions quick at the cost
    # of up to ~50 small transactions a second; raise it on a gateway that declines nothing.
    batch_size: Annotated[int, Meta(ge=1, le=100_000)] = 5000
    # The longest wait, in milliseconds, to fill a batch (see batch_size above).
    batch_wait_ms: Annotated[float, Meta(ge=0, le=10_000)] = 20.0
    # Event ids remembered per raw partition to drop the bridge's redeliveries.
    # (Redeliveries come within the bridge's in-flight window, a few thousand messages.)
    dedup_window: Annotated[int, Meta(ge=1000, le=10_000_000)] = 50_000
    # A vehicle, card or driver whose feature state was not written for this long (gateway
    # wall time, not device time) is forgotten: memory and the changelog stay bounded however
    # many made-up ids vehicles send. A week keeps vehicles used weekly warm; a key that
    # comes back after it starts afresh, like a new one.
    state_ttl_s: Annotated[float, Meta(gt=0, le=366 * 86_400)] = 7 * 86_400.0
    # And at most this many states (about 600 bytes of memory and 100 of changelog each):
    # past it the least recently written go first, so a flood inside the TTL cannot exhaust
    # memory either. A gateway holds about three per vehicle (vehicle, card, driver).
    max_states: Annotated[int, Meta(ge=1000, le=10_000_000)] = 100_000
    # The Kafka producer's wait to fill a batch into anon.* (librdkafka's linger.ms).
    linger_ms: Annotated[int, Meta(ge=0, le=1000)] = 5
    # The Kafka producer's compression of anon.* batches.
    compression: Literal["none", "lz4", "zstd", "snappy", "gzip"] = "lz4"
    # A transaction not committed within this is aborted by the broker (and redone).
    transaction_timeout_ms: Annotated[int, Meta(ge=1000, le=900_000)] = 60_000
    # How long the group waits for a silent instance before giving its partitions away.
    session_timeout_ms: Annotated[int, Meta(ge=6000, le=300_000)] = 15_000


class AgentSettings(_Section, frozen=True, kw_only=True):
    """``[agent]``: cloud.models -> verify, shadow-score, switch the scorer, roll back."""

    # The active models live in [scorer] models_dir (default: <data_dir>/models).
    # Recent anon.<stream> records both models score before a switch.
    shadow_window: Annotated[int, Meta(ge=0, le=1_000_000)] = 5000
    # A new model may alert at most max(ratio x the running rate, running rate + increase),
    # on the shadow window and then live.
    max_alert_rate_ratio: Annotated[float, Meta(ge=1)] = 2.0
    # ... and the increase over the running rate that is always allowed (a share, 0.01 = 1 %).
    max_alert_rate_increase: Annotated[float, Meta(ge=0, le=1)] = 0.01
    # Live watch after a switch: judge after this many events, give the scorer this long to
    # load the model, stop watching after watch_s.
    watch_min_events: Annotated[int, Meta(ge=1)] = 200
    # Seconds the scorer has to start scoring with the new model before it is rolled back.
    activation_timeout_s: Annotated[float, Meta(gt=0)] = 60.0
    # Seconds after a switch during which the live alert rate can still roll it back.
    watch_s: Annotated[float, Meta(gt=0)] = 600.0
    # Installed versions kept per stream (the active and previous ones always are).
    keep_versions: Annotated[int, Meta(ge=2, le=100)] = 5
    # The fleet this gateway belongs to: releases for another fleet are refused (the cloud's
    # [releases] fleet must match).
    fleet: Annotated[str, Meta(pattern=FLEET_PATTERN)] = DEFAULT_FLEET
    # How often the agent reads cloud.models through to see a champion for every stream (a
    # missing one is reported: fleetsentry_agent_champion_missing, model-status "missing").
    champion_check_s: Annotated[float, Meta(ge=1)] = 300.0


class DiskSettings(_Section, frozen=True, kw_only=True):
    """``[disk]``: what the gateway may use of its disk; ``edge/disk.py`` shares it out."""

    # Everything the gateway writes: Kafka's log dir, Mosquitto's persistence, the bridge's
    # outage spool and data_dir (vault, models). A number with a unit (B, KiB, MiB, GiB, TiB;
    # KB, MB, GB, TB are powers of 1000). Give the gateway's services what the filesystem
    # can spare, not its size: the OS and its logs need the rest.
    budget: Annotated[str, Meta(pattern=SIZE_PATTERN)] = "20 GiB"
    # Directories whose files count against the budget besides data_dir (Kafka's log dir,
    # Mosquitto's persistence): the agent reports what they hold; unreadable files count 0.
    paths: list[Path] = msgspec.field(default_factory=list)

    @property
    def budget_bytes(self) -> int:
        return parse_size(self.budget)


class StreamsSettings(_Section, frozen=True, kw_only=True):
    """``[streams]``: sensor streams declared in TOML, besides the built-in ones."""

    # A directory of stream declarations (*.toml, docs/streams.md) handled beside the
    # built-in telemetry and payments; unset: the built-in streams only.
    dir: Path | None = None


class EdgeConfig(_Section, frozen=True, kw_only=True):
    # This gateway's name: its topics arrive in the cloud as <edge_id>.*, and it logs in to
    # the cloud's Kafka as gateway-<edge_id>.
    edge_id: Annotated[str, Meta(pattern=r"^[a-z0-9][a-z0-9-]{0,62}$")] = "edge-1"
    # Where the gateway keeps its state: the vault, its keys, models, the bridge's spool.
    data_dir: Path = Path("~/.local/share/fleetsentry/edge").expanduser()
    kafka: KafkaSettings = msgspec.field(default_factory=KafkaSettings)
    mqtt: MqttSettings = msgspec.field(default_factory=MqttSettings)
    metrics: MetricsSettings = msgspec.field(default_factory=MetricsSettings)
    bridge: BridgeSettings = msgspec.field(default_factory=BridgeSettings)
    scorer: ScorerSettings = msgspec.field(default_factory=ScorerSettings)
    vault: VaultSettings = msgspec.field(default_factory=VaultSettings)
    enricher: EnricherSettings = msgspec.field(default_factory=EnricherSettings)
    agent: AgentSettings = msgspec.field(default_factory=AgentSettings)
    disk: DiskSettings = msgspec.field(default_factory=DiskSettings)
    streams: StreamsSettings = msgspec.field(default_factory=StreamsSettings)

    @property
    def models_dir(self) -> Path:
        """Where the agent installs models and the scorer looks for the active ones."""
        return self.scorer.models_dir or self.data_dir / "models"

    def bridge_spool_dir(self, instance: int) -> Path:
        """Where bridge process ``instance`` spools while Kafka is away."""
        return self.data_dir / "spool" / f"bridge-{instance}"


def load(path: str | Path | None) -> EdgeConfig:
    """Load ``edge.toml`` (or all defaults); a bad value raises ConfigError naming it."""
    return cfg.load(path, EdgeConfig, env=ENV)
