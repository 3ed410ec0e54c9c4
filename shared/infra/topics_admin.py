"""Create the registry's topics and the gateway's users idempotently, and bring drifted
settings back in line."""

from __future__ import annotations

from collections.abc import Mapping
from concurrent.futures import Future
from typing import Any, cast

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import (
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    NewPartitions,
    NewTopic,
    ScramCredentialInfo,
    ScramMechanism,
    UserScramCredentialAlteration,
    UserScramCredentialUpsertion,
)

from shared import topics as registry
from shared.infra.errors import InfraError
from shared.kafka_config import Target, bootstrap_of, client_config

# Kafka's default for SCRAM-SHA-512 (the minimum it accepts).
SCRAM_ITERATIONS = 4096


def ensure_users(admin_login: Target, users: Mapping[str, str], timeout: float = 30.0) -> list[str]:
    """Give every user in ``users`` (name -> password) a SCRAM-SHA-512 credential unless it
    has one already; returns the names added. Existing passwords are left as they are."""
    admin = AdminClient(client_config(admin_login))
    have = set()
    described = cast(dict[str, Future[Any]], admin.describe_user_scram_credentials(list(users)))
    for user, fut in described.items():
        try:
            if fut.result(timeout).scram_credential_infos:
                have.add(user)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.RESOURCE_NOT_FOUND:
                raise InfraError(f"reading the SCRAM users of {bootstrap_of(admin_login)} "
                                 f"failed: {exc}") from exc
    missing = [u for u in users if u not in have]
    if not missing:
        return []
    info = ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, SCRAM_ITERATIONS)
    upserts: list[UserScramCredentialAlteration] = [
        UserScramCredentialUpsertion(u, info, users[u].encode()) for u in missing]
    for user, fut in admin.alter_user_scram_credentials(upserts).items():
        try:
            fut.result(timeout)
        except KafkaException as exc:
            raise InfraError(f"creating Kafka user {user} on {bootstrap_of(admin_login)} "
                             f"failed: {exc}") from exc
    return missing


TopicConfigs = Mapping[str, Mapping[str, str]]


def ensure_topics(target: Target, cluster: registry.Cluster, replication_factor: int,
                  timeout: float = 30.0, overrides: TopicConfigs | None = None) -> list[str]:
    """Make every registry topic of ``cluster`` exist with its partitions and configs.

    Returns the names created now. Existing topics keep their data; missing partitions are
    added and configs (retention, compaction) are set to the registry's values, with
    ``overrides`` (topic -> configs, e.g. a gateway's disk plan, ``edge.disk``) on top.
    """
    admin = AdminClient(client_config(target))
    bootstrap = bootstrap_of(target)
    wanted = registry.registry(cluster)
    overrides = overrides or {}

    def configs(t: registry.Topic) -> dict[str, str]:
        return {**t.configs(), **overrides.get(t.name, {})}

    meta = admin.list_topics(timeout=timeout)
    missing = [t for t in wanted if t.name not in meta.topics]
    created = []
    if missing:
        futures = admin.create_topics(
            [NewTopic(t.name, num_partitions=t.partitions, replication_factor=replication_factor,
                      config=configs(t)) for t in missing],
            operation_timeout=timeout, request_timeout=timeout,
        )
        for name, fut in futures.items():
            try:
                fut.result()
                created.append(name)
            except KafkaException as exc:
                if exc.args[0].code() != exc.args[0].TOPIC_ALREADY_EXISTS:
                    raise InfraError(f"creating topic {name} on {bootstrap} failed: {exc}") from exc
    existing = [t for t in wanted if t.name in meta.topics]
    grow = [NewPartitions(t.name, t.partitions) for t in existing
            if len(meta.topics[t.name].partitions) < t.partitions]
    if grow:
        for fut in admin.create_partitions(grow, request_timeout=timeout).values():
            fut.result()
    if existing:
        set_topic_configs(admin, bootstrap, {t.name: configs(t) for t in existing}, timeout)
    return created


def set_topic_configs(admin: AdminClient, bootstrap: str, wanted: TopicConfigs,
                      timeout: float = 30.0) -> None:
    """Set (incrementally, so other settings stay) each topic's configs; idempotent."""
    resources = [
        ConfigResource(
            ConfigResource.Type.TOPIC, name,
            incremental_configs=[ConfigEntry(k, v, incremental_operation=AlterConfigOpType.SET)
                                 for k, v in conf.items()],
        )
        for name, conf in wanted.items()
    ]
    if not resources:
        return
    futures = admin.incremental_alter_configs(resources, request_timeout=timeout)
    for res, fut in futures.items():
        try:
            fut.result(timeout + 5)
        except (KafkaException, TimeoutError) as exc:
            raise InfraError(f"setting configs of {res.name} on {bootstrap} failed: {exc}") \
                from exc
