"""The agent on a full disk: the write fails with ENOSPC, is counted and tried again later;
nothing half-written stays, the running model is untouched, and it installs once there is room."""

from __future__ import annotations

import errno
import json
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn

import pytest

from edge.agent import service as agent_service
from edge.agent.agent import ModelAgent
from edge.config import AgentSettings, EdgeConfig, ScorerSettings
from edge.metrics import WRITE_ERRORS
from edge.scorer.model_runner import baseline_dir
from edge.services import ServiceContext
from shared import model_bundle, releases, signing, topics
from tests.support import tmpfs


@pytest.fixture
def full_disk(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs, filled to the last byte after the agent's directories exist."""
    with tmpfs(tmp_path / "disk", 1) as mount:
        yield mount


def fill(directory: Path) -> Path:
    ballast = directory / "ballast"
    with open(ballast, "wb") as fh:
        try:
            while True:
                fh.write(b"\0" * 65536)
                fh.flush()
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    return ballast


def write_errors() -> float:
    return WRITE_ERRORS.labels(service="agent", errno="ENOSPC")._value.get()


def test_a_model_on_a_full_disk_fails_cleanly_and_installs_once_there_is_room(
    full_disk: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The shipped payments model, signed and released by this test's fleet key.
    key = signing.generate_private_key()
    model = tmp_path / "model"
    shutil.copytree(baseline_dir("payments"), model)
    signing.sign_model_dir(model, key)
    signing.write_public_key(key, tmp_path / "fleet.pub")
    config = EdgeConfig(
        data_dir=full_disk,
        agent=AgentSettings(shadow_window=0),
        scorer=ScorerSettings(public_key=tmp_path / "fleet.pub"),
    )
    agent = ModelAgent(config)
    agent.store.start()
    monkeypatch.setattr(agent, "_start_watch", lambda watch: None)  # no Kafka here
    version = json.loads((model / "manifest.json").read_text())["version"]
    release = releases.issue(
        model,
        fleet=releases.DEFAULT_FLEET,
        stream="payments",
        version=version,
        number=1,
        key=key,
        ttl_s=3600,
    )
    message = model_bundle.pack(model, "payments", version, release=release)
    ballast = fill(full_disk)

    with pytest.raises(OSError) as err:
        agent.handle(b"payments", message)
    assert err.value.errno == errno.ENOSPC
    versions = full_disk / "models" / "versions"
    assert not list(versions.rglob(".incoming-*")), "a half-written copy was left behind"
    assert agent.store.active_version("payments") is None  # the running model is untouched

    ballast.unlink()
    outcome = agent.handle(b"payments", message)
    assert outcome.state == "active", outcome
    assert agent.store.active_dir("payments") is not None


class FailingAgent:
    """Stands in for ModelAgent in the service loop: the first steps hit a full disk."""

    instances: list[FailingAgent] = []
    stop: threading.Event | None = None  # set by the test: the service's stop event

    def __init__(self, config: EdgeConfig, failures: int = 3) -> None:
        self.failures = failures
        self.steps = 0
        FailingAgent.instances.append(self)

    def start(self) -> FailingAgent:
        return self

    def step(self, timeout: float = 0.5) -> None:
        self.steps += 1
        if self.steps <= self.failures:
            raise OSError(errno.ENOSPC, "No space left on device", "/models/versions/x")
        assert self.stop is not None
        self.stop.set()

    def close(self) -> None:
        pass


def test_the_service_counts_write_errors_and_retries_instead_of_crashing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stop = threading.Event()
    monkeypatch.setattr(agent_service, "ModelAgent", FailingAgent)
    monkeypatch.setattr(agent_service, "RETRY_FIRST_S", 0.01)
    monkeypatch.setattr(agent_service, "_apply_plan", lambda config, plan: -1.0)
    monkeypatch.setattr(agent_service.REGISTRY, "register", lambda collector: None)
    FailingAgent.instances.clear()
    before = write_errors()
    ctx = ServiceContext("agent", EdgeConfig(data_dir=tmp_path), None, 0, stop, None)
    thread = threading.Thread(target=agent_service.run, args=(ctx,))
    monkeypatch.setattr(FailingAgent, "stop", stop)
    thread.start()
    thread.join(20)
    assert not thread.is_alive()
    agent = FailingAgent.instances[0]
    assert agent.steps == 4  # three failures, retried, then a step that worked
    assert write_errors() - before == 3


def test_a_message_that_could_not_be_written_is_read_again(tmp_path: Path) -> None:
    class Msg:
        def error(self) -> None:
            return None

        def value(self) -> bytes:
            return b"{}"

        def key(self) -> bytes:
            return b"payments"

        def topic(self) -> str:
            return topics.CLOUD_MODELS

        def partition(self) -> int:
            return 0

        def offset(self) -> int:
            return 41

    class Consumer:
        def __init__(self) -> None:
            self.seeks: list[Any] = []
            self.commits = 0

        def poll(self, timeout: float) -> Msg:
            return Msg()

        def seek(self, tp: Any) -> None:
            self.seeks.append((tp.topic, tp.partition, tp.offset))

        def commit(self, **kwargs: Any) -> None:
            self.commits += 1

    agent = ModelAgent(EdgeConfig(data_dir=tmp_path))
    consumer = Consumer()
    agent._consumer = consumer  # type: ignore[assignment]

    def disk_full(key: bytes | None, value: bytes) -> NoReturn:
        raise OSError(errno.ENOSPC, "No space left on device")

    agent.handle = disk_full  # type: ignore[method-assign]
    with pytest.raises(OSError):
        agent.step(0)
    assert consumer.seeks == [(topics.CLOUD_MODELS, 0, 41)] and consumer.commits == 0
