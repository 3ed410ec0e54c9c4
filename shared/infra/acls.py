"""Who may do what on the cloud's Kafka: one ACL set per login, applied by its admin.

The cloud runs the KRaft authorizer with no access unless an ACL grants it:

- a gateway (``gateway-<edge-id>``, its MirrorMaker) writes only its own ``<edge-id>.*``
  topics, keeps MirrorMaker's state in its own ``mm2-*.<edge-id>.internal`` topics, group and
  transactional ids, and reads ``models``;
- the store, the trainer and the dashboard read; none of them writes anything;
- the publisher writes ``models``; the label feed writes ``labels``.

So a gateway in an attacker's hands can write what it could anyway (its own events), and
cannot touch another gateway's topics, the labels that steer training, or the models.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from shared import topics
from shared.infra.errors import InfraError
from shared.kafka_config import (
    DASHBOARD_USER,
    LABELS_USER,
    PUBLISHER_USER,
    STORE_USER,
    TRAINER_USER,
    Target,
    client_config,
    gateway_user,
)

# (resource type, name, pattern, operations); names are confluent-kafka's (BROKER is Kafka's
# CLUSTER resource), pattern "prefixed" or "literal"; "*" as a literal name is every
# resource of the type.
Grant = tuple[str, str, str, tuple[str, ...]]

_STATE = ("CREATE", "READ", "WRITE", "DESCRIBE", "DESCRIBE_CONFIGS", "ALTER_CONFIGS")
# Readers' groups are all named fleetsentry-*: none can join a gateway's MirrorMaker group.
_READER = (
    ("TOPIC", "*", "literal", ("READ", "DESCRIBE", "DESCRIBE_CONFIGS")),
    ("GROUP", "fleetsentry-", "prefixed", ("READ", "DESCRIBE")),
)


def gateway_grants(edge_id: str) -> list[Grant]:
    """What gateway ``edge_id``'s MirrorMaker needs in the cloud, and nothing more."""
    group = f"{edge_id}-mm2"  # MirrorMaker's worker group for the <edge_id> -> cloud flow
    state = [
        ("TOPIC", f"mm2-{store}.{edge_id}.internal", "literal", _STATE)
        for store in ("configs", "offsets", "status")
    ]
    return [
        (
            "TOPIC",
            f"{edge_id}.",
            "prefixed",
            ("CREATE", "WRITE", "DESCRIBE", "DESCRIBE_CONFIGS", "ALTER_CONFIGS"),
        ),
        *state,
        ("TOPIC", topics.MODELS, "literal", ("READ", "DESCRIBE", "DESCRIBE_CONFIGS")),
        ("GROUP", group, "literal", ("READ", "DESCRIBE")),
        # Exactly-once: the worker's config-topic producer's and each task's transactional
        # ids (Connect's DistributedConfig.transactionalProducerId and taskTransactionalId).
        ("TRANSACTIONAL_ID", f"connect-cluster-{group}", "literal", ("WRITE", "DESCRIBE")),
        ("TRANSACTIONAL_ID", f"{group}-", "prefixed", ("WRITE", "DESCRIBE")),
        ("BROKER", "kafka-cluster", "literal", ("IDEMPOTENT_WRITE", "DESCRIBE")),
    ]


def service_grants() -> dict[str, list[Grant]]:
    """The cloud services' logins -> what each needs."""
    return {
        STORE_USER: list(_READER),
        TRAINER_USER: list(_READER),
        DASHBOARD_USER: list(_READER),
        PUBLISHER_USER: [
            ("TOPIC", topics.MODELS, "literal", ("WRITE", "DESCRIBE", "DESCRIBE_CONFIGS")),
            ("BROKER", "kafka-cluster", "literal", ("IDEMPOTENT_WRITE",)),
        ],
        LABELS_USER: [
            ("TOPIC", topics.LABELS, "literal", ("WRITE", "DESCRIBE")),
            ("BROKER", "kafka-cluster", "literal", ("IDEMPOTENT_WRITE",)),
        ],
    }


def bindings(user: str, grants: Iterable[Grant]) -> list[Any]:
    """``grants`` as confluent-kafka ACL bindings allowing ``user`` from any host."""
    from confluent_kafka.admin import (
        AclBinding,
        AclOperation,
        AclPermissionType,
        ResourcePatternType,
        ResourceType,
    )

    return [
        AclBinding(
            ResourceType[rtype],
            name,
            ResourcePatternType[pattern.upper()],
            f"User:{user}",
            "*",
            AclOperation[op],
            AclPermissionType.ALLOW,
        )
        for rtype, name, pattern, ops in grants
        for op in ops
    ]


def ensure_acls(admin_login: Target, grants: dict[str, list[Grant]], timeout: float = 30.0) -> int:
    """Create the bindings (creating one that exists changes nothing); returns how many."""
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    wanted = [b for user, g in grants.items() for b in bindings(user, g)]
    if not wanted:
        return 0
    admin = AdminClient(client_config(admin_login, {"log_level": 0}))
    for binding, fut in admin.create_acls(wanted, request_timeout=timeout).items():
        try:
            fut.result(timeout)
        except KafkaException as exc:
            raise InfraError(f"could not create the ACL {binding}: {exc}") from None
    return len(wanted)


def gateway_acls(edge_id: str) -> dict[str, list[Grant]]:
    return {gateway_user(edge_id): gateway_grants(edge_id)}
