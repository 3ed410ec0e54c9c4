"""Real data for the dashboard's tests: simulator events, anonymized as the edge does, trained
on by the real trainer service (TensorFlow, int8), recorded in a real registry, and scored by
the edge's real scorer with the registry's champions (scores, alerts, decisions).

Built once per test process (training is the slow part) and copied for each test.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from firmware_sim import FAULT_KINDS, Fleet, SimSettings

from cloud.registry import Registry
from cloud.trainer.data import DEFAULT_TRAINING_SECRET
from cloud.trainer.pipeline import TrainSettings
from cloud.trainer_service.trainer_service import RetrainSettings, TrainerService
from shared import signing
from shared.contracts import Label, ModelState, ModelStatus, Score, encode
from shared.features import Anonymizer
from shared.tokens import Tokenizer

STREAMS = ("telemetry", "payments")
SMALL = TrainSettings(epochs=2, hidden=(24, 8), seed=5, max_fit_rows=20_000)


class MemorySource:
    """The trainer service's DataSource over records held in memory (no broker)."""

    def __init__(self, anon: dict[str, list[Any]], labels: list[Label]) -> None:
        self.anon = anon
        self._labels = labels

    def anon_records(self, stream: str) -> list[Any]:
        return sorted(self.anon.get(stream, []), key=lambda r: r.ts)

    def labels(self) -> list[Label]:
        return list(self._labels)

    def scores(self, stream: str, since_ts: float) -> list[Score]:
        return []


def sim_data(
    seed: int, end_ts: float, vehicles: int = 30, duration_s: float = 1500.0
) -> tuple[dict[str, list[Any]], list[Label], set[str]]:
    """Anon records per stream ending at ``end_ts``, their labels, and every VIN/card used."""
    fleet = Fleet(
        SimSettings(
            vehicles=vehicles,
            duration_s=duration_s,
            seed=seed,
            rate_hz=0.2,
            payment_rate=80,
            start_ts=end_ts - duration_s,
            fault_rates={k: 0.5 for k in FAULT_KINDS},
        )
    )
    anonymizer = Anonymizer(Tokenizer(DEFAULT_TRAINING_SECRET))
    anon: dict[str, list[Any]] = defaultdict(list)
    pii: set[str] = set()
    for topic, payload in fleet.events():
        stream = topic.rsplit("/", 1)[-1]
        if stream not in STREAMS:
            continue
        pii.add(topic.split("/")[1])  # the VIN
        anon[stream].append(anonymizer.message(topic, payload))
        if stream == "payments":
            import json

            raw = json.loads(payload)
            pii.update({raw["card_number"], raw["cardholder"], raw["driver_name"]})
    return dict(anon), list(fleet.labels), pii


@dataclass
class World:
    """A registry with real runs and the edge's outputs for two gateways."""

    registry_root: Path
    key_file: Path
    public_key: Path
    anon: dict[str, list[Any]]
    labels: list[Label]
    pii: set[str]
    # (cloud topic, key, value) as MirrorMaker 2 would land them, per gateway
    records: list[tuple[str, bytes | None, bytes | None]]


def build_world(root: Path, gateways: tuple[str, ...] = ("gw-north", "gw-south")) -> World:
    end = time.time()
    anon, labels, pii = sim_data(seed=7, end_ts=end)
    key_file, pub = root / "signing.key", root / "signing.pub"
    key = signing.ensure_private_key(key_file, create=True)  # created 0600
    signing.write_public_key(key, pub)
    reg = Registry(root / "registry").start()
    try:
        svc = TrainerService(
            reg, MemorySource(anon, labels), key, RetrainSettings(min_records=300, train=SMALL)
        )
        for stream in STREAMS:
            # On this small data set a run may fail its int8 check (>0.005 ROC AUC below
            # float) and rightly leave no champion; the pages need one, so try other seeds.
            for seed in (SMALL.seed, 21, 31):
                svc.settings = RetrainSettings(min_records=300, train=replace(SMALL, seed=seed))
                svc.retrain(stream, "schedule", "scheduler", "no champion yet")
                if reg.champion(stream) is not None:
                    break
        # A second telemetry run (another seed) against the first: champion and challenger
        # scored on one holdout. It too may fail its int8 check; then another seed.
        for seed in (11, 41, 51):
            svc.settings = RetrainSettings(min_records=300, train=replace(SMALL, seed=seed))
            svc.retrain("telemetry", "drift", "drift-monitor", "feature PSI 0.31 (coolant_delta)")
            if len(reg.models("telemetry")) > 1:
                break
        records = _edge_outputs(reg, pub, anon, labels, gateways)
    finally:
        reg.close()
    return World(root / "registry", key_file, pub, anon, labels, pii, records)


def _edge_outputs(
    reg: Registry,
    pub: Path,
    anon: dict[str, list[Any]],
    labels: list[Label],
    gateways: tuple[str, ...],
) -> list[tuple[str, bytes | None, bytes | None]]:
    """Score each gateway's share of the fleet with the real edge scorer and the champions."""
    from edge.config import EdgeConfig
    from edge.scorer.model_runner import ModelHolder, load_model
    from edge.scorer.scorer import BatchResult, Out, ScorerService

    out_records: list[tuple[str, bytes | None, bytes | None]] = []
    for i, gw in enumerate(gateways):
        holders = {}
        for stream in STREAMS:
            champ = reg.champion(stream)
            assert champ is not None, f"no {stream} champion"
            holders[stream] = ModelHolder(load_model(champ.path, stream, pub))
            reported: tuple[ModelState, ...] = ("received", "shadowing", "active")
            for n, state in enumerate(reported):
                st = ModelStatus(
                    edge_id=gw,
                    stream=stream,
                    version=champ.version,
                    state=state,
                    reason="" if state != "active" else "shadow score within bounds",
                    ts=time.time() - 60 + n,
                )
                out_records.append((f"{gw}.model-status", stream.encode(), encode(st)))
        scorer = ScorerService(EdgeConfig(edge_id=gw), holders=holders)
        scorer.prepare()
        out, result = Out(), BatchResult()
        for stream in STREAMS:
            mine = [r for j, r in enumerate(anon[stream]) if j % len(gateways) == i]
            for start in range(0, len(mine), 2000):
                scorer.score_records(stream, mine[start : start + 2000], out, result)
            for rec in mine:
                out_records.append((f"{gw}.anon.{stream}", None, encode(rec)))
        out_records += [(f"{gw}.{topic}", k, v) for topic, k, v in out.records]
    out_records += [("labels", lab.event_id.encode(), encode(lab)) for lab in labels]
    return out_records


_CACHE: list[World] = []


def world() -> World:
    """One World per test process, built on first use (real training: ~a minute)."""
    if not _CACHE:
        _CACHE.append(build_world(Path(tempfile.mkdtemp(prefix="fleetsentry-dash-world-"))))
    return _CACHE[0]


def copy_registry(w: World, dest: Path) -> Path:
    shutil.copytree(w.registry_root, dest)
    # The registry stores artifact paths; point them at the copy.
    reg = Registry(dest).start()
    try:
        reg.db.execute(
            "UPDATE models SET path = replace(path, ?, ?)", (str(w.registry_root), str(dest))
        )
    finally:
        reg.close()
    return dest
