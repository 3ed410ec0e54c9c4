"""The whole loop with two gateways: drift -> false alerts rise -> retrain -> both gateways
switch -> false alerts fall; a flipped byte in a published model is refused by both; a model
promoted on the dashboard reaches both.

Each gateway is its own edge Kafka, Mosquitto, MirrorMaker 2 and ``fleetsentry edge run``
(bridge, enricher, scorer, agent) with the shipped baseline models; one cloud Kafka (one
node: the loop is under test here, not the cluster).
Each gateway's seeded fleet drives real MQTT sessions, faster than real time (device time
still advances a second per frame). A new vehicle model joins both fleets part way through
phase 1 (``--drift new_model``): it runs hotter and with higher tyre pressures than anything
the baseline saw. The cloud's trainer service (in this process, on the replicated topics)
sees the drift, trains a challenger on the recent window, judges it against the champion on
the same labelled holdout, promotes and publishes it; MirrorMaker carries it to both gateways,
whose agents shadow-score and switch. Phase 2 drives the same fleets on.

False alerts are measured on the gateways' own ``scores.telemetry`` and ``alerts`` before the
drift, after it (baseline model), and after the switch (the retrained model): the share of
unlabelled frames scored anomalous (asserted: it must rise with the drift and fall after the
switch), and alert episodes touching no labelled fault of their vehicle per 100 vehicle-hours
(printed; a drifted vehicle tends to stay in one long open episode, so episodes undercount it).

Then a data scientist's model is promoted on the dashboard (``fleetsentry cloud run`` in
headless Chromium, against the same cloud and registry): the dashboard publishes it, and its
fleet page shows both gateways running it once their agents report it active.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from firmware_sim import Fleet, SimSettings
from firmware_sim.live import LiveRunner
from firmware_sim.session import ConnectSettings

from cloud.publisher import Publisher, Releaser
from cloud.registry import ModelRecord, Registry
from cloud.trainer import data as tdata
from cloud.trainer.errors import QuantizationError
from cloud.trainer.pipeline import TrainSettings, train_stream, write_model_dir
from cloud.trainer_service.drift import DriftSettings
from cloud.trainer_service.source import KafkaSource
from cloud.trainer_service.trainer_service import RetrainSettings, TrainerService
from shared import model_bundle, releases, signing, topics
from shared.baselines import baseline_dir
from shared.contracts import ModelStatus, decode, encode
from shared.features import feature_memory_s
from shared.infra.mirror import Mirror
from shared.infra.ports import free_ports
from shared.infra.stack import Stack
from shared.kafka_config import (
    LABELS_USER,
    PUBLISHER_USER,
    TRAINER_USER,
    KafkaSettings,
)
from tests.agent_models import flip_byte
from tests.browser_support import chromium, cloud_run, cloud_toml, promote, shot, sign_in, wait
from tests.edge_pipeline import EdgePipeline
from tests.paced_fleet import FastFleet
from tests.score_collector import Collector
from tests.support import consume_all, free_infra_settings, mirrors_healed, produce_all

pytestmark = pytest.mark.integration

BASELINE = baseline_dir("telemetry")
VEHICLES = 40  # per gateway, before the new model's vehicles join (30 % more)
SPEED = 10.0  # fleet seconds per wall second
PHASE1_S = 900.0
DRIFT_AT_S = 240.0
PHASE2_S = 360.0
SETTLE_S = 120.0  # after the drift starts or a model switches: vehicles join, windows refill
AFTER_FAULT_S = feature_memory_s("telemetry")  # rolling features remember a fault this long
PASSWORD = "drift-vehicle-pw"


@dataclass
class Gateway:
    n: int
    stack: Stack
    pipeline: EdgePipeline
    mirror: Mirror
    fleet: Fleet
    events: dict[str, tuple[str, str]] = field(default_factory=dict)

    @property
    def edge_id(self) -> str:
        return self.pipeline.edge_id


def wait_scored(gw: Gateway, col: Collector, timeout: float) -> None:
    """Until every telemetry frame the gateway's fleet sent so far has its score."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not col.missing("telemetry"):
            time.sleep(3)  # the episodes' closing alerts
            return
        time.sleep(1)
    want = sum(s == "telemetry" for s, _ in gw.events.values())
    raise AssertionError(
        f"{gw.edge_id}: {col.missing('telemetry')} of {want} frames never "
        f"scored\n{gw.pipeline.tail()}"
    )


@pytest.fixture(scope="module")
def cloud_state(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The cloud's registry and dashboard state, shared by the tests of this module."""
    return tmp_path_factory.mktemp("cloud")


@pytest.fixture(scope="module")
def key_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    home = tmp_path_factory.mktemp("keys")
    key = signing.ensure_private_key(home / "fleet.key", create=True)
    signing.write_public_key(key, home / "fleet.pub")
    return home / "fleet.key", home / "fleet.pub"


@pytest.fixture(scope="module")
def gateways(
    stack: Stack,
    cloud_kafka: KafkaSettings,
    key_files: tuple[Path, Path],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[list[Gateway]]:
    home = tmp_path_factory.mktemp("gateways")
    second = Stack(free_infra_settings(home / "gateway-2"), quiet=True)
    started: list[Any] = []
    try:
        second.up(services=frozenset({"edge", "mqtt"}))
        # Yesterday 09:00 UTC: never ahead of the gateway's clock, and the same time of day
        # (traffic, weather) in every run, so the seeds give the same events every run.
        start_ts = (int(time.time()) // 86400 - 1) * 86400 + 9 * 3600.0
        gws = []
        for n, s in enumerate((stack, second), start=1):
            fleet = Fleet(
                SimSettings(
                    vehicles=VEHICLES,
                    duration_s=PHASE1_S + PHASE2_S,
                    seed=100 + n,
                    start_ts=start_ts,
                    drift=("new_model",),
                    drift_at_s=DRIFT_AT_S,
                )
            )
            s.mqtt.register_vehicles(fleet.credentials(PASSWORD))
            pipeline = EdgePipeline(
                s,
                home / f"edge-{n}",
                scorer=f'public_key = "{key_files[1]}"',
                services=("bridge", "enricher", "scorer", "agent"),
                extra="[enricher]\nbatch_wait_ms = 20\n[agent]\nshadow_window = 2000\n",
            )
            mirror = stack.mirror(pipeline.edge_id, gateway=s, home=home)
            gws.append(Gateway(n, s, pipeline, mirror, fleet))
        for gw in gws:
            gw.mirror.start()
            started.append(gw.mirror)
            gw.pipeline.start()
            started.append(gw.pipeline)
        for gw in gws:
            gw.mirror.wait_healthy(240)
        with mirrors_healed(gw.mirror for gw in gws):
            yield gws
    finally:
        for thing in reversed(started):
            thing.stop()
        second.down()


def drive(gws: list[Gateway], until_s: float, home: Path) -> None:
    """Drive every gateway's fleet up to ``until_s`` of device time, side by side."""
    errors: list[BaseException] = []

    def one(gw: Gateway) -> None:
        try:
            fast = FastFleet(
                gw.fleet, SPEED, round(until_s / gw.fleet.settings.dt), gw.events, slack=4.0
            )  # every tick, however busy the machine
            conf = ConnectSettings(
                host=gw.stack.mqtt.host, port=gw.stack.mqtt.port, password=PASSWORD, window=50
            )
            LiveRunner(fast.as_fleet(), conf, home / f"sim-{gw.n}", drain_timeout_s=120.0).run()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(gw,)) for gw in gws]
    for t in threads:
        t.start()
    for t in threads:
        t.join(600)
    if errors:
        raise errors[0]


def fault_spans(gw: Gateway) -> dict[str, list[tuple[float, float]]]:
    spans: dict[str, dict[str, list[float]]] = {}
    for lab in gw.fleet.labels:
        if lab.stream == "telemetry" and lab.event_id in gw.events:
            vin = gw.events[lab.event_id][1]
            s = spans.setdefault(vin, {}).setdefault(lab.episode_id, [lab.start_ts, lab.end_ts])
            s[0], s[1] = min(s[0], lab.start_ts), max(s[1], lab.end_ts)
    return {vin: [(a, b) for a, b in eps.values()] for vin, eps in spans.items()}


@dataclass
class Window:
    """False alerts of one gateway over one span of device time."""

    frames: int
    false_frames: int
    false_episodes: int
    vehicle_hours: float
    versions: set[str]

    @property
    def false_rate(self) -> float:
        return self.false_frames / max(1, self.frames)

    @property
    def episodes_per_100h(self) -> float:
        return 100 * self.false_episodes / max(self.vehicle_hours, 1e-9)

    def __str__(self) -> str:
        return (
            f"{self.false_rate:6.2%} of {self.frames:6} normal frames anomalous, "
            f"{self.false_episodes:3} false alert episodes "
            f"({self.episodes_per_100h:5.0f} per 100 vehicle-h), models {sorted(self.versions)}"
        )


def window(gw: Gateway, col: Collector, lo: float, hi: float) -> Window:
    labelled = {lab.event_id for lab in gw.fleet.labels}
    spans = fault_spans(gw)
    frames = [
        s for e, s in col.scores.items() if lo <= s.ts < hi and gw.events[e][0] == "telemetry"
    ]
    normal = [s for s in frames if s.event_id not in labelled]
    vehicles = {gw.events[s.event_id][1] for s in frames}
    episodes: dict[str, tuple[str, float, float]] = {}
    for a in col.alerts:
        if a.stream == "telemetry" and lo <= a.start_ts < hi:
            vin = gw.events[a.event_ids[0]][1]
            _, start, end = episodes.get(a.alert_id, (vin, a.start_ts, a.end_ts))
            episodes[a.alert_id] = (vin, min(start, a.start_ts), max(end, a.end_ts))
    false = [
        ep
        for ep in episodes.values()
        if not any(ep[1] <= b + AFTER_FAULT_S and ep[2] >= a for a, b in spans.get(ep[0], []))
    ]
    return Window(
        len(normal),
        sum(s.anomalous for s in normal),
        len(false),
        len(vehicles) * (hi - lo) / 3600,
        {s.model_version for s in frames},
    )


def cloud_statuses(
    cloud_kafka: KafkaSettings, gws: list[Gateway], version: str, timeout: float = 240.0
) -> dict[str, ModelStatus]:
    """The final status each gateway reported for ``version``, as the cloud sees it."""
    want = {gw.edge_id: gw.mirror.cloud_topic(topics.MODEL_STATUS) for gw in gws}
    final = {"active", "rejected", "rolled_back"}
    seen: dict[str, ModelStatus] = {}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and len(seen) < len(gws):
        for edge_id, topic in want.items():
            if edge_id in seen:
                continue
            try:
                msgs = consume_all(cloud_kafka, topic, timeout=15, idle=2)
            except KeyError:  # the topic appears with the first replicated record
                continue
            for m in msgs:
                s = decode(ModelStatus, m.value())
                if s.version == version and s.state in final:
                    seen[edge_id] = s
        time.sleep(2)
    missing = set(want) - set(seen)
    assert not missing, f"the cloud never saw {sorted(missing)} finish with {version}"
    return seen


def send_labels(cloud_kafka: KafkaSettings, gws: list[Gateway], sent: set[str]) -> set[str]:
    """The fleets' labels of the events driven so far, not yet sent, to the cloud's labels."""
    labels = [
        lab
        for gw in gws
        for lab in gw.fleet.labels
        if lab.event_id in gw.events and lab.event_id not in sent
    ]
    produce_all(
        cloud_kafka, topics.LABELS, [(lab.event_id.encode(), encode(lab)) for lab in labels]
    )
    return sent | {lab.event_id for lab in labels}


def wait_replicated(source: KafkaSource, expect: int, timeout: float = 300.0) -> int:
    deadline = time.monotonic() + timeout
    got = 0
    while time.monotonic() < deadline:
        got = len(source.anon_records("telemetry"))
        if got >= expect:
            return got
        time.sleep(5)
    raise AssertionError(f"only {got} of {expect} telemetry records reached the cloud")


@pytest.mark.timeout(1500)
def test_drift_retrain_and_both_gateways_switch_and_false_alerts_fall(
    gateways: list[Gateway],
    cloud_kafka: KafkaSettings,
    cloud_login: Callable[[str], KafkaSettings],
    key_files: tuple[Path, Path],
    cloud_state: Path,
    tmp_path: Path,
) -> None:
    gws = gateways
    t0 = gws[0].fleet.start_ts
    drift_ts, switch_ts = t0 + DRIFT_AT_S, t0 + PHASE1_S
    collectors = [Collector(gw.stack.edge.login(), gw.events) for gw in gws]
    for c in collectors:
        c.start()
    registry = Registry(cloud_state / "registry").start()
    try:
        # Phase 1: normal driving, then a new vehicle model joins both fleets.
        drive(gws, PHASE1_S, tmp_path)
        for gw, c in zip(gws, collectors, strict=True):
            wait_scored(gw, c, 240)
        before = [
            window(gw, c, t0 + SETTLE_S, drift_ts) for gw, c in zip(gws, collectors, strict=True)
        ]
        drifted = [
            window(gw, c, drift_ts + SETTLE_S, switch_ts)
            for gw, c in zip(gws, collectors, strict=True)
        ]
        for gw, b, d in zip(gws, before, drifted, strict=True):
            print(
                f"\n{gw.edge_id} before the drift:      {b}\n"
                f"{gw.edge_id} drift, baseline model: {d}"
            )

        # The cloud: labels (chargebacks, workshop reports) beside the replicated data.
        labelled = send_labels(cloud_login(LABELS_USER), gws, set())
        source = KafkaSource(cloud_login(TRAINER_USER))
        expect = sum(s == "telemetry" for gw in gws for s, _ in gw.events.values())
        wait_replicated(source, expect)

        baseline = registry.register(BASELINE, state="champion")
        settings = RetrainSettings(
            streams=("telemetry",),
            drift_check_s=0.0,
            min_records=1000,
            # The shipped baseline's training data is not in the cloud: the fleet's data
            # before the recent window is the reference the drift check compares with.
            recent_s=PHASE1_S - DRIFT_AT_S - 60,
            drift=DriftSettings(min_events=500),
        )
        key = signing.load_private_key(key_files[0])
        with Publisher(cloud_login(PUBLISHER_USER), Releaser(key, registry.root)) as pub:
            svc = TrainerService(registry, source, key, settings, pub)
            runs = svc.cycle()
            assert len(runs) == 1, (
                f"the drift check did not trigger a retrain: {svc.check_drift('telemetry')}"
            )
        run = runs[0]
        print(
            f"cloud: {run.trigger} retrain ({run.trigger_reason}); {run.decision}: "
            f"{run.decision_reason}"
        )
        assert run.trigger == "drift" and run.decision == "promoted", run
        champion = registry.champion("telemetry")
        assert champion is not None and champion.version == run.challenger
        assert champion.parent == baseline.version

        statuses = cloud_statuses(cloud_kafka, gws, champion.version)
        for edge_id, st in statuses.items():
            print(f"cloud sees {edge_id}: {st.version} {st.state} ({st.reason})")
        assert {st.state for st in statuses.values()} == {"active"}, statuses

        # Phase 2: the same fleets drive on, scored by the retrained model.
        drive(gws, PHASE1_S + PHASE2_S, tmp_path)
        for gw, c in zip(gws, collectors, strict=True):
            wait_scored(gw, c, 240)
        after = [
            window(gw, c, switch_ts + SETTLE_S, t0 + PHASE1_S + PHASE2_S)
            for gw, c in zip(gws, collectors, strict=True)
        ]
        for gw, a in zip(gws, after, strict=True):
            print(f"{gw.edge_id} drift, retrained:      {a}")
        send_labels(cloud_login(LABELS_USER), gws, labelled)
        for b, d, a in zip(before, drifted, after, strict=True):
            assert d.versions == {baseline.version} and a.versions == {champion.version}
            assert d.false_rate > 3 * b.false_rate + 0.01, "the drift raised no false alerts"
            assert a.false_rate < 0.5 * d.false_rate, "false alerts did not fall"

        # A byte flipped in a published model: every gateway refuses it, and keeps scoring.
        release = releases.issue(
            champion.path,
            fleet=releases.DEFAULT_FLEET,
            stream="telemetry",
            version="drift-tampered",
            number=10**9,
            key=key,
            ttl_s=3600,
        )
        value = model_bundle.pack(
            champion.path, "telemetry", "drift-tampered", time.time(), release=release
        )
        produce_all(cloud_kafka, topics.MODELS, [(b"telemetry", flip_byte(value))])
        refused = cloud_statuses(cloud_kafka, gws, "drift-tampered")
        for edge_id, st in refused.items():
            print(f"cloud sees {edge_id}: {st.version} {st.state} ({st.reason})")
            assert st.state == "rejected" and "changed after release" in st.reason, st
    finally:
        for c in collectors:
            c.stop.set()
            c.join(30)
        registry.close()


def train_candidate(
    registry: Registry, source: KafkaSource, key_file: Path, out: Path
) -> ModelRecord:
    """A data scientist's model, trained on the fleet's latest data and registered (not
    promoted). A small run may rightly fail its int8 check: then another seed."""
    anon = source.anon_records("telemetry")
    recent = [r for r in anon if r.ts >= anon[-1].ts - (PHASE1_S - DRIFT_AT_S + PHASE2_S)]
    records = tdata.records_from_anon("telemetry", recent, source.labels())
    key = signing.load_private_key(key_file)
    for seed in (3, 13, 23):
        try:
            trained = train_stream(records, TrainSettings(epochs=3, seed=seed))
        except QuantizationError:
            continue
        return registry.register(
            write_model_dir(trained, out / f"candidate-{seed}", key), actor="data-scientist"
        )
    raise AssertionError("no candidate passed its int8 check")


@pytest.mark.timeout(900)
def test_a_model_promoted_on_the_dashboard_reaches_both_gateways(
    gateways: list[Gateway],
    cloud_kafka: KafkaSettings,
    cloud_login: Callable[[str], KafkaSettings],
    key_files: tuple[Path, Path],
    cloud_state: Path,
    tmp_path: Path,
) -> None:
    from selenium.webdriver.common.by import By

    registry = Registry(cloud_state / "registry").start()
    try:
        source = KafkaSource(cloud_login(TRAINER_USER))
        candidate = train_candidate(registry, source, key_files[0], tmp_path)
    finally:
        registry.close()
    config = cloud_state / "cloud.toml"
    config.write_text(
        cloud_toml(cloud_kafka, cloud_state / "registry", free_ports(1)[0], cloud_state)
    )

    def rows(d: Any) -> list[str]:
        return [
            d.find_element(By.CSS_SELECTOR, f"tr[data-gateway='{gw.edge_id}']").text
            for gw in gateways
        ]

    with (
        cloud_run(config, key_files[0], "--schedule", "1e12", "--drift-check", "1e12") as run,
        chromium(tmp_path / "chromium") as d,
    ):
        sign_in(d, run, "/registry")
        assert "requested" in promote(d, run, candidate.version)  # recorded for the signer
        d.get(run.url + "/runs")
        wait(
            "the signer to sign and publish it",
            lambda: "published to the gateways" in d.find_element(By.ID, "requests-table").text,
        )
        d.get(run.url + "/fleet")
        wait(
            "both gateways to run the promoted model",
            lambda: all(candidate.version in r and "not champion" not in r for r in rows(d)),
            timeout_s=300,
            every_s=2,
        )
        shot(d, "8-fleet-after-promotion")
        print("\n" + "\n".join(rows(d)))
    statuses = cloud_statuses(cloud_kafka, gateways, candidate.version)
    assert {st.state for st in statuses.values()} == {"active"}, statuses
