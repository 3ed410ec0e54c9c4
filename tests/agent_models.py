"""Signed model variants for the model agent's tests, from one small real int8 autoencoder.

One model is trained (real TensorFlow, real int8 conversion) per test session; variants are
made by rewriting its manifest (version, threshold, stream, feature spec) and signing again,
with the fleet key of the test or with another key.
"""

from __future__ import annotations

import shutil
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
from confluent_kafka import Consumer, KafkaException, TopicPartition
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge.agent.agent import ModelAgent
from edge.config import AgentSettings, EdgeConfig, KafkaSettings, ScorerSettings
from shared import model_bundle, releases, topics
from shared.contracts import AnonPayment, ModelManifest, encode
from shared.kafka_config import Target, client_config
from shared.signing import MANIFEST_FILE, generate_private_key, sign_model_dir, write_public_key
from tests.scorer_models import SyntheticFeatures, build_model_dir
from tests.support import produce_all

_SHARED: list[ModelKit] = []
# Release numbers handed out so far (each message gets the next one).
_RELEASES = [int(time.time())]


class ModelKit:
    """Builds signed variants of one trained payments model."""

    @classmethod
    def shared(cls) -> ModelKit:
        """One kit per test process: TensorFlow trains the base model once."""
        if not _SHARED:
            import tempfile

            _SHARED.append(cls(Path(tempfile.mkdtemp(prefix="fleetsentry-agent-models-"))))
        return _SHARED[0]

    def __init__(self, root: Path) -> None:
        self.root = root
        self.data = SyntheticFeatures("payments", seed=11)
        self.base, _ = build_model_dir(
            root / "base", "payments", self.data, seed=3, version="base", epochs=12
        )
        self.key: Ed25519PrivateKey = generate_private_key()
        self.public_key = root / "fleet.pub"
        write_public_key(self.key, self.public_key)
        self.manifest = msgspec.json.decode(
            (self.base / MANIFEST_FILE).read_bytes(), type=ModelManifest
        )

    def telemetry(self) -> Path:
        """A small signed telemetry model (so a scorer under test needs no shipped baseline)."""
        out = self.root / "telemetry"
        if not out.exists():
            build_model_dir(
                out,
                "telemetry",
                SyntheticFeatures("telemetry", seed=5),
                seed=2,
                version="kit-telemetry",
                epochs=3,
            )
            sign_model_dir(out, self.key)
        return out

    def variant(
        self, version: str | None = None, key: Ed25519PrivateKey | None = None, **changes: object
    ) -> Path:
        """A copy of the model with manifest ``changes``, signed (by the fleet key by default)."""
        version = version or f"pay-{uuid.uuid4().hex[:8]}"
        out = self.root / "variants" / version
        shutil.copytree(self.base, out)
        manifest = msgspec.structs.replace(
            self.manifest, version=version, created_ts=time.time(), **changes
        )
        (out / MANIFEST_FILE).write_bytes(encode(manifest))
        sign_model_dir(out, key or self.key)
        return out

    def message(
        self,
        model_dir: Path,
        stream: str = "payments",
        *,
        release_key: Ed25519PrivateKey | None = None,
        number: int | None = None,
        fleet: str = releases.DEFAULT_FLEET,
        ttl_s: float = 3600.0,
        now: float | None = None,
    ) -> tuple[bytes, bytes]:
        """(key, value) of a models-topic message for ``model_dir``, with a signed release
        (by the fleet key, numbered above every earlier one, unless told otherwise)."""
        m = msgspec.json.decode((model_dir / MANIFEST_FILE).read_bytes(), type=ModelManifest)
        if number is None:
            _RELEASES[0] += 1
            number = _RELEASES[0]
        release = releases.issue(
            model_dir,
            fleet=fleet,
            stream=stream,
            version=m.version,
            number=number,
            key=release_key or self.key,
            ttl_s=ttl_s,
            now=now,
        )
        return stream.encode(), model_bundle.pack(
            model_dir, stream, m.version, time.time(), release=release
        )

    def recent_payments(self, n: int, seed: int, anomalous: int = 0) -> list[bytes]:
        """Anon payment records whose features follow the model's normal structure."""
        rows = self.data.normal(n, seed)
        if anomalous:
            rows[:anomalous] = self.data.anomalous(anomalous, seed + 1)
        out = []
        now = time.time()
        for i, row in enumerate(rows):
            rec = AnonPayment(
                event_id=f"p-{seed}-{i}",
                ts=now - n + i,
                card_token=f"card{seed:04d}{i:06d}",
                vehicle_token="vehicletoken01",
                driver_token="drivertoken01",
                merchant_id="m-1",
                mcc="5542",
                category="fuel",
                amount=50.0,
                currency="EUR",
                cell="u0yj",
                features=self.data.as_dict(row),
            )
            out.append(encode(rec))
        return out


def skip_to_end(bootstrap: Target, group: str) -> None:
    """Commit the agent group's offset at the end of cloud.models: this test's messages only."""
    c = Consumer(client_config(bootstrap, {"group.id": group, "enable.auto.commit": False}))
    try:
        for attempt in range(60):  # a busy or fresh broker may still be electing/loading
            try:
                _low, high = c.get_watermark_offsets(
                    TopicPartition(topics.CLOUD_MODELS, 0), timeout=10
                )
                c.commit(offsets=[TopicPartition(topics.CLOUD_MODELS, 0, high)], asynchronous=False)
                return
            except KafkaException:
                if attempt == 59:
                    raise
                time.sleep(0.5)
    finally:
        c.close()


def recent_window(bootstrap: Target, kit: ModelKit, seed: int) -> None:
    produce_all(
        bootstrap,
        topics.ANON_PAYMENTS,
        ((uuid.uuid4().hex.encode(), v) for v in kit.recent_payments(900, seed)),
    )


def deliver(agent: Any, bootstrap: Target, key: bytes, value: bytes, timeout: float = 60.0) -> Any:
    """Produce to the edge's cloud.models (as MirrorMaker would) and step until handled."""
    produce_all(bootstrap, topics.CLOUD_MODELS, [(key, value)])
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        outcome = agent.step(0.5)
        if outcome is not None:
            return outcome
    raise AssertionError("the agent did not handle the model message in time")


def flip_byte(value: bytes, file: str = "model.tflite", offset: int = 200) -> bytes:
    """The same message with one byte of one file changed (the signature left as it was)."""
    bundle = model_bundle.unpack(value)
    data = bytearray(bundle.files[file])
    data[offset % len(data)] ^= 0x01
    files = dict(bundle.files)
    files[file] = bytes(data)
    return msgspec.json.encode(msgspec.structs.replace(bundle, files=files))


def drop_file(value: bytes, file: str) -> bytes:
    bundle = model_bundle.unpack(value)
    files = {k: v for k, v in bundle.files.items() if k != file}
    return msgspec.json.encode(msgspec.structs.replace(bundle, files=files))


def scores_of(model_dir: Path, public_key: Path, x: np.ndarray) -> np.ndarray:
    from edge.scorer.model_runner import load_model

    return load_model(model_dir, "payments", public_key).scorer.score_batch(x)[0]


def agent_config(
    edge_kafka: KafkaSettings, tmp_path: Path, keys: list[Path], edge_id: str | None = None
) -> EdgeConfig:
    """A gateway's config for an agent under test: quick watches, a small shadow window."""
    return EdgeConfig(
        edge_id=edge_id or f"agent-{uuid.uuid4().hex[:6]}",
        data_dir=tmp_path,
        kafka=edge_kafka,
        scorer=ScorerSettings(models_dir=tmp_path / "models", public_keys=keys),
        agent=AgentSettings(
            shadow_window=600, watch_min_events=100, activation_timeout_s=3.0, watch_s=120.0
        ),
    )


@contextmanager
def started_agent(edge_kafka: KafkaSettings, kit: ModelKit, tmp_path: Path) -> Iterator[ModelAgent]:
    """An agent that sees only the messages produced from now on, closed at the end."""
    config = agent_config(edge_kafka, tmp_path, [kit.public_key])
    skip_to_end(edge_kafka, f"{config.edge_id}-agent")
    a = ModelAgent(config).start()
    try:
        yield a
    finally:
        a.close()
