"""The trainer service: retrain on a schedule and on drift, promote only a better model.

The cloud starts from what the gateways run: a stream with no champion gets the shipped
baseline (``shared/models/baseline``), re-signed with the cloud's key, as its first champion.

Each cycle, per stream:

- scheduled: the champion is older than ``schedule_s`` (or there is none) -> retrain;
- otherwise every ``drift_check_s``: compare the recent window (the last ``recent_s`` of event
  time) with the champion's training window (feature PSI), and each gateway's live false-alert
  rate (frames with no label, past each vehicle's first ``feature_memory_s``) under the
  champion with its holdout false-positive rate -> retrain on drift.

An automatic run starts only when there is something to train on: too few records is
"waiting for data", no labelled anomalies where the int8 check needs them is "waiting for
labels" (unless ``allow_unlabelled_promotion``); neither is a failed run. A run that fails or
keeps the champion backs the stream off: the next automatic run waits ``drift_check_s``,
doubling with each such run in a row up to ``max_backoff_s``; a promoted champion serves
``settle_s`` before drift may retrain it. What the service is doing about
each stream is kept in the registry's ``trainer_status`` table (the dashboard shows it).

A retrain trains a challenger with the trainer's own pipeline on the fleet's replicated data,
scores champion and challenger on the challenger's labelled holdout (the most recent slice of
the data, which neither has trained on), promotes the challenger only if it is better (or, with
``require_approval``, holds it as "awaiting approval" until an operator approves it on the
dashboard and the signer promotes it), publishes the champion to the ``models`` topic, and
records the run (params, metrics, curves, data range,
duration, decision) in the registry, whatever happened.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from numpy.typing import NDArray

from cloud.registry import ModelRecord, Registry, RunRecord
from cloud.registry.registry import Decision, StatusState, Trigger
from cloud.trainer import data as tdata
from cloud.trainer.data import Records, time_split, vehicle_split
from cloud.trainer.errors import NeedsLabelsError
from cloud.trainer.pipeline import TrainSettings, train_stream, write_model_dir
from cloud.trainer_service.decision import (
    Evaluation,
    PromotionRule,
    curves,
    decide,
    evaluate,
    recall_at_fpr,
)
from cloud.trainer_service.drift import (
    DriftReport,
    DriftSettings,
    Profile,
    blamed_features,
    detect,
    profile,
    trimmed_rate,
)
from cloud.trainer_service.source import DataSource
from shared import baselines, signing
from shared.declarations.memory import memory_s as declared_memory_s
from shared.declarations.memory import needs_interval
from shared.errors import FleetsentryError
from shared.features import feature_matrix
from shared.streams import all_streams, declaration_of
from shared.streams import get as get_stream

if TYPE_CHECKING:
    from cloud.config import TrainerSettings

log = logging.getLogger("trainer-service")
PROFILE_FILE = "profile.json"


class Publishes(Protocol):
    """What the service needs of a publisher (cloud.publisher.Publisher has it)."""

    def publish(self, model: ModelRecord, timeout_s: float = ...) -> int: ...

    def refresh(self, registry: Registry) -> dict[str, str]: ...


@dataclass(frozen=True)
class RetrainSettings:
    # The streams to train (None: every registered stream, the built-in ones and those
    # declared in cloud.toml's [streams] dir).
    streams: tuple[str, ...] | None = None
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
    # Register the shipped baselines as the first champions of streams that have none.
    seed_baselines: bool = True
    # Train, and promote, on data with no labelled anomalies (the int8 model is then checked
    # by rank agreement with the float one, and judged on alert rate alone). Off: wait.
    allow_unlabelled_promotion: bool = False
    # Labelled episodes the holdout must hold before an automatic run judges on it.
    min_holdout_episodes: int = 2
    # Longest wait after failed or kept automatic runs in a row (doubling from drift_check_s).
    max_backoff_s: float = 6 * 3600.0
    # A newly promoted champion serves this long before drift may retrain it: the recent
    # window must hold enough of what it scored to be compared with its training window.
    settle_s: float = 1800.0
    # Hold a challenger that passed the automatic checks for an operator's approval (on the
    # dashboard) instead of promoting and publishing it at once.
    require_approval: bool = False

    def served(self) -> tuple[str, ...]:
        """The streams this service trains, each known (an unknown name raises, listing
        the known ones)."""
        if self.streams is None:
            return tuple(spec.name for spec in all_streams())
        return tuple(get_stream(name).name for name in self.streams)


def settings_from(trainer: TrainerSettings, epochs: int, **service: Any) -> RetrainSettings:
    """The service's settings: ``cloud.toml``'s ``[trainer]`` section, the epochs to train
    for, and the service's own options (streams, min_records, schedule_s, drift_check_s,
    recent_s) as given."""
    return RetrainSettings(
        train=TrainSettings(epochs=epochs, split=trainer.split),
        seed_baselines=trainer.seed_baselines,
        allow_unlabelled_promotion=trainer.allow_unlabelled_promotion,
        min_holdout_episodes=trainer.min_holdout_episodes,
        require_approval=trainer.require_approval,
        **service,
    )


@dataclass
class Prepared:
    """A stream's data, ready to train on."""

    records: Records
    labelled_holdout: bool


@dataclass(frozen=True)
class Waiting:
    """Not enough to train on yet: what is missing, in words."""

    state: StatusState
    reason: str


class TrainerService:
    """Constructing it does no I/O; the registry and publisher are started by the caller."""

    def __init__(
        self,
        registry: Registry,
        source: DataSource,
        key: Ed25519PrivateKey,
        settings: RetrainSettings = RetrainSettings(),
        publisher: Publishes | None = None,
    ) -> None:
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
                renew_releases(self.publisher, self.registry)
            except FleetsentryError as exc:  # a broker down, bad data: say so, keep serving
                log.error("cycle failed: %s", exc)
            except Exception:  # the loop outlives any one cycle; say what broke it
                log.exception("cycle failed")
            stop.wait(poll_s)

    def cycle(self, now: float | None = None) -> list[RunRecord]:
        """One pass over the streams: retrain what is due or has drifted."""
        now = time.time() if now is None else now
        runs = []
        for stream in self.settings.served():
            if self.settings.seed_baselines:
                self.seed_baseline(stream)
            status = self.registry.status(stream)
            if status is not None and status.next_ts is not None and now < status.next_ts:
                continue  # waiting for data or labels, or backing off: not yet
            if self.registry.awaiting_approval(stream):
                continue  # one challenger at a time waits for an operator
            champion = self.registry.champion(stream)
            last = self.registry.runs(stream, 1)
            last_ts = last[0].started_ts if last else 0.0
            run: RunRecord | None = None
            if champion is None:
                run = self.automatic(stream, "schedule", "scheduler", "no champion yet", now)
            elif now - max(champion.updated_ts, last_ts) > self.settings.schedule_s:
                run = self.automatic(stream, "schedule", "scheduler", "scheduled retrain", now)
            elif now - self._last_check.get(stream, 0.0) >= self.settings.drift_check_s:
                self._last_check[stream] = now
                report = self.check_drift(stream)
                log.info("%s drift check: %s", stream, report.reason)
                if report.drifted:
                    self.registry.set_status(
                        stream, "watching", f"drift: {report.reason}", drift=report.to_json()
                    )
                    run = self.automatic(stream, "drift", "drift-monitor", report.reason, now)
                else:
                    self.registry.set_status(
                        stream,
                        "watching",
                        f"{champion.version}: {report.reason}",
                        drift=report.to_json(),
                    )
            if run is not None:
                runs.append(run)
        return runs

    def automatic(
        self,
        stream: str,
        trigger: Trigger,
        triggered_by: str,
        reason: str,
        now: float | None = None,
    ) -> RunRecord | None:
        """A run the service starts itself: only when there is something to train on, and
        backing off after runs that fail or keep the champion."""
        now = time.time() if now is None else now
        prepared = self.prepare(stream)
        if isinstance(prepared, Waiting):
            log.info(
                "%s: %s (%s) to retrain on %s", stream, prepared.state, prepared.reason, trigger
            )
            self.registry.set_status(
                stream,
                prepared.state,
                f"{prepared.reason}; to retrain on {trigger}: {reason}",
                next_ts=now + self.settings.drift_check_s,
            )
            return None
        self.registry.set_status(stream, "training", f"{trigger}: {reason}")
        run = self.retrain(stream, trigger, triggered_by, reason, prepared)
        status = self.registry.status(stream)
        failures = status.failures if status is not None else 0
        if run.decision == "awaiting approval":
            self.note_awaiting(run)
        elif run.decision == "promoted":
            self.registry.set_status(
                stream,
                "watching",
                f"run {run.id} promoted {run.challenger}; drift checks "
                f"resume in {_duration(self.settings.settle_s)}",
                next_ts=now + self.settings.settle_s,
                failures=0,
            )
        else:
            failures += 1
            wait = min(
                self.settings.max_backoff_s, self.settings.drift_check_s * 2 ** (failures - 1)
            )
            self.registry.set_status(
                stream,
                "backing off",
                f"run {run.id} {run.decision}: {run.decision_reason}"
                + (f" ({run.error})" if run.error else "")
                + f"; next automatic run in {_duration(wait)}",
                next_ts=now + wait,
                failures=failures,
            )
        return run

    def note_awaiting(self, run: RunRecord) -> None:
        """Say on the stream's status which run waits for an operator."""
        self.registry.set_status(
            run.stream,
            "awaiting approval",
            f"run {run.id}: {run.challenger} passed the "
            "automatic checks and waits for an operator to approve or reject it (Training runs "
            "on the dashboard); no automatic run until then",
            failures=0,
        )

    # --- the first champions -----------------------------------------------------------------

    def seed_baseline(self, stream: str) -> ModelRecord | None:
        """Register the shipped baseline as ``stream``'s champion when it has none.

        The gateways already run it, so it is not published; it is re-signed with the
        cloud's key so that a later rollback to it verifies on every gateway.
        """
        if self.registry.champion(stream) is not None:
            return None
        source = baselines.baseline_dir(stream)
        if not (source / signing.MANIFEST_FILE).exists():
            return None
        signing.verify_model_dir(source, signing.load_public_key(baselines.BASELINE_PUBLIC_KEY))
        with tempfile.TemporaryDirectory(prefix="baseline-") as tmp:
            copy = Path(tmp) / stream
            shutil.copytree(source, copy)
            signing.sign_model_dir(copy, self.key)
            model = self.registry.register(copy, actor=self.settings.actor)
        if model.state == "champion":
            return model
        if model.state == "retired":
            return None  # it served before and was replaced: an operator's rollback decides
        model = self.registry.promote(
            model.version, self.settings.actor, "the baseline the gateways ship with"
        )
        log.info("%s: the shipped baseline %s is the first champion", stream, model.version)
        return model

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
        x = None
        if ref is not None:
            x = feature_matrix(stream, recent) if recent else np.zeros((0, len(ref.features)))
        first = first_seen(stream, records)
        warm_after = memory_s(stream, records)
        rates = self.false_alert_rates(stream, champion, first, since, warm_after)
        report = detect(
            ref,
            x,
            self.settings.drift,
            expected_alert_rate=holdout_fpr(champion),
            gateway_rates=rates,
        )
        return self._blame(report, stream, champion, first, since, warm_after)

    def _blame(
        self,
        report: DriftReport,
        stream: str,
        champion: ModelRecord,
        first: dict[str, float],
        since: float,
        warm_after: float,
    ) -> DriftReport:
        """Name the features each drifted gateway's alerts point at (when the source can
        tell alerts apart by gateway), leaving out alerts raised in a vehicle's first
        ``feature_memory_s``."""
        by_gateway = getattr(self.source, "gateway_alerts", None)
        if not report.drifted_gateways or by_gateway is None:
            return report
        alerts = by_gateway(since)
        blamed = {}
        for gw in report.drifted_gateways:
            mine = [
                a
                for a in alerts.get(gw, [])
                if a.stream == stream
                and a.model_version == champion.version
                and a.start_ts >= first.get(a.token, a.start_ts) + warm_after
            ]
            features = blamed_features(mine)
            if features:
                blamed[gw] = features
        if not blamed:
            return report
        notes = "; ".join(
            f"{gw}'s alerts point at " + ", ".join(f"{f} {100 * share:.0f}%" for f, share in feats)
            for gw, feats in blamed.items()
        )
        return replace(report, reason=f"{report.reason}; {notes}", blamed=blamed)

    def false_alert_rates(
        self,
        stream: str,
        champion: ModelRecord,
        first: dict[str, float],
        since: float,
        warm_after: float,
    ) -> dict[str, tuple[float, int]]:
        """Per gateway: the share of the champion's recent scores that are anomalous, over
        events with no label, leaving out each vehicle's first ``feature_memory_s`` (its
        rolling features are still filling, so its first frames look odd to any model) and
        the ``trim_vehicles`` share of vehicles with the most anomalous frames (a faulty
        vehicle whose label has not arrived yet is not drift)."""
        by_gateway = getattr(self.source, "gateway_scores", None)
        scores: dict[str, list[Any]] = (
            by_gateway(stream, since)
            if by_gateway is not None
            else {"": self.source.scores(stream, since)}
        )
        labelled = {lab.event_id for lab in self.source.labels()}
        out = {}
        for gw, items in scores.items():
            per_key: dict[str, list[int]] = {}
            for s in items:
                if (
                    s.model_version != champion.version
                    or s.event_id in labelled
                    or s.ts < first.get(s.token, s.ts) + warm_after
                ):
                    continue
                counts = per_key.setdefault(s.token, [0, 0])
                counts[0] += int(s.anomalous)
                counts[1] += 1
            if per_key:
                out[gw] = trimmed_rate(
                    {k: (a, n) for k, (a, n) in per_key.items()}, self.settings.drift.trim_vehicles
                )
        return out

    def reference(self, champion: ModelRecord, records: list[Any], before: float) -> Profile | None:
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

    def prepare(self, stream: str) -> Prepared | Waiting:
        """The training data of ``stream``, or what is missing before a run is worth it.

        One order for one set of records, however the source read them (a fleet's frames
        share their seconds, and Kafka interleaves partitions as it goes): the fit samples its
        rows by position, so the same data trains the same model."""
        anon = sorted(self.source.anon_records(stream), key=lambda r: (r.ts, r.event_id))
        if self.settings.train_window_s is not None and anon:
            newest = anon[-1].ts
            anon = [r for r in anon if r.ts >= newest - self.settings.train_window_s]
        if len(anon) < self.settings.min_records:
            return Waiting(
                "waiting for data", f"{len(anon)} of {self.settings.min_records} records"
            )
        records = tdata.records_from_anon(stream, anon, self.source.labels())
        splitter = vehicle_split if self.settings.train.split == "vehicle" else time_split
        hold = splitter(records, self.settings.train.splits)[2]
        labelled = bool(hold.labelled.any() and not hold.labelled.all())
        if not labelled and not self.settings.allow_unlabelled_promotion:
            return Waiting(
                "waiting for labels",
                f"{int(records.labelled.sum())} of {len(records)} records labelled, "
                f"{int(hold.labelled.sum())} in the holdout (the int8 check and the "
                "judging need labelled anomalies there; or allow unlabelled "
                "promotion)",
            )
        episodes = len(set(hold.episodes[hold.labelled].tolist()))
        wanted = self.settings.min_holdout_episodes
        if labelled and episodes < wanted and not self.settings.allow_unlabelled_promotion:
            total = len(set(records.episodes[records.labelled].tolist()))
            return Waiting(
                "waiting for labels",
                f"{episodes} labelled episode(s) in the holdout, at least {wanted} "
                f"needed to judge a model on more than one fault ({total} labelled "
                "in all; episodes still running are labelled once they end)",
            )
        return Prepared(records, labelled)

    def retrain(
        self,
        stream: str,
        trigger: Trigger,
        triggered_by: str,
        reason: str = "",
        prepared: Prepared | None = None,
    ) -> RunRecord:
        """Train a challenger, judge it against the champion, maybe promote; always record."""
        params = {
            "train": _jsonable(asdict(self.settings.train)),
            "rule": asdict(self.settings.rule),
            "train_window_s": self.settings.train_window_s,
            "allow_unlabelled_promotion": self.settings.allow_unlabelled_promotion,
        }
        run_id = self.registry.start_run(stream, trigger, triggered_by, reason, params)
        log.info("run %d: %s retrain of %s (%s)", run_id, trigger, stream, reason)
        try:
            data = self.prepare(stream) if prepared is None else prepared
            if isinstance(data, Waiting):
                return self.registry.finish_run(
                    run_id, decision="failed", decision_reason=f"{data.state}: {data.reason}"
                )
            return self._retrain(run_id, stream, data)
        except NeedsLabelsError as exc:
            return self.registry.finish_run(
                run_id, decision="failed", decision_reason="waiting for labels", error=str(exc)
            )
        except Exception as exc:  # recorded, then the service carries on with the next cycle
            log.exception("run %d failed", run_id)
            return self.registry.finish_run(
                run_id,
                decision="failed",
                decision_reason="training failed",
                error=f"{type(exc).__name__}: {exc}",
            )

    def _retrain(self, run_id: int, stream: str, data: Prepared) -> RunRecord:
        records = data.records
        train = replace(
            self.settings.train, allow_unlabelled=self.settings.allow_unlabelled_promotion
        )
        champion = self.registry.champion(stream)
        trained = train_stream(records, train, parent=champion.version if champion else None)
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
        cp_eval = (
            evaluate(y, champ_scores, champion.threshold)
            if champion is not None and champ_scores is not None
            else None
        )
        if data.labelled_holdout:
            matched = (
                recall_at_fpr(y, champ_scores, ch_eval.false_positive_rate)
                if champ_scores is not None
                else None
            )
            promote, why = decide(ch_eval, cp_eval, self.settings.rule, matched)
        else:
            promote, why = decide_unlabelled(ch_eval, cp_eval)
        metrics: dict[str, Any] = {
            "challenger": ch_eval.to_json(),
            "champion": cp_eval.to_json() if cp_eval else None,
            "challenger_manifest": trained.manifest.metrics,
        }
        chart: dict[str, Any] = {
            "challenger": curves(y, trained.holdout_int8),
            "loss": trained.manifest.metrics["training"]["loss"],
        }
        # The holdout's score distribution (percentiles): the dashboard sets live traffic
        # beside it to show drift in what the model sees.
        chart["score_quantiles"] = {"challenger": score_quantiles(trained.holdout_int8)}
        if champ_scores is not None:
            chart["champion"] = curves(y, champ_scores)
            chart["score_quantiles"]["champion"] = score_quantiles(champ_scores)
        decision = self._decide(stream, challenger, promote, why)
        log.info("run %d: %s %s (%s)", run_id, challenger.version, decision, why)
        return self.registry.finish_run(
            run_id,
            decision=decision,
            decision_reason=why,
            challenger=challenger.version,
            metrics=metrics,
            curves=chart,
            data_range=trained.manifest.data_range,
            records=len(records),
        )

    def _decide(self, stream: str, challenger: ModelRecord, better: bool, why: str) -> Decision:
        """Promote and publish a better challenger, or hold it for an operator's approval."""
        if not better:
            return "kept"
        if self.settings.require_approval:
            return "awaiting approval"
        self.registry.promote(challenger.version, self.settings.actor, why)
        self._publish(stream)
        return "promoted"

    def _publish(self, stream: str) -> None:
        champion = self.registry.champion(stream)
        if self.publisher is not None and champion is not None:
            self.publisher.publish(champion)


def memory_s(stream: str, records: list[Any]) -> float:
    """Seconds after an event during which a key's features still carry it (its first
    alerts then only say its rolling features are filling): from the stream's declaration,
    at its declared interval between events or its devices' typical one in ``records``."""
    decl = declaration_of(stream)
    if not needs_interval(decl):
        return declared_memory_s(decl)
    return tdata.memory_s(tdata.records_from_anon(stream, records, []))


def first_seen(stream: str, records: list[Any]) -> dict[str, float]:
    """When each key (vehicle, card, device) first appears in ``records`` (in event-time
    order)."""
    first: dict[str, float] = {}
    key = tdata.key_of(stream)
    for r in records:
        first.setdefault(key(r), r.ts)
    return first


def decide_unlabelled(challenger: Evaluation, champion: Evaluation | None) -> tuple[bool, str]:
    """With no labelled anomalies (allowed by the operator): promote a challenger that raises
    no more alerts than the champion on the same holdout, presumed normal."""
    note = "no labelled anomalies; unlabelled promotion allowed"
    if champion is None:
        return True, f"no champion to compare with ({note})"
    ours, theirs = challenger.alert_rate, champion.alert_rate
    versus = f"alert rate {100 * ours:.2f}% vs {100 * theirs:.2f}% on the holdout ({note})"
    return (True, versus) if ours <= theirs else (False, f"more alerts: {versus}")


def holdout_fpr(model: ModelRecord) -> float | None:
    """The false-positive rate a model showed on its holdout (None: not recorded)."""
    hold = model.metrics.get("holdout") or {}
    fp, tn = hold.get("fp"), hold.get("tn")
    if isinstance(fp, (int, float)) and isinstance(tn, (int, float)) and fp + tn > 0:
        return float(fp) / float(fp + tn)
    rate = hold.get("alert_rate")
    return float(rate) if isinstance(rate, (int, float)) else None


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


def score_with(
    model: ModelRecord, x: NDArray[np.float32], features: list[str]
) -> NDArray[np.float32] | None:
    """A registered model's int8 scores on raw feature rows (None if it takes other features)."""
    from cloud.trainer import autoencoder as ae

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


def renew_releases(publisher: Publishes | None, registry: Registry) -> None:
    """Gateways refuse expired releases: sign a fresh one of each champion in time."""
    if publisher is None:
        return
    for stream, version in publisher.refresh(registry).items():
        log.info("%s: published a new release of %s", stream, version)
