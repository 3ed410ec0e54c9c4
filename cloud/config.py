"""The cloud's one TOML file (``cloud.toml``), as frozen typed objects.

Every setting has a default that works on one machine with ``fleetsentry infra up``.
Each cloud service reads its own table; shared connection settings live in ``[kafka]`` and
``[registry]``.

```toml
[kafka]
bootstrap = "127.0.0.1:9192,127.0.0.1:9194,127.0.0.1:9196"
# TLS and SASL/SCRAM; each service logs in as its own user (store_user, ...) with the
# password in credentials_file. Defaults: what `fleetsentry infra up` made.
ca_file = "/etc/fleetsentry/cloud-ca.pem"
credentials_file = "/etc/fleetsentry/cloud-kafka.json"

[dashboard]
port = 8600
# `fleetsentry cloud dashboard hash-password` prints a hash for this list.
users = [{ name = "alice", password_hash = "scrypt$16384$8$1$...$..." }]
```
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from shared import config as cfg
from shared import kafka_config
from shared.config import Secret
from shared.releases import DEFAULT_FLEET, FLEET_PATTERN

# Settings that may come from the environment (and only these).
ENV = {
    "kafka.bootstrap": "FLEETSENTRY_CLOUD_BOOTSTRAP",
    "registry.root": "FLEETSENTRY_REGISTRY",
    "dashboard.port": "FLEETSENTRY_DASHBOARD_PORT",
}
DEFAULT_STATE_DIR = Path("~/.local/share/fleetsentry/cloud")


class _Section(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    pass


Service = Literal["store", "trainer", "dashboard", "publisher"]


class KafkaSettings(_Section, frozen=True, kw_only=True):
    """``[kafka]``: where the cloud's Kafka is, and how each cloud service logs in."""

    # The cloud brokers' addresses, host:port[,host:port...].
    bootstrap: str = "127.0.0.1:9192,127.0.0.1:9194,127.0.0.1:9196"
    # "sasl_ssl": TLS, and a SCRAM login per service whose ACLs say what it may do (the cloud
    # as `fleetsentry infra up` runs it); "none": a development cluster with neither.
    security: Literal["sasl_ssl", "none"] = "sasl_ssl"
    # The CA the brokers' certificates are checked against; default: the one `infra up`
    # made (<infra home>/cloud-kafka/tls/ca.pem).
    ca_file: Path | None = None
    # JSON {user: password}, kept 0600; default: the one `infra up` wrote
    # (<infra home>/cloud-kafka/credentials.json).
    credentials_file: Path | None = None
    # The SASL mechanism of every cloud service's login.
    mechanism: Literal["SCRAM-SHA-512", "SCRAM-SHA-256"] = "SCRAM-SHA-512"
    # The cloud store's login (its password: credentials_file).
    store_user: str = kafka_config.STORE_USER
    # The trainer service's login.
    trainer_user: str = kafka_config.TRAINER_USER
    # The dashboard's login (it reads; what operators ask for goes through the signer).
    dashboard_user: str = kafka_config.DASHBOARD_USER
    # The login that publishes models (the signer's).
    publisher_user: str = kafka_config.PUBLISHER_USER

    def login(self, service: Service) -> kafka_config.Target:
        """How ``service`` connects: its own login, over TLS (or the bare bootstrap)."""
        return kafka_config.cloud_login(
            self.bootstrap,
            getattr(self, f"{service}_user"),
            security=self.security,
            credentials_file=self.credentials_file,
            ca_file=self.ca_file,
            mechanism=self.mechanism,
        )


class RegistrySettings(_Section, frozen=True, kw_only=True):
    """``[registry]``: the model registry every cloud service shares."""

    # The registry's directory: its database and every registered model version.
    root: Path = DEFAULT_STATE_DIR / "registry"


class DashboardUser(_Section, frozen=True, kw_only=True):
    """One ``[[dashboard.users]]`` entry: a dashboard login written in the file."""

    # The name to sign in with.
    name: Annotated[str, Meta(pattern=r"^[A-Za-z0-9_.@-]{1,64}$")]
    # scrypt$N$r$p$salt$hash (base64), from `fleetsentry cloud dashboard hash-password`.
    password_hash: Secret
    # "viewer" reads everything; "operator" may also promote, roll back and retrain. Entries
    # without a role predate roles, when every user could do all of it: they are operators.
    role: Literal["viewer", "operator"] = "operator"


class DashboardSettings(_Section, frozen=True, kw_only=True):
    """``[dashboard]``: the web dashboard (fleet, detection, training runs, registry)."""

    # The address the dashboard binds.
    host: str = "127.0.0.1"
    # The port it serves on.
    port: Annotated[int, Meta(ge=0, le=65535)] = 8600
    # Who may sign in, besides the users added with `fleetsentry cloud dashboard user add`
    # (kept in <state_dir>/dashboard.sqlite). Neither: a demo operator is created with a
    # random password, written 0600 to <state_dir>/dashboard-demo-user.json, printed at start.
    users: list[DashboardUser] = []
    # Signs session cookies. Unset: a random key kept 0600 in <state_dir>/dashboard.key.
    session_secret: Secret | None = None
    # A session ends this long after sign-in, in seconds.
    session_max_age_s: Annotated[int, Meta(ge=60)] = 8 * 3600
    # Failed sign-ins (form or HTTP Basic) within signin_window_s that lock a user name, or
    # a client address, for signin_lockout_s (answered 429 with Retry-After).
    signin_max_failures: Annotated[int, Meta(ge=1)] = 5
    # The same, for failures from one client address (whatever the user names).
    signin_max_failures_per_address: Annotated[int, Meta(ge=1)] = 20
    # The window, in seconds, failed sign-ins are counted over.
    signin_window_s: Annotated[float, Meta(gt=0)] = 900.0
    # How long, in seconds, a locked name or address stays locked.
    signin_lockout_s: Annotated[float, Meta(gt=0)] = 900.0
    # Threads checking password hashes (~16 MiB and a core each while they run).
    hash_workers: Annotated[int, Meta(ge=1, le=16)] = 2
    # Serve HTTPS directly (cookies are then Secure). Behind a TLS proxy, set secure_cookies.
    tls_cert: Path | None = None
    # The private key (PEM) of tls_cert.
    tls_key: Path | None = None
    # Mark cookies Secure: "auto" when serving HTTPS, or always (behind a TLS proxy), or never.
    secure_cookies: Literal["auto", "always", "never"] = "auto"
    # A gateway is offline when nothing has arrived from it for this long.
    offline_after_s: Annotated[float, Meta(gt=0)] = 60.0
    # Live figures: the window, in seconds, kept in memory.
    window_s: Annotated[float, Meta(ge=60)] = 3600.0
    # The width, in seconds, of one bucket of the rate charts.
    bucket_s: Annotated[float, Meta(ge=1)] = 10.0
    # How often, in seconds, the pages fetch fresh figures.
    refresh_s: Annotated[float, Meta(ge=1)] = 5.0
    # The dashboard's own state: its users and sessions, its session key, the demo login.
    state_dir: Path = DEFAULT_STATE_DIR


class StoreSettings(_Section, frozen=True, kw_only=True):
    """``[store]``: every gateway's replicated topics as Parquet, by dataset and day."""

    # The store's directory: Parquet files by dataset and day, and their index.
    root: Path = DEFAULT_STATE_DIR / "store"
    # The Kafka consumer group the store reads the replicated topics in.
    group_id: str = "fleetsentry-store"
    # A flush (files written, then offsets committed) after this many records or seconds.
    batch_records: Annotated[int, Meta(ge=1)] = 5000
    # ... or after this many seconds, whichever comes first.
    flush_interval_s: Annotated[float, Meta(gt=0)] = 5.0
    # The Parquet files' compression.
    compression: Literal["zstd", "snappy", "gzip", "none"] = "zstd"


class TrainerSettings(_Section, frozen=True, kw_only=True):
    """``[trainer]``: where the trainer service reads the fleet's data."""

    # "store": the Parquet store under [store] root (written by `fleetsentry cloud store`;
    # a drift check reads only the files, not every replicated topic from its start).
    # "kafka": the replicated topics themselves (no store process needed).
    source: Literal["kafka", "store"] = "kafka"
    # Register the shipped baselines as the first champions of streams that have none (the
    # models the gateways run until the cloud promotes another).
    seed_baselines: bool = True
    # Train and promote on data with no labelled anomalies yet (judged on alert rate alone).
    # Off: the service waits for labels and says so.
    allow_unlabelled_promotion: bool = False
    # How a run holds out the data it judges champion and challenger on: "time" (the most
    # recent slice) or "vehicle" (a fifth of the vehicles, or cards, over the whole window).
    # Labels arrive late (a chargeback, a workshop report), so the most recent slice holds
    # few; "vehicle" judges on every labelled episode of vehicles the model never saw.
    split: Literal["time", "vehicle"] = "time"
    # A run is judged on the labelled episodes of its holdout: with one, the verdict (and the
    # int8 check) speaks for a single fault or fraud, so the service waits for labels until the
    # holdout holds at least this many episodes (not with allow_unlabelled_promotion).
    min_holdout_episodes: Annotated[int, Meta(ge=1)] = 2
    # Hold a retrained challenger that passed the automatic checks as "awaiting approval"
    # until an operator approves it on the dashboard (then the signer signs and publishes
    # it) or rejects it. Off (the default, for the one-machine demo): a better challenger is
    # promoted and published at once. Turn it on for a real fleet.
    require_approval: bool = False


class ReleaseSettings(_Section, frozen=True, kw_only=True):
    """``[releases]``: what every published model's signed release says."""

    # The fleet the gateways are in ([agent] fleet): another fleet's gateways refuse them.
    fleet: Annotated[str, Meta(pattern=FLEET_PATTERN)] = DEFAULT_FLEET
    # Gateways refuse a release this long after it was signed; the trainer service signs a
    # new release of each champion once half of it has passed.
    ttl_days: Annotated[float, Meta(gt=0, le=3650)] = 30.0


class StreamsSettings(_Section, frozen=True, kw_only=True):
    """``[streams]``: sensor streams declared in TOML, besides the built-in ones."""

    # A directory of stream declarations (*.toml, docs/streams.md) handled beside the
    # built-in telemetry and payments; unset: the built-in streams only.
    dir: Path | None = None


class CloudConfig(_Section, frozen=True, kw_only=True):
    kafka: KafkaSettings = KafkaSettings()
    registry: RegistrySettings = RegistrySettings()
    dashboard: DashboardSettings = DashboardSettings()
    store: StoreSettings = StoreSettings()
    trainer: TrainerSettings = TrainerSettings()
    releases: ReleaseSettings = ReleaseSettings()
    streams: StreamsSettings = StreamsSettings()


def login_at(
    bootstrap: str, config_path: str | Path | None, service: Service
) -> kafka_config.Target:
    """``service``'s login as ``config_path``'s [kafka] says, at ``bootstrap`` (a command's
    --bootstrap option)."""
    kafka = msgspec.structs.replace(load(config_path).kafka, bootstrap=bootstrap)
    return kafka.login(service)


def load(path: str | Path | None = None) -> CloudConfig:
    """Load ``cloud.toml`` (or the defaults); errors name the setting."""
    return cfg.load(path, CloudConfig, ENV)
