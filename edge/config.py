"""The gateway's one TOML file (``edge.toml``), as frozen typed objects.

Every setting has a default that works on one machine with ``fleetsentry infra up``.
Each service reads its own table; shared connection settings live in ``[kafka]``/``[mqtt]``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import msgspec
from msgspec import Meta

from shared import config as cfg
from shared.config import Secret

# Settings that may come from the environment (and only these).
ENV = {
    "edge_id": "FLEETSENTRY_EDGE_ID",
    "kafka.bootstrap": "FLEETSENTRY_KAFKA_BOOTSTRAP",
    "mqtt.host": "FLEETSENTRY_MQTT_HOST",
    "mqtt.port": "FLEETSENTRY_MQTT_PORT",
    "mqtt.password": "FLEETSENTRY_MQTT_PASSWORD",
}


class _Section(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    pass


class KafkaSettings(_Section, frozen=True, kw_only=True):
    bootstrap: str = "127.0.0.1:9092"


class MqttSettings(_Section, frozen=True, kw_only=True):
    host: str = "127.0.0.1"
    port: Annotated[int, Meta(ge=1, le=65535)] = 1883
    username: str = "fleetsentry-bridge"
    # Default: read from `fleetsentry infra`'s credentials file when not set here.
    password: Secret | None = None
    tls_ca: Path | None = None


class MetricsSettings(_Section, frozen=True, kw_only=True):
    host: str = "127.0.0.1"
    # Each service listens on base_port + its offset; 0 turns metrics off.
    base_port: Annotated[int, Meta(ge=0, le=65500)] = 9400


class EdgeConfig(_Section, frozen=True, kw_only=True):
    edge_id: Annotated[str, Meta(pattern=r"^[a-z0-9][a-z0-9-]{0,62}$")] = "edge-1"
    data_dir: Path = Path("~/.local/share/fleetsentry/edge").expanduser()
    kafka: KafkaSettings = msgspec.field(default_factory=KafkaSettings)
    mqtt: MqttSettings = msgspec.field(default_factory=MqttSettings)
    metrics: MetricsSettings = msgspec.field(default_factory=MetricsSettings)


def load(path: str | Path | None) -> EdgeConfig:
    """Load ``edge.toml`` (or all defaults); a bad value raises ConfigError naming it."""
    return cfg.load(path, EdgeConfig, env=ENV)
