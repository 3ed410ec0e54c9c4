"""The champion of each stream, as one signed message keyed by the stream, on ``models``.

The topic is compacted, so it always holds the latest champion per stream: a gateway that was
offline for a week, or a new one, reads it from the start and gets exactly the current models.
A message carries model.tflite, manifest.json and the signature together
(:mod:`shared.model_bundle`); the topic's ``max.message.bytes`` is raised to 8 MiB for that
(``shared.topics.MODEL_MESSAGE_BYTES``) and a model that would not fit is refused here.

Every message carries a signed release (:mod:`shared.releases`): the next release number of
the stream (kept in the registry), the fleet, an expiry and the signing key's id. Gateways run
only releases newer than the last they accepted, so re-publishing an earlier champion (a
rollback) is a new release of it, and a replayed old message is refused.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from confluent_kafka import KafkaError, Message, Producer
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cloud.registry import ModelRecord, Registry
from shared import model_bundle, releases, topics
from shared.errors import FleetsentryError
from shared.kafka_config import Target, bootstrap_of, client_config
from shared.signing import key_fingerprint

log = logging.getLogger("publisher")


class PublishError(FleetsentryError):
    """A model could not be written to the models topic."""


@dataclass(frozen=True)
class Releaser:
    """Signs releases for one fleet with one key; numbers them in the registry at ``root``."""

    key: Ed25519PrivateKey
    registry_root: Path
    fleet: str = releases.DEFAULT_FLEET
    ttl_s: float = 30 * 86_400.0

    def issue(self, model: ModelRecord, now: float | None = None) -> bytes:
        now = time.time() if now is None else now
        with Registry(self.registry_root) as reg:
            number = reg.reserve_release(
                model.stream,
                model.version,
                key_fingerprint(self.key),
                self.fleet,
                now,
                now + self.ttl_s,
            )
        return releases.issue(
            model.path,
            fleet=self.fleet,
            stream=model.stream,
            version=model.version,
            number=number,
            key=self.key,
            ttl_s=self.ttl_s,
            now=now,
        )


class Publisher:
    """Constructing it does no I/O; ``start()`` creates the producer."""

    def __init__(self, bootstrap: Target, releaser: Releaser, topic: str = topics.MODELS) -> None:
        self.bootstrap = bootstrap
        self.releaser = releaser
        self.topic = topic
        self._producer: Producer | None = None

    def start(self) -> Publisher:
        self._producer = Producer(
            client_config(
                self.bootstrap,
                {
                    "enable.idempotence": True,
                    "acks": "all",
                    "message.max.bytes": topics.MODEL_MESSAGE_BYTES + 64 * 1024,
                    "compression.type": "zstd",
                    "linger.ms": 0,
                },
            )
        )
        return self

    def close(self) -> None:
        if self._producer is not None:
            self._producer.flush(10)
            self._producer = None

    def __enter__(self) -> Publisher:
        return self.start() if self._producer is None else self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def publish(self, model: ModelRecord, timeout_s: float = 30.0) -> int:
        """Write ``model`` (keyed by its stream) and wait for the broker; returns the bytes."""
        value = model_bundle.pack(
            model.path, model.stream, model.version, time.time(), release=self.releaser.issue(model)
        )
        self.send(model, value, timeout_s)
        log.info(
            "published %s (%s, %d bytes) to %s", model.version, model.stream, len(value), self.topic
        )
        return len(value)

    def send(self, model: ModelRecord, value: bytes, timeout_s: float) -> None:
        """Write one packed message and wait for the broker to acknowledge it."""
        if self._producer is None:
            raise PublishError("publisher not started: call start() first")
        errors: list[KafkaError] = []

        def delivered(err: KafkaError | None, _msg: Message) -> None:
            if err is not None:
                errors.append(err)

        self._producer.produce(
            self.topic, key=model.stream.encode(), value=value, on_delivery=delivered
        )
        if self._producer.flush(timeout_s) > 0:
            raise PublishError(
                f"{model.version}: not acknowledged by {bootstrap_of(self.bootstrap)} within "
                f"{timeout_s:.0f} s (is the cloud Kafka up?)"
            )
        if errors:
            raise PublishError(f"{model.version}: the broker refused it: {errors[0]}")

    def refresh(self, registry: Registry, now: float | None = None) -> dict[str, str]:
        """Publish a new release of every champion whose last release has used half its
        lifetime (gateways refuse expired releases; the champion itself is unchanged)."""
        now = time.time() if now is None else now
        out: dict[str, str] = {}
        for stream in registry.streams():
            champion = registry.champion(stream)
            last = registry.latest_release(stream)
            if champion is None or last is None:
                continue
            half = (last["issued_ts"] + last["expires_ts"]) / 2
            if now >= half or last["version"] != champion.version:
                self.publish(champion)
                out[stream] = champion.version
        return out

    def publish_champions(
        self, registry: Registry, streams: list[str] | None = None
    ) -> dict[str, str]:
        """Publish the current champion of every stream (or of ``streams``)."""
        out: dict[str, str] = {}
        for stream in streams or registry.streams():
            champion = registry.champion(stream)
            if champion is not None:
                self.publish(champion)
                out[stream] = champion.version
        return out


def describe(value: bytes) -> dict[str, Any]:
    """Summary of a models-topic message (for logs and the CLI), without trusting it."""
    bundle = model_bundle.unpack(value)
    return {
        "stream": bundle.stream,
        "version": bundle.version,
        "published_ts": bundle.published_ts,
        "bytes": {k: len(v) for k, v in bundle.files.items()},
    }
