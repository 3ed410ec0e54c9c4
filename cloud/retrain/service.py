"""The trainer service: retrain on a schedule and on drift, promote only a better model.

Each cycle, per stream:

- scheduled: the champion is older than ``schedule_s`` (or there is none) -> retrain;
- otherwise every ``drift_check_s``: compare the recent window (the last ``recent_s`` of event
  time) with the champion's training window (feature PSI) and the champion's live alert rate
  with its holdout rate -> retrain on drift.

A retrain trains a challenger with the trainer's own pipeline on the fleet's replicated data,
scores champion and challenger on the challenger's labelled holdout (the most recent slice of
the data, which neither has trained on), promotes the challenger only if it is better, publishes
the champion to the ``models`` topic, and records the run (params, metrics, curves, data range,
duration, decision) in the registry, whatever happened.
"""

from __future__ import annotations

import json
import logging
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from numpy.typing import NDArray

from cloud.registry import ModelRecord, Registry, RunRecord
from cloud.registry.registry import Trigger
from cloud.retrain.decision import Evaluation, PromotionRule, curves, decide, evaluate
from cloud.retrain.drift import DriftReport, DriftSettings, Profile, detect, profile
from cloud.retrain.source import DataSource
from cloud.trainer import data as tdata
from cloud.trainer.pipeline import TrainSettings, train_stream, write_model_dir
from shared.errors import FleetsentryError
from shared.features import feature_matrix

log = logging.getLogger("trainer-service")
PROFILE_FILE = "profile.json"


class Publishes(Protocol):
    """What the service needs of a publisher (cloud.publisher.Publisher has it)."""

    def publish(self, model: ModelRecord, timeout_s: float = ...) -> int: ...


@dataclass(frozen=True)
class RetrainSettings:
    streams: tuple[str, ...] = ("telemetry", "payments")
    schedule_s: float = 24 * 3600.0
    drift_check_s: float = 300.0
    recent_s: float = 1800.0
    # Train on the last this-much event time (None: everything the cloud holds).
    train_window_s: float | None = None
    min_records: int = 1000
    actor: str = "trainer-service"
    train: TrainSettings = field(default_factory=TrainSettings)
    drift: DriftSettings = field(default_factory=DriftSettings)
    rule: PromotionRule = field(default_factory=PromotionRule)


class TrainerService:
    """Constructing it does no I/O; the registry and publisher are started by the caller."""

    def __init__(self, registry: Registry, source: DataSource, key: Ed25519PrivateKey,
                 settings: RetrainSettings = RetrainSettings(),
                 publisher: Publishes | None = None) -> None:
        self.registry = registry
        self.source = source
        self.key = key
        self.settings = settings
        self.publisher = publisher
        self._last_check: dict[str, float] = {}

    # --- the loop ----------------------------------------------------------------------------

    def run(self, stop: threading.Event, poll_s: float = 5.0) -> None:
        while not stop.is_set():
            try:
                self.cycle()
            except FleetsentryError as exc:  # a broker down, bad data: say so, keep serving
                log.error("cycle failed: %s", exc)
            stop.wait(poll_s)

    def cycle(self, now: float | None = None) -> list[RunRecord]:
        """One pass over the streams: retrain what is due or has drifted."""
        now = time.time() if now is None else now
        runs = []
        for stream in self.settings.streams:
            champion = self.registry.champion(stream)
            last = self.registry.runs(stream, 1)
            last_ts = last[0].started_ts if last else 0.0
            if champion is None:
                # Retried no faster than drift checks: a failing run must not spin.
                if now - last_ts > self.settings.drift_check_s:
                    runs.append(self.retrain(stream, "schedule", "scheduler", "no champion yet"))
                continue
            if now - max(champion.updated_ts, last_ts) > self.settings.schedule_s:
                runs.append(self.retrain(stream, "schedule", "scheduler", "scheduled retrain"))
                continue
            if now - self._last_check.get(stream, 0.0) < self.settings.drift_check_s:
                continue
            self._last_check[stream] = now
            report = self.check_drift(stream)
            log.info("%s drift check: %s", stream, report.reason)
            if report.drifted:
                runs.append(self.retrain(stream, "drift", "drift-monitor", report.reason))
        return runs

    # --- drift -------------------------------------------------------------------------------

    def check_drift(self, stream: str, records: list[Any] | None = None) -> DriftReport:
        champion = self.registry.champion(stream)
        if champion is None:
            return DriftReport(False, "no champion", 0)
        records = self.source.anon_records(stream) if records is None else records
        if not records:
            return DriftReport(False, "no records", 0)
        trained_until = float(champion.manifest["data_range"][1])
        newest = max(r.ts for r in records)
        since = max(trained_until, newest - self.settings.recent_s)
        recent = [r for r in records if r.ts > since]
        ref = self.reference(champion, records, before=since)
        if ref is None:
            return DriftReport(False, "no reference window for the champion", len(recent))
        x = feature_matrix(stream, recent) if recent else np.zeros((0, len(ref.features)))
        scored = [s for s in self.source.scores(stream, since)
                  if s.model_version == champion.version]
        rate = float(np.mean([s.anomalous for s in scored])) if scored else None
        expected = (champion.metrics.get("holdout") or {}).get("alert_rate")
        return detect(ref, x, self.settings.drift, rate, expected, len(scored))

    def reference(self, champion: ModelRecord, records: list[Any],
                  before: float) -> Profile | None:
        """The champion's training-window profile: saved beside it, else rebuilt from data."""
        path = champion.path / PROFILE_FILE
        if path.exists():
            return Profile.from_json(json.loads(path.read_text()))
        lo, hi = champion.manifest["data_range"]
        window = [r for r in records if lo <= r.ts <= hi] or [r for r in records if r.ts <= before]
        if len(window) < self.settings.drift.min_events:
            return None
        stream = champion.stream
        return profile(feature_matrix(stream, window), list(champion.manifest["features"]))

    # --- a training run ----------------------------------------------------------------------

    def retrain(self, stream: str, trigger: Trigger, triggered_by: str,
                reason: str = "") -> RunRecord:
        """Train a challenger, judge it against the champion, maybe promote; always record."""
        params = {"train": _jsonable(asdict(self.settings.train)),
                  "rule": asdict(self.settings.rule),
                  "train_window_s": self.settings.train_window_s}
        run_id = self.registry.start_run(stream, trigger, triggered_by, reason, params)
        log.info("run %d: %s retrain of %s (%s)", run_id, trigger, stream, reason)
        try:
            return self._retrain(run_id, stream)
        except Exception as exc:  # recorded, then the service carries on with the next cycle
            log.exception("run %d failed", run_id)
            return self.registry.finish_run(run_id, decision="failed",
                                            decision_reason="training failed",
                                            error=f"{type(exc).__name__}: {exc}")

    def _retrain(self, run_id: int, stream: str) -> RunRecord:
        anon = self.source.anon_records(stream)
        if self.settings.train_window_s is not None and anon:
            newest = anon[-1].ts
            anon = [r for r in anon if r.ts >= newest - self.settings.train_window_s]
        if len(anon) < self.settings.min_records:
            return self.registry.finish_run(
                run_id, decision="failed", records=len(anon),
                decision_reason=f"only {len(anon)} records (need {self.settings.min_records})")
        records = tdata.records_from_anon(stream, anon, self.source.labels())
        champion = self.registry.champion(stream)
        trained = train_stream(records, self.settings.train,
                               parent=champion.version if champion else None)
        with tempfile.TemporaryDirectory(prefix="challenger-") as tmp:
            out = write_model_dir(trained, Path(tmp) / "model", self.key)
            normal = records.x[~records.labelled]
            ref = profile(normal, records.features)
            (out / PROFILE_FILE).write_text(json.dumps(ref.to_json()))
            challenger = self.registry.register(out, run_id=run_id, actor=self.settings.actor)
        hold = trained.holdout
        y = hold.labelled
        ch_eval = evaluate(y, trained.holdout_int8, trained.manifest.threshold)
        champ_scores = score_with(champion, hold.x, records.features) if champion else None
        cp_eval = (evaluate(y, champ_scores, champion.threshold)
                   if champion is not None and champ_scores is not None else None)
        promote, why = decide(ch_eval, cp_eval, self.settings.rule)
        metrics: dict[str, Any] = {"challenger": ch_eval.to_json(),
                                   "champion": cp_eval.to_json() if cp_eval else None,
                                   "challenger_manifest": trained.manifest.metrics}
        chart: dict[str, Any] = {"challenger": curves(y, trained.holdout_int8),
                                 "loss": trained.manifest.metrics["training"]["loss"]}
        # The holdout's score distribution (percentiles): the dashboard sets live traffic
        # beside it to show drift in what the model sees.
        chart["score_quantiles"] = {"challenger": score_quantiles(trained.holdout_int8)}
        if champ_scores is not None:
            chart["champion"] = curves(y, champ_scores)
            chart["score_quantiles"]["champion"] = score_quantiles(champ_scores)
        if promote:
            self.registry.promote(challenger.version, self.settings.actor, why)
            self._publish(stream)
        log.info("run %d: %s %s (%s)", run_id, challenger.version,
                 "promoted" if promote else "kept the champion", why)
        return self.registry.finish_run(
            run_id, decision="promoted" if promote else "kept", decision_reason=why,
            challenger=challenger.version, metrics=metrics, curves=chart,
            data_range=trained.manifest.data_range, records=len(records))

    def _publish(self, stream: str) -> None:
        champion = self.registry.champion(stream)
        if self.publisher is not None and champion is not None:
            self.publisher.publish(champion)


def score_with(model: ModelRecord, x: NDArray[np.float32],
               features: list[str]) -> NDArray[np.float32] | None:
    """A registered model's int8 scores on raw feature rows (None if it takes other features)."""
    from cloud.trainer import model as ae

    if list(model.manifest["features"]) != list(features):
        return None
    int8 = ae.Int8Model((model.path / "model.tflite").read_bytes())
    scaling = model.manifest["scaling"]
    xs = ae.scale(x, np.asarray(scaling["mean"]), np.asarray(scaling["scale"]))
    return int8.scores(xs)


def score_quantiles(scores: NDArray[np.float32]) -> list[float]:
    """The 0th..100th percentiles of ``scores``, JSON-ready."""
    if not len(scores):
        return []
    q = np.quantile(np.asarray(scores, dtype=np.float64), np.linspace(0.0, 1.0, 101))
    return [round(float(v), 6) for v in q]


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def evaluation_of(run: RunRecord, which: str) -> Evaluation | None:
    """A run's recorded evaluation of the challenger or the champion (None: not scored)."""
    data: dict[str, Any] | None = run.metrics.get(which)
    if not data:
        return None
    values: dict[str, Any] = {k: (float("nan") if v is None else v) for k, v in data.items()}
    return Evaluation(**values)
