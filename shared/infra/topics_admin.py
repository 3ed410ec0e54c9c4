"""Create the registry's topics idempotently, and bring drifted settings back in line."""

from __future__ import annotations

from confluent_kafka import KafkaException
from confluent_kafka.admin import (
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    NewPartitions,
    NewTopic,
)

from shared import topics as registry
from shared.infra.errors import InfraError


def ensure_topics(bootstrap: str, cluster: registry.Cluster, replication_factor: int,
                  timeout: float = 30.0) -> list[str]:
    """Make every registry topic of ``cluster`` exist with its partitions and configs.

    Returns the names created now. Existing topics keep their data; missing partitions are
    added and configs (retention, compaction) are set to the registry's values.
    """
    admin = AdminClient({"bootstrap.servers": bootstrap})
    wanted = registry.registry(cluster)
    meta = admin.list_topics(timeout=timeout)
    missing = [t for t in wanted if t.name not in meta.topics]
    created = []
    if missing:
        futures = admin.create_topics(
            [NewTopic(t.name, num_partitions=t.partitions, replication_factor=replication_factor,
                      config=t.configs()) for t in missing],
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
        resources = [
            ConfigResource(
                ConfigResource.Type.TOPIC, t.name,
                incremental_configs=[ConfigEntry(k, v, incremental_operation=AlterConfigOpType.SET)
                                     for k, v in t.configs().items()],
            )
            for t in existing
        ]
        for res, fut in admin.incremental_alter_configs(resources).items():
            try:
                fut.result()
            except KafkaException as exc:
                raise InfraError(f"setting configs of {res.name} on {bootstrap} failed: {exc}") \
                    from exc
    return created
