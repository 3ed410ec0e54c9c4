"""Where the trainer service reads the fleet's data: the replicated topics in the cloud Kafka,
or the Parquet store written from them (``[trainer] source``).

MirrorMaker 2 names each gateway's copies ``<edge_id>.anon.<stream>`` and
``<edge_id>.scores.<stream>``; this source reads every gateway's (and a plain
``anon.<stream>`` if one exists), deduplicated by event id, plus the ``labels`` topic.
A source is anything with these three methods; cloud.store.reader.StoreReader is the other.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import msgspec
from confluent_kafka.admin import AdminClient

from cloud.kafka_source import read_topic
from shared import streams, topics
from shared.contracts import Alert, AnonRecord, Label, Score, decode
from shared.errors import ContractError
from shared.kafka_config import Target, client_config

if TYPE_CHECKING:
    from cloud.config import CloudConfig

T = TypeVar("T", Alert, Score)


class DataSource(Protocol):
    def anon_records(self, stream: str) -> list[Any]:
        """Every anonymized record of ``stream`` the cloud holds (one per event id)."""

    def labels(self) -> list[Label]:
        """Ground truth (chargebacks, workshop reports) joined on event id."""

    def scores(self, stream: str, since_ts: float) -> list[Score]:
        """Scores the gateways produced for events at or after ``since_ts`` (event time).

        A source may also offer ``gateway_scores(stream, since_ts)``, the same per gateway:
        the drift check then judges each gateway's alert rate on its own.
        """


class KafkaSource:
    """Reads snapshots of the replicated topics (constructing it does no I/O)."""

    def __init__(self, bootstrap: Target, timeout_s: float = 300.0) -> None:
        self.bootstrap = bootstrap
        self.timeout_s = timeout_s

    def topics_for(self, base: str) -> list[str]:
        """``base`` itself and every ``<alias>.<base>`` copy on the cluster."""
        admin = AdminClient(client_config(self.bootstrap))
        names = admin.list_topics(timeout=15).topics
        pattern = re.compile(rf"^(?:[A-Za-z0-9_-]+\.)?{re.escape(base)}$")
        return sorted(n for n in names if pattern.match(n))

    def anon_records(self, stream: str) -> list[Any]:
        spec = streams.get(stream)
        seen: dict[tuple[str, str], Any] = {}
        for topic in self.topics_for(spec.anon_topic):
            for value in read_topic(self.bootstrap, topic, self.timeout_s):
                try:
                    rec = decode(spec.anon_event, value)
                except ContractError:
                    continue
                seen.setdefault((_sender(rec), rec.event_id), rec)  # type: ignore[attr-defined]
        return sorted(seen.values(), key=lambda r: r.ts)

    def labels(self) -> list[Label]:
        out: dict[str, Label] = {}
        for topic in self.topics_for(topics.LABELS):
            for value in read_topic(self.bootstrap, topic, self.timeout_s):
                try:
                    lab = decode(Label, value)
                except ContractError:
                    continue
                out[lab.event_id] = lab
        return list(out.values())

    def scores(self, stream: str, since_ts: float) -> list[Score]:
        out: dict[tuple[str, str], Score] = {}
        for items in self.gateway_scores(stream, since_ts).values():
            for s in items:
                out[(s.token, s.event_id)] = s
        return list(out.values())

    def gateway_alerts(self, since_ts: float) -> dict[str, list[Alert]]:
        """Alert records whose episode started at or after ``since_ts``, per gateway."""
        return self._per_gateway(topics.ALERTS, Alert, lambda a: a.start_ts >= since_ts)

    def gateway_scores(self, stream: str, since_ts: float) -> dict[str, list[Score]]:
        """Scores at or after ``since_ts`` per gateway (the prefix of its copy of the topic;
        ``""`` for a plain ``scores.<stream>``)."""
        return self._per_gateway(
            streams.get(stream).scores_topic, Score, lambda s: s.ts >= since_ts
        )

    def _per_gateway(
        self, base: str, kind: type[T], keep: Callable[[T], bool]
    ) -> dict[str, list[T]]:
        """The records of ``base`` and every ``<gateway>.<base>`` copy that ``keep`` keeps,
        by gateway; records that do not decode are skipped."""
        out: dict[str, list[T]] = {}
        for topic in self.topics_for(base):
            items = out.setdefault(topic[: -len(base)].rstrip("."), [])
            for value in read_topic(self.bootstrap, topic, self.timeout_s):
                try:
                    rec = decode(kind, value)
                except ContractError:
                    continue
                if keep(rec):
                    items.append(rec)
        return out


def _sender(record: Any) -> str:
    """An event is its sender and its id (senders choose ids, and may share them): the
    vehicle's token, or a declared stream's device."""
    return str(record.device if isinstance(record, AnonRecord) else record.vehicle_token)


def source_for(cfg: CloudConfig, bootstrap: str | None = None) -> DataSource:
    """The trainer's data as ``[trainer] source`` says: the Parquet store or the topics."""
    if cfg.trainer.source == "store":
        from cloud.store.reader import StoreReader

        return StoreReader(cfg.store.root)
    login = cfg.kafka.login("trainer")
    if bootstrap:
        login = (
            bootstrap
            if isinstance(login, str)
            else msgspec.structs.replace(login, bootstrap=bootstrap)
        )
    return KafkaSource(login)
