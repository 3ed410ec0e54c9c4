"""The model agent: cloud.models in, the scorer's active model switched (or not), status out.

For each model message (keyed by stream; the compacted topic holds the latest champion):

1. ``received``: unpack into a fresh directory;
2. check the signed release (shared/releases.py): a trusted key id, this gateway's fleet, not
   expired, a release number above the highest accepted, the files it names; then the
   model's own signature, the stream, the feature spec and the feature list (the scorer's own
   loading code; for a declared stream, the digest and feature list of this gateway's
   declaration) -> ``rejected`` with the reason on failure;
3. ``shadowing``: score the last ``shadow_window`` anon records of the stream with the new and
   the running model; refuse a model whose alert rate jumps or whose scores are not finite;
4. ``active``: install it and flip the scorer's symlink (the scorer swaps between two
   transactions, so no event is dropped or scored twice); the previous model is kept;
5. watch the live ``scores.<stream>``: if the new model's alert rate jumps, or the scorer
   never scores with it, switch back and report ``rolled_back``.

A message keyed by anything but a stream this gateway scores is refused unread. A champion
that leaves the topic (a tombstone, or size retention after a flood: ``shared/topics.py``)
would leave a gateway installed from now on with none: the agent reports ``missing`` for that
stream (and ``fleetsentry_agent_champion_missing``), keeps running the model it has, and looks
again at start and every ``[agent] champion_check_s``.

A refused model never touches the active one: the running model keeps scoring throughout.
"""

from __future__ import annotations

import logging
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from confluent_kafka import Consumer, Message, Producer, TopicPartition

from edge.agent.errors import AgentError, Rejected
from edge.agent.judge import Limits, Verdict, Watch, WatchLimits, check_watch, judge
from edge.agent.store import ModelStore
from edge.config import EdgeConfig
from edge.metrics import CHAMPION_MISSING
from edge.scorer.errors import ScorerError
from edge.scorer.features import FeatureRows
from edge.scorer.model_runner import Model, baseline_dir, load_model
from shared import model_bundle, releases, streams, topics
from shared.contracts import ModelStatus, Score, decode, encode
from shared.errors import ContractError
from shared.kafka_config import Target, client_config
from shared.kafka_read import read_to_end, records, usable, watermarks
from shared.signing import KeyFileError

log = logging.getLogger("agent")


@dataclass(frozen=True)
class Outcome:
    """What the agent did with one model message (returned for tests and logs)."""

    stream: str
    version: str
    state: str  # "rejected" | "active" | "skipped"
    reason: str
    verdict: Verdict | None = None


class ModelAgent:
    """Constructing it does no I/O: ``start()`` connects, ``step()`` handles what arrived."""

    def __init__(self, config: EdgeConfig, clock: Any = time.time) -> None:
        self.config = config
        self.settings = config.agent
        self.store = ModelStore(config.models_dir)
        self.public_keys = config.scorer.trusted_keys()
        self.trusted: releases.TrustedKeys | None = None
        self.limits = Limits(
            self.settings.max_alert_rate_ratio, self.settings.max_alert_rate_increase
        )
        self.watch_limits = WatchLimits(
            self.limits,
            self.settings.watch_min_events,
            self.settings.activation_timeout_s,
            self.settings.watch_s,
        )
        self.watches: dict[str, tuple[Watch, Consumer]] = {}
        self.clock = clock
        self.statuses: list[ModelStatus] = []  # what this process reported, newest last
        self._consumer: Consumer | None = None
        self._producer: Producer | None = None
        self.streams = tuple(s.name for s in streams.all_streams())
        # Streams whose champion is not in cloud.models, as last reported.
        self.missing: dict[str, bool] = {}
        self._next_champion_check = 0.0

    @property
    def group_id(self) -> str:
        return f"{self.config.edge_id}-agent"

    def start(self) -> ModelAgent:
        self.store.start()
        try:
            self.trusted = releases.TrustedKeys.load(self.public_keys)
        except (releases.ReleaseError, KeyFileError) as exc:
            raise AgentError(f"cannot load the trusted model-signing keys: {exc}") from None
        kafka = self.config.kafka
        self._producer = Producer(
            client_config(kafka, {"enable.idempotence": True, "acks": "all", "linger.ms": 0})
        )
        self._consumer = Consumer(
            client_config(
                kafka,
                {
                    "group.id": self.group_id,
                    "auto.offset.reset": "earliest",
                    "enable.auto.commit": False,
                    "isolation.level": "read_committed",
                    "fetch.message.max.bytes": topics.MODEL_MESSAGE_BYTES + 64 * 1024,
                    "max.partition.fetch.bytes": topics.MODEL_MESSAGE_BYTES + 64 * 1024,
                },
            )
        )
        self._consumer.subscribe([topics.CLOUD_MODELS])
        self.check_champions()
        return self

    def close(self) -> None:
        for _w, c in self.watches.values():
            c.close()
        self.watches.clear()
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None
        if self._producer is not None:
            self._producer.flush(10)
            self._producer = None

    # --- the loop ----------------------------------------------------------------------------

    def step(self, timeout: float = 0.5) -> Outcome | None:
        """Handle at most one model message, then look at the live watches."""
        assert self._consumer is not None, "start() first"
        outcome = None
        msg = self._consumer.poll(timeout)
        if msg is None or not usable(msg, AgentError, "consuming models"):
            pass
        elif msg.value() is None:
            self._withdrawn(msg.key())
            self._consumer.commit(message=msg, asynchronous=False)
        else:
            try:
                outcome = self.handle(msg.key(), msg.value() or b"")
            except OSError:
                # Not handled (the disk is full or failing): read it again on the next step.
                self._consumer.seek(
                    TopicPartition(
                        msg.topic() or topics.CLOUD_MODELS, msg.partition() or 0, msg.offset() or 0
                    )
                )
                raise
            if outcome.stream in self.streams:  # the topic holds a champion for it
                self._set_present(outcome.stream)
            self._consumer.commit(message=msg, asynchronous=False)
        self.check_watches()
        if time.monotonic() >= self._next_champion_check:
            self.check_champions()
        return outcome

    def handle(self, key: bytes | None, value: bytes) -> Outcome:
        """Take one model message through verify -> shadow -> activate, reporting each step."""
        stream = key.decode(errors="replace") if key else ""
        version = "unknown"
        if stream not in self.streams:
            # Not reported to model-status: invented keys could flood it as they could the
            # topic. Logged, and nothing is written.
            reason = (
                f"not a stream this gateway scores (it scores {', '.join(self.streams)}): "
                f"the message was not read"
            )
            log.warning("cloud.models: refused a message keyed %r: %s", stream[:100], reason)
            return Outcome(stream[:100], version, "rejected", reason)
        try:
            bundle = model_bundle.unpack(value)
            version = bundle.version
        except model_bundle.BundleError as exc:
            self.report(stream, version, "received")
            return self._reject(stream, version, str(exc))
        self.report(stream, version, "received")
        active = version == self.store.active_version(stream)
        try:
            release = self._check_release(bundle, stream, active)
        except Rejected as exc:
            return self._reject(stream, version, str(exc))
        if active:
            self.store.accept_release(stream, release.number)
            return Outcome(stream, version, "skipped", "already active")
        refused = self.store.refused(stream, version)
        if refused:
            return self._reject(stream, version, f"rolled back before: {refused}")
        staged = self.store.staging_dir(stream)
        try:
            model = self._verify(bundle, stream, staged)
            verdict = self._shadow(model)
            if not verdict.accept:
                raise Rejected(f"shadow scoring: {verdict.reason}")
        except Rejected as exc:
            shutil.rmtree(staged, ignore_errors=True)
            return self._reject(stream, version, str(exc))
        except OSError:
            shutil.rmtree(staged, ignore_errors=True)  # a half-written copy frees its space
            raise
        return self._activate(model, staged, verdict, release)

    def _check_release(
        self, bundle: model_bundle.ModelBundle, stream: str, active: bool
    ) -> releases.Release:
        if self.trusted is None:
            self.trusted = releases.TrustedKeys.load(self.public_keys)
        if not bundle.release:
            raise Rejected(
                "the message carries no signed release (only released models run on a gateway)"
            )
        try:
            release = releases.verify(
                bundle.release, self.trusted, self.settings.fleet, self.clock()
            )
            if (release.stream, release.version) != (stream, bundle.version):
                raise Rejected(
                    f"the release names {release.stream} {release.version}, the "
                    f"message {stream} {bundle.version}"
                )
            accepted = self.store.accepted_release(stream)
            if release.number < accepted or (release.number == accepted and not active):
                raise Rejected(
                    f"release {release.number} is not newer than release "
                    f"{accepted}, the newest this gateway accepted for {stream} "
                    f"(a replayed or out-of-date model)"
                )
            releases.check_files(release, bundle.files)
        except releases.ReleaseError as exc:
            raise Rejected(str(exc)) from None
        return release

    def _verify(self, bundle: model_bundle.ModelBundle, stream: str, staged: Path) -> Model:
        if stream not in {s.name for s in streams.all_streams()}:
            raise Rejected(f"this gateway scores no stream {stream!r}")
        model_bundle.write_files(bundle, staged)
        try:
            model = load_model(staged, stream, self.public_keys)
        except ScorerError as exc:  # signature, stream, feature spec, features, LiteRT
            raise Rejected(str(exc).replace(f"{staged}: ", "")) from None
        if model.version != bundle.version:
            raise Rejected(
                f"the signed manifest names version {model.version}, the message {bundle.version}"
            )
        return model

    def _shadow(self, candidate: Model) -> Verdict:
        stream = candidate.stream
        self.report(stream, candidate.version, "shadowing")
        running = self._running_model(stream)
        records = recent_records(self.config.kafka, stream, self.settings.shadow_window)
        x = None
        if records and streams.get(stream).declaration is None:
            from shared.features import feature_matrix

            x = feature_matrix(stream, records)
        elif records:  # a declared stream: the declaration's features, as the scorer reads them
            x = FeatureRows(candidate.features)(records)
        if x is None:
            return judge(np.zeros(0), candidate.threshold, None, None, self.limits)
        cand_scores, _ = candidate.scorer.score_batch(x)
        if running is None:
            return judge(cand_scores, candidate.threshold, None, None, self.limits)
        run_scores, _ = running.scorer.score_batch(x)
        return judge(cand_scores, candidate.threshold, run_scores, running.threshold, self.limits)

    def _running_model(self, stream: str) -> Model | None:
        path = self.store.active_dir(stream)
        if path is None and streams.get(stream).declaration is not None:
            return None  # no baseline ships for a declared stream: nothing to compare with
        path = path or baseline_dir(stream)
        try:
            return load_model(path, stream, self.public_keys)
        except (ScorerError, OSError) as exc:
            log.warning(
                "%s: running model at %s cannot be loaded for comparison: %s", stream, path, exc
            )
            return None

    def _activate(
        self, model: Model, staged: Path, verdict: Verdict, release: releases.Release
    ) -> Outcome:
        stream, version = model.stream, model.version
        installed = self.store.install(staged, stream, version)
        self.store.activate(stream, installed, version)
        self.store.accept_release(stream, release.number)
        self.store.prune(stream, self.settings.keep_versions)
        self.report(stream, version, "active", verdict.reason)
        expected = max(verdict.candidate_rate or 0.0, verdict.running_rate or 0.0)
        self._start_watch(Watch(stream, version, self.clock(), expected))
        return Outcome(stream, version, "active", verdict.reason, verdict)

    def _reject(self, stream: str, version: str, reason: str) -> Outcome:
        log.warning("%s %s rejected: %s", stream, version, reason)
        self.report(stream, version, "rejected", reason)
        return Outcome(stream, version, "rejected", reason)

    # --- after the switch --------------------------------------------------------------------

    def _start_watch(self, watch: Watch) -> None:
        old = self.watches.pop(watch.stream, None)
        if old is not None:
            old[1].close()
        topic = streams.get(watch.stream).scores_topic
        c = _reader(self.config.kafka, f"{self.group_id}-watch-{uuid.uuid4().hex[:8]}")
        meta = c.list_topics(topic, timeout=10).topics.get(topic)
        ends = watermarks(c, topic, meta.partitions if meta is not None else {}, timeout=10)
        c.assign([TopicPartition(topic, p, high) for p, (_low, high) in ends.items()])
        self.watches[watch.stream] = (watch, c)

    def check_watches(self) -> None:
        for stream in list(self.watches):
            watch, consumer = self.watches[stream]
            for msg in consumer.consume(5000, 0):
                if msg.error() or msg.value() is None:
                    continue
                try:
                    score = decode(Score, msg.value() or b"")
                except ContractError:
                    continue
                watch.observe(score.model_version, score.anomalous)
            verdict = check_watch(watch, self.clock(), self.watch_limits)
            if verdict is None:
                continue
            action, reason = verdict
            if action == "rollback":
                # First: a rollback that fails to write keeps the watch, to be tried again.
                self.rollback(stream, watch.version, reason)
            else:
                log.info("%s %s: watch over: %s", stream, watch.version, reason)
            consumer.close()
            del self.watches[stream]

    def rollback(self, stream: str, version: str, reason: str) -> None:
        """Switch back to the model that ran before ``version`` and never take it again."""
        prev_version, prev_path = self.store.previous(stream)
        target = prev_path if prev_path is not None and prev_path.is_dir() else None
        self.store.activate(stream, target, prev_version)
        self.store.refuse(stream, version, reason)
        back_to = prev_version or self._fallback(stream)
        log.warning("%s %s rolled back to %s: %s", stream, version, back_to, reason)
        self.report(stream, version, "rolled_back", f"{reason}; back to {back_to}")

    # --- champions in the topic --------------------------------------------------------------

    def _withdrawn(self, key: bytes | None) -> None:
        stream = (key or b"").decode(errors="replace")
        if stream in self.streams:
            self._set_missing(stream, "withdrawn (a tombstone in cloud.models)")

    def check_champions(self) -> dict[str, bool]:
        """Read cloud.models to its end: is there a champion for every stream? Reports each
        stream that has none (once, until one arrives); returns stream -> missing."""
        self._next_champion_check = time.monotonic() + self.settings.champion_check_s
        try:
            latest = has_value_by_key(self.config.kafka, topics.CLOUD_MODELS)
        except AgentError as exc:
            log.warning("could not read %s to look for champions: %s", topics.CLOUD_MODELS, exc)
            return dict(self.missing)
        for stream in self.streams:
            if stream not in latest:
                self._set_missing(
                    stream,
                    "no champion in cloud.models (never published, or "
                    "deleted by the topic's size retention)",
                )
            elif not latest[stream]:
                self._set_missing(stream, "withdrawn (a tombstone in cloud.models)")
            else:
                self._set_present(stream)
        return dict(self.missing)

    def _set_missing(self, stream: str, reason: str) -> None:
        CHAMPION_MISSING.labels(stream=stream).set(1)
        if self.missing.get(stream):
            return
        self.missing[stream] = True
        running = self.store.active_version(stream)
        log.warning(
            "%s: %s; a gateway installed now would have no %s model; this one keeps running %s",
            stream,
            reason,
            stream,
            running or self._fallback(stream),
        )
        self.report(stream, running or "baseline", "missing", reason)

    def _set_present(self, stream: str) -> None:
        CHAMPION_MISSING.labels(stream=stream).set(0)
        if self.missing.get(stream):
            log.info("%s: a champion is in cloud.models again", stream)
        self.missing[stream] = False

    @staticmethod
    def _fallback(stream: str) -> str:
        """What runs for ``stream`` when no installed model does."""
        if streams.get(stream).declaration is None:
            return "the shipped baseline"
        return "no model (its records pass the scorer unscored)"

    # --- status ------------------------------------------------------------------------------

    def report(self, stream: str, version: str, state: str, reason: str = "") -> None:
        status = ModelStatus(
            edge_id=self.config.edge_id,
            stream=stream,
            version=version,
            state=state,  # type: ignore[arg-type]
            reason=reason[:2000],
            ts=time.time(),
        )
        self.statuses.append(status)
        if self._producer is None:
            return
        self._producer.produce(
            topics.MODEL_STATUS,
            key=f"{self.config.edge_id}/{stream}".encode(),
            value=encode(status),
        )
        if self._producer.flush(10) > 0:
            log.warning("model-status not acknowledged within 10 s; will retry in background")


def _reader(kafka: Target, group: str) -> Consumer:
    return Consumer(
        client_config(
            kafka,
            {
                "group.id": group,
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                "isolation.level": "read_committed",
            },
        )
    )


def has_value_by_key(kafka: Target, topic: str, timeout_s: float = 30.0) -> dict[str, bool]:
    """Each key of ``topic``, read to its end: does its latest committed record hold a value
    (False: a tombstone)? The values themselves are not kept."""
    latest: dict[str, bool] = {}

    def handle(msg: Message) -> None:
        latest[(msg.key() or b"").decode(errors="replace")] = msg.value() is not None

    read_to_end(
        kafka,
        topic,
        handle,
        error=AgentError,
        timeout_s=timeout_s,
        extra={"fetch.message.max.bytes": topics.MODEL_MESSAGE_BYTES + 64 * 1024},
    )
    return latest


def recent_records(kafka: Target, stream: str, n: int, timeout_s: float = 30.0) -> list[Any]:
    """The last ~``n`` committed anon records of ``stream`` (split across its partitions)."""
    if n <= 0:
        return []
    spec = streams.get(stream)
    topic, kind = spec.anon_topic, spec.anon_event
    out: list[Any] = []
    for msg in records(
        kafka,
        topic,
        error=AgentError,
        timeout_s=timeout_s,
        last=n,
        last_of_all=True,
        partial=True,
        missing_ok=True,
    ):
        try:
            out.append(decode(kind, msg.value() or b""))
        except ContractError:
            continue  # the scorer dead-letters these; they say nothing about a model
    return out[-n:]
