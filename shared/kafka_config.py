"""How a Kafka client logs in: the one place that turns settings into client configuration.

The gateway's Kafka holds personal data (``raw.*``, ``dlq.ingest``), so it accepts only its own
services, authenticated with SASL/SCRAM (``fleetsentry infra up`` and the Ansible role create
the users). Every client of ours builds its configuration with :func:`client_config` (Python
clients) or :func:`java_properties` (MirrorMaker), so no call site writes security settings
by hand. A plain ``str`` bootstrap stands for a cluster without authentication (a
development cluster; neither of ours).

The cloud's Kafka is reached over the network, so it speaks TLS on every listener as well
(``ca_file``: the CA its certificates are checked against), and its KRaft authorizer gives
every login only what it needs: each gateway its own ``<edge-id>.*`` topics and ``models``,
each cloud service its own reads and writes (``shared/infra/acls.py``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import msgspec

from shared.config import Secret
from shared.errors import ConfigError
from shared.paths import default_home

# The gateway's users: its services, its MirrorMaker, and the node's own identity, which
# provisions topics and users (a static PLAIN user in server.properties, so it exists before
# any SCRAM user does, also on a node formatted before authentication was turned on).
EDGE_USER = "fleetsentry-edge"
MIRROR_USER = "fleetsentry-mirror"
ADMIN_USER = "fleetsentry-admin"
SCRAM_USERS = (EDGE_USER, MIRROR_USER)
# The cloud's service users (a gateway's is gateway_user(edge_id)).
STORE_USER = "fleetsentry-store"
TRAINER_USER = "fleetsentry-trainer"
DASHBOARD_USER = "fleetsentry-dashboard"
PUBLISHER_USER = "fleetsentry-publisher"
LABELS_USER = "fleetsentry-labels"
CLOUD_USERS = (STORE_USER, TRAINER_USER, DASHBOARD_USER, PUBLISHER_USER, LABELS_USER)
GATEWAY_USER_PREFIX = "gateway-"
Mechanism = Literal["SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN"]


class KafkaSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``[kafka]``: where the gateway's Kafka is and who we log in as."""

    # The brokers' addresses, host:port[,host:port...].
    bootstrap: str = "127.0.0.1:9092"
    # SASL user; "" connects without authentication (only for a cluster that has none).
    username: str = EDGE_USER
    # Default: read from `credentials_file` when not set here.
    password: Secret | None = None
    # JSON {user: password}, kept 0600; default: the one `fleetsentry infra up` writes
    # (<infra home>/edge-kafka/credentials.json).
    credentials_file: Path | None = None
    # The SASL mechanism of that login.
    mechanism: Mechanism = "SCRAM-SHA-512"
    # The CA certificate (PEM) the brokers' certificates are checked against; set: TLS.
    ca_file: Path | None = None


Target = KafkaSettings | str


def gateway_user(edge_id: str) -> str:
    """The cloud login of gateway ``edge_id`` (its MirrorMaker's)."""
    return GATEWAY_USER_PREFIX + edge_id


def cloud_login(
    bootstrap: str,
    user: str,
    *,
    security: str = "sasl_ssl",
    credentials_file: Path | None = None,
    ca_file: Path | None = None,
    mechanism: Mechanism = "SCRAM-SHA-512",
) -> Target:
    """How ``user`` logs in to the cloud's Kafka: TLS and SCRAM, with the password from
    ``credentials_file`` and the CA in ``ca_file`` (defaults: what `fleetsentry infra up`
    made under <infra home>/cloud-kafka); security "none": the bare bootstrap, for a
    development cluster without either."""
    if security == "none":
        return bootstrap
    if security != "sasl_ssl":
        raise ConfigError(
            f"unknown Kafka security {security!r}; use sasl_ssl or none", setting="kafka.security"
        )
    home = default_home() / "cloud-kafka"
    return KafkaSettings(
        bootstrap=bootstrap,
        username=user,
        mechanism=mechanism,
        credentials_file=credentials_file or home / "credentials.json",
        ca_file=ca_file or home / "tls" / "ca.pem",
    )


def default_credentials_file() -> Path:
    return default_home() / "edge-kafka" / "credentials.json"


def read_credentials(path: Path) -> dict[str, str]:
    creds: dict[str, str] = json.loads(path.read_text())
    return creds


def password(settings: KafkaSettings) -> str:
    """The password of ``settings.username``: set directly, or from the credentials file."""
    if settings.password is not None:
        return settings.password.reveal()
    path = settings.credentials_file or default_credentials_file()
    try:
        creds = read_credentials(path)
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"no Kafka password for {settings.username!r}: set kafka.password, or point "
            f"kafka.credentials_file at the file `fleetsentry infra up` wrote ({path}: {exc})",
            setting="kafka.credentials_file",
        ) from None
    if settings.username not in creds:
        raise ConfigError(
            f"{path} holds no password for {settings.username!r}", setting="kafka.username"
        )
    return creds[settings.username]


def bootstrap_of(target: Target) -> str:
    return target if isinstance(target, str) else target.bootstrap


def client_config(target: Target, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """librdkafka configuration for ``target``: bootstrap and login, then ``extra``."""
    conf: dict[str, Any] = {"bootstrap.servers": bootstrap_of(target)}
    if isinstance(target, KafkaSettings):
        if target.username:
            conf.update(
                {
                    "sasl.mechanism": target.mechanism,
                    "sasl.username": target.username,
                    "sasl.password": password(target),
                }
            )
        if target.ca_file is not None:
            conf["ssl.ca.location"] = str(target.ca_file)
        if target.username or target.ca_file is not None:
            conf["security.protocol"] = protocol(target)
    conf.update(extra or {})
    return conf


def java_properties(target: Target) -> dict[str, str]:
    """The same login as Java client properties (MirrorMaker prefixes them with an alias)."""
    conf = {"bootstrap.servers": bootstrap_of(target)}
    if not isinstance(target, KafkaSettings):
        return conf
    if target.ca_file is not None:
        conf.update({"ssl.truststore.type": "PEM", "ssl.truststore.location": str(target.ca_file)})
    if target.username or target.ca_file is not None:
        conf["security.protocol"] = protocol(target)
    if target.username:
        module = (
            "plain.PlainLoginModule" if target.mechanism == "PLAIN" else "scram.ScramLoginModule"
        )
        conf.update(
            {
                "sasl.mechanism": target.mechanism,
                "sasl.jaas.config": f"org.apache.kafka.common.security.{module} required "
                f"username={json.dumps(target.username)} "
                f"password={json.dumps(password(target))};",
            }
        )
    return conf


def protocol(settings: KafkaSettings) -> str:
    """Kafka's name for how ``settings`` connects: SASL and/or TLS."""
    tls = settings.ca_file is not None
    if settings.username:
        return "SASL_SSL" if tls else "SASL_PLAINTEXT"
    return "SSL" if tls else "PLAINTEXT"
