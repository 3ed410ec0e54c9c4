"""The trainer service's own decisions, on simulator data with the real trainer (TensorFlow,
int8) and a real registry: it starts from the shipped baselines, waits (and says why) instead
of failing when there is nothing to train on, backs off after failures, and judges drift per
gateway."""

from __future__ import annotations

import json
import time
import zlib
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from cloud.registry import ModelRecord, Registry
from cloud.trainer.data import key_of
from cloud.trainer_service.drift import DriftSettings
from cloud.trainer_service.trainer_service import RetrainSettings, TrainerService, Waiting
from shared import baselines, signing
from shared.contracts import Alert, AlertState, Contribution, Label, Score
from shared.features import feature_memory_s
from tests.dashboard_support import SMALL, MemorySource, sim_data

NOW = time.time()


@pytest.fixture(scope="module")
def data() -> tuple[dict[str, list[Any]], list[Label]]:
    anon, labels, _pii = sim_data(seed=3, end_ts=NOW, vehicles=30, duration_s=1500.0)
    return anon, labels


@pytest.fixture()
def registry(tmp_path: Path) -> Iterator[Registry]:
    reg = Registry(tmp_path / "registry").start()
    yield reg
    reg.close()


class Recorder:
    """Stands where the publisher goes, to see what the service would publish."""

    def __init__(self) -> None:
        self.published: list[str] = []

    def publish(self, model: ModelRecord, timeout_s: float = 30.0) -> int:
        self.published.append(model.version)
        return 0

    def refresh(self, registry: Registry) -> dict[str, str]:
        return {}


class GatewaySource(MemorySource):
    """Memory data plus each gateway's scores, as the cloud store serves them."""

    def __init__(
        self,
        anon: dict[str, list[Any]],
        labels: list[Label],
        by_gateway: dict[str, list[Score]],
        alerts: dict[str, list[Alert]] | None = None,
    ) -> None:
        super().__init__(anon, labels)
        self.by_gateway = by_gateway
        self.alerts = alerts or {}

    def gateway_alerts(self, since_ts: float) -> dict[str, list[Alert]]:
        return {
            gw: [a for a in items if a.start_ts >= since_ts] for gw, items in self.alerts.items()
        }

    def gateway_scores(self, stream: str, since_ts: float) -> dict[str, list[Score]]:
        return {gw: [s for s in items if s.ts >= since_ts] for gw, items in self.by_gateway.items()}


def test_the_first_cycle_seeds_the_shipped_baselines_as_champions(
    registry: Registry, tmp_path: Path
) -> None:
    key = signing.generate_private_key()
    pub = Recorder()
    svc = TrainerService(registry, MemorySource({}, []), key, RetrainSettings(), pub)
    assert svc.cycle(NOW) == []
    for stream in ("telemetry", "payments"):
        shipped = json.loads((baselines.baseline_dir(stream) / "manifest.json").read_text())
        champion = registry.champion(stream)
        assert champion is not None and champion.version == shipped["version"]
        # Re-signed with the cloud's key: a rollback to it verifies on the gateways.
        signing.verify_model_dir(champion.path, key.public_key())
        with pytest.raises(signing.SignatureError):
            signing.verify_model_dir(
                champion.path, signing.load_public_key(baselines.BASELINE_PUBLIC_KEY)
            )
        promoted = [a for a in registry.actions(stream) if a["action"] == "promote"]
        assert promoted and "baseline" in promoted[0]["reason"]
        status = registry.status(stream)
        assert status is not None and status.state == "watching", status
    assert pub.published == [], "the gateways already run the baselines"
    assert registry.runs() == []
    # A second cycle changes nothing: the champions stay.
    svc.cycle(NOW + 1)
    assert len(registry.models()) == 2


def test_too_little_data_waits_and_rechecks_instead_of_failing(
    registry: Registry, data: tuple[dict[str, list[Any]], list[Label]]
) -> None:
    anon, labels = data
    few = {"payments": anon["payments"][:100]}
    settings = RetrainSettings(
        streams=("payments",),
        min_records=1000,
        drift_check_s=60.0,
        seed_baselines=False,
        train=SMALL,
    )
    svc = TrainerService(
        registry, MemorySource(few, labels), signing.generate_private_key(), settings
    )
    assert svc.cycle(NOW) == []
    status = registry.status("payments")
    assert status is not None and status.state == "waiting for data"
    assert "100 of 1000 records" in status.detail and status.next_ts == NOW + 60.0
    assert registry.runs() == [], "waiting is not a failed run"
    first_update = status.updated_ts
    svc.cycle(NOW + 30)  # before next_ts: not even looked at
    again = registry.status("payments")
    assert again is not None and again.updated_ts == first_update


def test_without_labels_it_waits_unless_unlabelled_promotion_is_allowed(
    registry: Registry, data: tuple[dict[str, list[Any]], list[Label]]
) -> None:
    anon, _labels = data
    settings = RetrainSettings(
        streams=("payments",), min_records=300, seed_baselines=False, train=SMALL
    )
    key = signing.generate_private_key()
    svc = TrainerService(registry, MemorySource(anon, []), key, settings)
    assert svc.cycle(NOW) == []
    status = registry.status("payments")
    assert status is not None and status.state == "waiting for labels", status
    assert registry.runs() == []

    svc.settings = replace(settings, allow_unlabelled_promotion=True)
    runs = svc.cycle(NOW + 3600)
    assert len(runs) == 1, registry.status("payments")
    run = runs[0]
    assert run.decision == "promoted", (run.decision_reason, run.error)
    assert "unlabelled promotion allowed" in run.decision_reason
    champion = registry.champion("payments")
    assert champion is not None and champion.version == run.challenger
    quant = champion.manifest["metrics"]["quantization"]
    assert quant["labelled"] is False and quant["rank_agreement"] >= 0.95


def test_the_same_records_in_another_order_are_the_same_training_data(
    registry: Registry, data: tuple[dict[str, list[Any]], list[Label]]
) -> None:
    """A source may hand the records over in any order within a second (Kafka interleaves
    partitions): the training data, and so the model, must not follow it."""
    anon, labels = data
    settings = RetrainSettings(streams=("telemetry",), min_records=300, seed_baselines=False)
    key = signing.generate_private_key()
    shuffled = {s: list(reversed(recs)) for s, recs in anon.items()}
    ids = []
    for source in (MemorySource(anon, labels), MemorySource(shuffled, labels)):
        prepared = TrainerService(registry, source, key, settings).prepare("telemetry")
        assert not isinstance(prepared, Waiting), prepared
        ids.append(prepared.records.event_ids.tolist())
    assert ids[0] == ids[1]


def test_a_holdout_with_one_labelled_episode_waits_for_more_labels(
    registry: Registry, data: tuple[dict[str, list[Any]], list[Label]]
) -> None:
    anon, labels = data
    settings = RetrainSettings(
        streams=("telemetry",),
        min_records=300,
        seed_baselines=False,
        train=replace(SMALL, split="vehicle"),
    )
    svc = TrainerService(
        registry, MemorySource(anon, labels), signing.generate_private_key(), settings
    )
    # One episode labelled so far (the others still running, say): the stratified split
    # gives its vehicle to the holdout, which then judges on that one fault alone.
    first = next(lab.episode_id for lab in labels if lab.stream == "telemetry")
    svc.source = MemorySource(anon, [lab for lab in labels if lab.episode_id == first])
    assert svc.cycle(NOW) == []
    status = registry.status("telemetry")
    assert status is not None and status.state == "waiting for labels", status
    assert "1 labelled episode(s) in the holdout, at least 2" in status.detail, status.detail
    assert registry.runs() == [], "waiting is not a failed run"
    svc.source = MemorySource(anon, labels)  # the rest arrive
    runs = svc.cycle(NOW + 3600)
    assert len(runs) == 1 and runs[0].decision != "failed", (runs, registry.status("telemetry"))


def test_failed_runs_back_off_doubling(
    registry: Registry, data: tuple[dict[str, list[Any]], list[Label]]
) -> None:
    anon, labels = data
    # An int8 check no model can pass: every run fails.
    settings = RetrainSettings(
        streams=("payments",),
        min_records=300,
        drift_check_s=100.0,
        seed_baselines=False,
        train=replace(SMALL, max_auc_drop=-1.0),
    )
    svc = TrainerService(
        registry, MemorySource(anon, labels), signing.generate_private_key(), settings
    )
    [run] = svc.cycle(NOW)
    assert run.decision == "failed" and "QuantizationError" in run.error
    status = registry.status("payments")
    assert status is not None and status.state == "backing off" and status.failures == 1
    assert status.next_ts == NOW + 100.0 and "next automatic run in 100 s" in status.detail
    assert svc.cycle(NOW + 99) == []
    [again] = svc.cycle(NOW + 101)
    assert again.decision == "failed"
    status = registry.status("payments")
    assert status is not None and status.failures == 2 and status.next_ts == NOW + 101 + 200.0
    assert len(registry.runs()) == 2


def _scores(records: list[Any], version: str, anomalous: Any) -> list[Score]:
    return [
        Score(
            event_id=r.event_id,
            ts=r.ts,
            stream="telemetry",
            token=key_of("telemetry")(r),
            score=1.0,
            threshold=0.5,
            model_version=version,
            anomalous=anomalous(r),
        )
        for r in records
    ]


def test_drift_names_the_gateway_whose_false_alerts_rose(
    registry: Registry, data: tuple[dict[str, list[Any]], list[Label]]
) -> None:
    anon, labels = data
    telemetry = anon["telemetry"]
    labelled = {lab.event_id for lab in labels}
    tokens = sorted({r.vehicle_token for r in telemetry})
    north = set(tokens[: len(tokens) // 2])
    failing = sorted(north)[0]
    first: dict[str, float] = {}
    for r in telemetry:
        first.setdefault(r.vehicle_token, r.ts)
    warm = feature_memory_s("telemetry")
    svc = TrainerService(
        registry,
        MemorySource({}, []),
        signing.generate_private_key(),
        RetrainSettings(streams=("telemetry",), recent_s=1e9, drift=DriftSettings(min_events=500)),
    )
    svc.cycle(NOW)  # seeds the baseline champion
    champion = registry.champion("telemetry")
    assert champion is not None

    def cold(r: Any) -> bool:  # every vehicle's first frames look odd to the model
        return r.ts < first[r.vehicle_token] + warm / 2

    def south_drifted(r: Any) -> bool:  # a new vehicle model on the south gateway only
        return cold(r) or zlib.crc32(r.event_id.encode()) % 10 == 0 or r.event_id in labelled

    by_gateway = {
        # One vehicle of the north is failing, its labels not in yet: a fault, not drift.
        "gw-north": _scores(
            [r for r in telemetry if r.vehicle_token in north],
            champion.version,
            lambda r: cold(r) or r.event_id in labelled or r.vehicle_token == failing,
        ),
        "gw-south": _scores(
            [r for r in telemetry if r.vehicle_token not in north], champion.version, south_drifted
        ),
    }
    south = [r for r in telemetry if r.vehicle_token not in north]

    def alert(i: int, state: AlertState, features: list[tuple[str, float]]) -> Alert:
        r = south[i]
        return Alert(
            alert_id=f"a{i}",
            stream="telemetry",
            token=r.vehicle_token,
            state=state,
            start_ts=r.ts,
            peak_ts=r.ts,
            end_ts=r.ts + 10,
            peak_score=2.0,
            threshold=1.0,
            event_ids=[r.event_id],
            model_version=champion.version,
            top_features=[Contribution(f, e) for f, e in features],
        )

    newcomer = south[0]  # an alert in a vehicle's first minute: its features still filling
    alerts = {
        "gw-south": [
            Alert(
                alert_id="a0",
                stream="telemetry",
                token=newcomer.vehicle_token,
                state="closed",
                start_ts=newcomer.ts,
                peak_ts=newcomer.ts,
                end_ts=newcomer.ts + 5,
                peak_score=9.0,
                threshold=1.0,
                event_ids=[newcomer.event_id],
                model_version=champion.version,
                top_features=[Contribution("frame_gap_s", 50.0)],
            ),
            alert(1000, "open", [("coolant_c", 9.0)]),  # superseded below
            alert(1000, "closed", [("tyre_fl_kpa", 3.0), ("coolant_c", 1.0)]),
            alert(2000, "closed", [("tyre_fl_kpa", 3.0), ("tyre_fr_kpa", 2.0)]),
            alert(3000, "closed", [("tyre_fr_kpa", 1.0)]),
        ]
    }
    svc.source = GatewaySource({"telemetry": telemetry}, labels, by_gateway, alerts)
    report = svc.check_drift("telemetry")
    assert report.drifted and report.drifted_gateways == ["gw-south"], report
    assert "gw-south: alert rate" in report.reason and "gw-north" not in report.reason
    # The features the drifted gateway's alerts blame (each alert's last state counts).
    assert report.blamed["gw-south"] == [
        ("tyre_fl_kpa", 0.6),
        ("tyre_fr_kpa", 0.3),
        ("coolant_c", 0.1),
    ]
    assert "gw-south's alerts point at tyre_fl_kpa 60%" in report.reason
    north_rate = report.gateways["gw-north"]["alert_rate"]
    assert north_rate == 0.0, (
        "a vehicle's first minute, labelled faults and a failing vehicle are not false alerts"
    )
    assert 0.05 < report.gateways["gw-south"]["alert_rate"] < 0.15

    # Scores of another model version say nothing about the champion.
    by_gateway["gw-south"] = _scores(
        [r for r in telemetry if r.vehicle_token not in north], "another-model", lambda r: True
    )
    assert not svc.check_drift("telemetry").drifted


class Flaky(MemorySource):
    """Data that cannot be read once (a file vanishing under a read, a broker blip)."""

    def __init__(self) -> None:
        super().__init__({}, [])
        self.calls = 0

    def anon_records(self, stream: str) -> list[Any]:
        self.calls += 1
        if self.calls == 1:
            raise FileNotFoundError("part-1.parquet vanished")
        return []


def _loop_until(target: Any, source: Flaky, calls: int) -> int:
    """Run ``target(stop, poll_s)`` in a thread until ``source`` was read ``calls`` times
    (or 30 s passed); returns how often it was read."""
    import threading

    stop = threading.Event()
    loop = threading.Thread(target=target, args=(stop, 0.05), daemon=True)
    loop.start()
    deadline = time.monotonic() + 30
    while source.calls < calls and time.monotonic() < deadline:
        time.sleep(0.05)
    stop.set()
    loop.join(10)
    return source.calls


def test_the_trainer_loops_carry_on_after_an_unexpected_error(tmp_path: Path) -> None:
    import threading

    from cloud.signer.signer import serve

    settings = RetrainSettings(streams=("telemetry",), drift_check_s=0.0)
    key = signing.generate_private_key()
    source = Flaky()

    def signer(stop: threading.Event, poll_s: float) -> None:
        serve(
            tmp_path / "registry",
            lambda reg: TrainerService(reg, source, key, settings),
            None,
            stop,
            streams=("telemetry",),
            poll_s=poll_s,
            train_poll_s=poll_s,
        )

    calls = _loop_until(signer, source, 3)
    assert calls >= 3, "the signer's training loop stopped at the first unexpected error"

    with Registry(tmp_path / "registry2") as reg:
        flaky = Flaky()
        svc = TrainerService(reg, flaky, key, settings)
        assert _loop_until(svc.run, flaky, 3) >= 3, (
            "the trainer service stopped at the first unexpected error"
        )


def test_a_new_champion_settles_before_drift_may_retrain_it(
    registry: Registry, data: tuple[dict[str, list[Any]], list[Label]]
) -> None:
    anon, labels = data
    settings = RetrainSettings(
        streams=("payments",),
        min_records=300,
        drift_check_s=0.0,
        settle_s=600.0,
        seed_baselines=False,
        train=SMALL,
    )
    svc = TrainerService(
        registry, MemorySource(anon, labels), signing.generate_private_key(), settings
    )
    [run] = svc.cycle(NOW)
    assert run.decision == "promoted", (run.decision_reason, run.error)
    status = registry.status("payments")
    assert status is not None and status.next_ts == NOW + 600.0
    assert "drift checks resume in 10 min" in status.detail
    assert svc.cycle(NOW + 599) == [] and registry.status("payments") == status
