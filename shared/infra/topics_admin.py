"""Create the registry's topics and the gateway's users idempotently, and bring drifted
settings back in line."""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
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
                raise InfraError(
                    f"reading the SCRAM users of {bootstrap_of(admin_login)} failed: {exc}"
                ) from exc
    missing = [u for u in users if u not in have]
    if not missing:
        return []
    info = ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, SCRAM_ITERATIONS)
    upserts: list[UserScramCredentialAlteration] = [
        UserScramCredentialUpsertion(u, info, users[u].encode()) for u in missing
    ]
    for user, fut in admin.alter_user_scram_credentials(upserts).items():
        try:
            fut.result(timeout)
        except KafkaException as exc:
            raise InfraError(
                f"creating Kafka user {user} on {bootstrap_of(admin_login)} failed: {exc}"
            ) from exc
    return missing


TopicConfigs = Mapping[str, Mapping[str, str]]


def ensure_topics(
    target: Target,
    cluster: registry.Cluster,
    replication_factor: int,
    timeout: float = 30.0,
    overrides: TopicConfigs | None = None,
) -> list[str]:
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
            [
                NewTopic(
                    t.name,
                    num_partitions=t.partitions,
                    replication_factor=replication_factor,
                    config=configs(t),
                )
                for t in missing
            ],
            operation_timeout=timeout,
            request_timeout=timeout,
        )
        for name, fut in futures.items():
            try:
                fut.result()
                created.append(name)
            except KafkaException as exc:
                if exc.args[0].code() != exc.args[0].TOPIC_ALREADY_EXISTS:
                    raise InfraError(f"creating topic {name} on {bootstrap} failed: {exc}") from exc
    existing = [t for t in wanted if t.name in meta.topics]
    grow = [
        NewPartitions(t.name, t.partitions)
        for t in existing
        if len(meta.topics[t.name].partitions) < t.partitions
    ]
    if grow:
        for fut in admin.create_partitions(grow, request_timeout=timeout).values():
            fut.result()
    if existing:
        set_topic_configs(admin, bootstrap, {t.name: configs(t) for t in existing}, timeout)
    if created or grow:
        wait_visible(admin, bootstrap, {t.name: t.partitions for t in wanted}, timeout)
    return created


def wait_visible(
    admin: AdminClient,
    bootstrap: str,
    wanted: Mapping[str, int],
    timeout: float = 30.0,
    agree: int = 5,
) -> None:
    """Wait until the cluster's metadata shows every topic in ``wanted`` (name -> partitions)
    with a leader for each partition, ``agree`` times in a row.

    A KRaft controller answers CreateTopics once it has committed the topic; each broker
    learns of it when it next reads the metadata log, and a metadata request goes to any
    broker. Without this, a client that starts right after ``infra up`` can be told by a
    lagging broker that the topic does not exist.
    """
    deadline = time.monotonic() + timeout
    streak, missing = 0, sorted(wanted)
    while streak < agree:
        try:
            meta = admin.list_topics(timeout=max(1.0, deadline - time.monotonic())).topics
            missing = _not_ready(meta, wanted.items())
        except KafkaException as exc:
            missing = [f"(metadata: {exc})"]
        streak = 0 if missing else streak + 1
        if missing and time.monotonic() >= deadline:
            raise InfraError(
                f"topics created on {bootstrap} are not visible with leaders after "
                f"{timeout:.0f} s: {', '.join(missing)}"
            )
        time.sleep(0.05 if not missing else 0.2)


def _not_ready(meta: Mapping[str, Any], wanted: Iterable[tuple[str, int]]) -> list[str]:
    out = []
    for name, partitions in wanted:
        topic = meta.get(name)
        if (
            topic is None
            or topic.error is not None
            or len(topic.partitions) < partitions
            or any(p.leader < 0 for p in topic.partitions.values())
        ):
            out.append(name)
    return out


def set_topic_configs(
    admin: AdminClient, bootstrap: str, wanted: TopicConfigs, timeout: float = 30.0
) -> None:
    """Set (incrementally, so other settings stay) each topic's configs; idempotent."""
    resources = [
        ConfigResource(
            ConfigResource.Type.TOPIC,
            name,
            incremental_configs=[
                ConfigEntry(k, v, incremental_operation=AlterConfigOpType.SET)
                for k, v in conf.items()
            ],
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
            raise InfraError(f"setting configs of {res.name} on {bootstrap} failed: {exc}") from exc
