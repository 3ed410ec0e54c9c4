"""Promotion after a retrain held for an operator (``[trainer] require_approval``), on simulator
data with the real trainer (TensorFlow, int8), a real registry and the real signer: the
challenger is not published until an operator approves it on the dashboard; once approved, the
signer signs a release that the gateway's own checks accept; a rejected one never ships, and
requests a viewer (or nobody) made are refused."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from cloud.dashboard.actions import Actions
from cloud.publisher import Publisher, Releaser
from cloud.registry import ModelRecord, Registry
from cloud.signer.signer import SigningService
from cloud.trainer_service.trainer_service import RetrainSettings, TrainerService
from edge.scorer.model_runner import load_model
from shared import model_bundle, releases, signing
from shared.contracts import Label
from tests.dashboard_support import SMALL, MemorySource, sim_data

NOW = time.time()
FLEET = "acme-test"


@pytest.fixture(scope="module")
def data() -> tuple[dict[str, list[Any]], list[Label]]:
    anon, labels, _pii = sim_data(seed=3, end_ts=NOW, vehicles=30, duration_s=1500.0)
    return anon, labels


@pytest.fixture()
def registry(tmp_path: Path) -> Iterator[Registry]:
    reg = Registry(tmp_path / "registry").start()
    yield reg
    reg.close()


class Captured(Publisher):
    """The real publisher (bundle and signed release made as for the models topic), keeping
    each message instead of sending it to a broker."""

    def __init__(self, releaser: Releaser) -> None:
        super().__init__("127.0.0.1:1", releaser)
        self.sent: list[bytes] = []

    def start(self) -> Captured:
        return self

    def close(self) -> None:
        pass

    def send(self, model: ModelRecord, value: bytes, timeout_s: float) -> None:
        self.sent.append(value)


def gateway_accepts(value: bytes, public_key: Path, tmp: Path) -> str:
    """What a gateway's agent checks before it stages a model: the release (trusted key, this
    fleet, not expired), the files it names, then the model's own signature. Its version."""
    bundle = model_bundle.unpack(value)
    release = releases.verify(bundle.release, releases.TrustedKeys.load([public_key]), FLEET)
    releases.check_files(release, bundle.files)
    staged = model_bundle.write_files(bundle, tmp / f"staged-{release.number}")
    model = load_model(staged, bundle.stream, [public_key])
    assert (release.stream, release.version) == (bundle.stream, model.version)
    return model.version


def _setup(
    registry: Registry, data: tuple[dict[str, list[Any]], list[Label]], tmp_path: Path
) -> tuple[TrainerService, Captured, Path]:
    key_file = tmp_path / "fleet.key"
    key = signing.create_private_key(key_file)
    pub = Captured(Releaser(key, registry.root, FLEET, 86_400.0))
    settings = RetrainSettings(
        streams=("payments",),
        min_records=300,
        drift_check_s=0.0,
        seed_baselines=False,
        train=SMALL,
        require_approval=True,
    )
    svc = TrainerService(registry, MemorySource(*data), key, settings, pub)
    return svc, pub, key_file.with_suffix(".pub")


def _awaiting(svc: TrainerService, pub: Captured, registry: Registry) -> Any:
    [run] = svc.cycle(NOW)
    assert run.decision == "awaiting approval", (run.decision_reason, run.error)
    assert pub.sent == [] and registry.champion("payments") is None
    assert run.challenger is not None
    assert registry.get(run.challenger).state == "candidate"
    status = registry.status("payments")
    assert status is not None and status.state == "awaiting approval"
    assert f"run {run.id}" in status.detail
    # While it waits, the service trains no other challenger and publishes nothing.
    assert svc.cycle(NOW + 7 * 86_400) == [] and pub.sent == []
    return run


def test_an_approved_challenger_is_signed_and_published_only_after_approval(
    registry: Registry, data: tuple[dict[str, list[Any]], list[Label]], tmp_path: Path
) -> None:
    svc, pub, public_key = _setup(registry, data, tmp_path)
    run = _awaiting(svc, pub, registry)

    with Actions(registry.root).start() as actions:  # the dashboard records the request
        asked = actions.approve(run.id, "alice", "operator", "curves look right")
    assert asked.ok, asked.message
    assert pub.sent == [] and registry.champion("payments") is None

    signer = SigningService(registry, svc, pub, streams=("payments",))
    [done] = signer.handle_pending()
    assert done.state == "done" and done.result_version == run.challenger, done.outcome
    champion = registry.champion("payments")
    assert champion is not None and champion.version == run.challenger
    settled = registry.run(run.id)
    assert settled.decision == "promoted" and "alice" in settled.decision_reason
    assert registry.actions("payments")[0]["actor"] == "alice"
    assert len(pub.sent) == 1
    assert gateway_accepts(pub.sent[0], public_key, tmp_path) == run.challenger
    assert registry.status("payments").state == "watching"  # type: ignore[union-attr]


def test_a_rejected_challenger_is_never_published(
    registry: Registry, data: tuple[dict[str, list[Any]], list[Label]], tmp_path: Path
) -> None:
    svc, pub, _public_key = _setup(registry, data, tmp_path)
    run = _awaiting(svc, pub, registry)
    signer = SigningService(registry, svc, pub, streams=("payments",))

    # A row written straight into the registry by someone who is no operator is refused.
    forged = registry.add_request("approve", "vera", "viewer", run_id=run.id)
    with Actions(registry.root).start() as actions:
        assert actions.reject(run.id, "alice", "operator", "alert rate too high").ok
        assert actions.approve(run.id, "bob", "operator", "too late").ok
    outcomes = {r.id: r for r in signer.handle_pending()}
    assert outcomes[forged.id].state == "refused" and "operator" in outcomes[forged.id].outcome
    states = [r.state for r in sorted(outcomes.values(), key=lambda r: r.id)]
    assert states == ["refused", "done", "refused"], [r.outcome for r in outcomes.values()]
    assert registry.run(run.id).decision == "rejected"
    assert registry.champion("payments") is None
    assert registry.get(run.challenger).state == "candidate"
    assert pub.sent == [] and registry.latest_release("payments") is None


def test_the_signer_refuses_requests_it_cannot_check(registry: Registry, tmp_path: Path) -> None:
    from tests.unit.cloud_loop.test_model_registry import model_dir

    registry.register(model_dir(tmp_path / "src", "v1"), state="champion")
    signer = SigningService(registry, None, None, streams=("payments",))
    asked = [
        registry.add_request("promote", "alice", "operator", version="v9"),
        registry.add_request("rollback", "alice", "operator", stream="lorries"),
        registry.add_request("approve", "alice", "operator", run_id=77),
        registry.add_request("retrain", "alice", "operator", stream="payments"),
        registry.add_request("promote", "mallory", "", version="v1"),
    ]
    done = {r.id: r for r in signer.handle_pending()}
    assert [done[r.id].state for r in asked] == ["refused"] * 5, [done[r.id].outcome for r in asked]
    assert "v9" in done[asked[0].id].outcome and "lorries" in done[asked[1].id].outcome
    assert "77" in done[asked[2].id].outcome and "trainer" in done[asked[3].id].outcome


def test_the_signer_without_a_key_file_says_how_to_make_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cloud.signer.cli import signer as signer_cli

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    toml = tmp_path / "cloud.toml"
    toml.write_text(f'[registry]\nroot = "{tmp_path / "registry"}"\n')
    for args in ([], ["--key", str(tmp_path / "fleet.key")]):
        result = CliRunner().invoke(signer_cli, ["--config", str(toml), *args])
        assert result.exit_code != 0
        assert "fleetsentry cloud keygen" in result.output, result.output
    assert not signing.dev_private_key_path().exists()
    assert not (tmp_path / "fleet.key").exists()


def test_a_retrain_asked_for_on_the_dashboard_also_waits_for_approval(
    registry: Registry, data: tuple[dict[str, list[Any]], list[Label]], tmp_path: Path
) -> None:
    svc, pub, _public_key = _setup(registry, data, tmp_path)
    with Actions(registry.root).start() as actions:
        assert actions.retrain("payments", "alice", "operator", "new fuel cards").ok
    [done] = SigningService(registry, svc, pub, streams=("payments",)).handle_pending()
    assert done.state == "done" and "awaiting approval" in done.outcome, done.outcome
    [run] = registry.awaiting_approval("payments")
    assert (run.trigger, run.triggered_by, run.challenger) == (
        "manual",
        "alice",
        done.result_version,
    )
    status = registry.status("payments")
    assert status is not None and status.state == "awaiting approval"
    assert pub.sent == [] and registry.champion("payments") is None
