"""The scorer service: anon.* -> scores.*, alerts, and payment decisions, exactly once.

It reads ``anon.<stream>`` of every registered stream: the built-in telemetry and payments,
and each stream declared in ``[streams] dir`` (docs/streams.md). A declared stream is scored
once its model is in ``<models_dir>/<stream>`` (where the agent installs it; there is no
shipped baseline for it), its alerts formed as its declaration says; until then its records
pass unscored, counted, and their offsets are committed like any other.

Each micro-batch is one Kafka transaction holding its scores, alerts, episode-state records
and the consumed offsets, so a crash at any point either publishes all of a batch or none of
it, and the restarted scorer carries on from the last committed batch with the same episodes.
A batch's payment decisions go to the vehicles first, and the transaction commits only once
the MQTT broker has acknowledged every one of them: a committed batch never leaves a decision
behind, and an uncommitted one is scored, and its decisions sent, again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from operator import attrgetter
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, Message, Producer, TopicPartition

from edge.config import EdgeConfig, ScorerSettings
from edge.dlq import DeadLetters
from edge.episode_rules import episode_rules
from edge.scorer.decisions import decide
from edge.scorer.errors import ScorerError
from edge.scorer.explain import top_features
from edge.scorer.features import FeatureRows
from edge.scorer.model_runner import Model, ModelHolder, baseline_dir, load_model
from edge.transactions import (
    AssignmentGuard,
    KafkaLoss,
    Transactions,
    Watchdog,
    offsets_after,
)
from shared import topics
from shared.baselines import shipped
from shared.contracts import (
    Alert,
    Contribution,
    Decision,
    Score,
    decode,
    encode,
)
from shared.episodes import EpisodeTracker, single_event_alert
from shared.errors import ContractError
from shared.kafka_config import Target, client_config
from shared.kafka_read import FETCH_WAIT_MAX_MS, read_to_end, usable
from shared.kafka_write import produce
from shared.streams import BARE_EPISODE_KEYS, StreamSpec, all_streams

log = logging.getLogger("scorer")

VinLookup = Callable[[str], "str | None"]
DecisionSink = Callable[[str, Decision], None]
# Waits up to the given seconds for the broker to acknowledge every decision sent so far and
# returns how many it has not (DecisionPublisher.wait_acknowledged).
DecisionConfirm = Callable[[float], int]

# How long a batch waits for its decisions' PUBACKs before it is given up (not committed: the
# process exits and the restarted scorer scores it again). On loopback a PUBACK takes about a
# millisecond; the bound covers a Mosquitto restart and paho's reconnect (1 s, then doubling).
DECISION_ACK_TIMEOUT_S = 30.0


def episode_owner(group_id: str, stream: str) -> str:
    """The owner part of a stream's keys in scorer.episodes (``<owner>/<token>``):
    ``<group id>@<stream>`` (a group id holds no ``@`` or ``/``), so restoring splits a key at
    its first ``/`` and finds the stream without reading the token. The bare group id is the
    owner older scorers wrote one stream's state under (``streams.BARE_EPISODE_KEYS``)."""
    return f"{group_id}@{stream}"


def token_of(spec: StreamSpec) -> Callable[[Any], str]:
    """The token a stream's scores and alerts are keyed by (that of its anon records)."""
    return attrgetter(spec.anon_key)


def model_dir_for(settings: ScorerSettings, stream: str) -> Path:
    if settings.models_dir is not None and (settings.models_dir / stream).is_dir():
        return settings.models_dir / stream
    return baseline_dir(stream)


def load_models(settings: ScorerSettings) -> dict[str, ModelHolder]:
    """The signed model of every stream the package ships a baseline for (the configured
    directory's, else the baseline): those are scored from the first minute. Other streams
    are scored once their model appears (see ``reload_models``)."""
    return {
        s: ModelHolder(
            load_model(
                model_dir_for(settings, s), s, settings.trusted_keys(), max_batch=settings.max_batch
            )
        )
        for s in shipped()
    }


@dataclass
class BatchResult:
    """What one batch produced (counts, for metrics and tests)."""

    events: dict[str, int] = field(default_factory=dict)
    anomalous: dict[str, int] = field(default_factory=dict)
    alerts: int = 0
    decisions: int = 0
    rejected: int = 0
    # Records of declared streams that have no model yet: passed through unscored.
    unscored: dict[str, int] = field(default_factory=dict)


class Out:
    """Records of one transaction, produced in order once scoring is done."""

    def __init__(self) -> None:
        self.records: list[tuple[str, bytes | None, bytes | None]] = []

    def add(self, topic: str, key: str | None, value: bytes | None) -> None:
        self.records.append((topic, key.encode() if key is not None else None, value))


class ScorerService:
    """Constructing it does no I/O: ``start()`` connects, ``step()`` runs one batch."""

    def __init__(
        self,
        config: EdgeConfig,
        holders: dict[str, ModelHolder] | None = None,
        vin_lookup: VinLookup | None = None,
        send_decision: DecisionSink | None = None,
        instance: int = 0,
        confirm_decisions: DecisionConfirm | None = None,
    ) -> None:
        self.config = config
        self.settings = config.scorer
        self.holders = holders
        self.vin_lookup = vin_lookup
        self.send_decision = send_decision
        self.confirm_decisions = confirm_decisions
        self.decision_ack_timeout_s = DECISION_ACK_TIMEOUT_S
        self.instance = instance
        # Every registered stream: the built-in ones and those declared in [streams] dir.
        self.specs: dict[str, StreamSpec] = {s.name: s for s in all_streams()}
        self._input = {spec.anon_topic: name for name, spec in self.specs.items()}
        self._tokens = {name: token_of(spec) for name, spec in self.specs.items()}
        # The episode tracker of each stream whose alerts are episodes (payments and declared
        # `event` streams raise one alert per anomalous event).
        self.trackers: dict[str, EpisodeTracker] = {
            name: EpisodeTracker(name, rule) for name, rule in episode_rules(self.settings).items()
        }
        # Tokens whose state an older scorer left under the bare group id: their old keys are
        # deleted at the next commit.
        self._bare: set[str] = set()
        # Episodes are closed by each vehicle's own events and, for a vehicle gone silent, by
        # wall time: the trackers are swept at least this often even when nothing arrives.
        self.sweep_every_s = min(1.0, *(t.settings.quiet_gap_s / 4 for t in self.trackers.values()))
        self._next_sweep = 0.0
        self._clock: Callable[[], float] = time.time
        self._consumer: Consumer | None = None
        self._producer: Producer | None = None
        self._watchdog = Watchdog("scorer")
        self._loss = KafkaLoss("scorer")
        self._letters: DeadLetters | None = None
        self._label: Callable[[str], str] = str
        # Declared streams explain alerts with their declaration's labels.
        self._labels: dict[str, Callable[[str], str]] = {
            name: spec.declaration.label
            for name, spec in self.specs.items()
            if spec.declaration is not None
        }
        self._rows: dict[tuple[str, ...], FeatureRows] = {}
        self._closers: list[Callable[[], None]] = []
        self.decisions_unrouted = 0
        # The model directory each stream's model came from (None: a declared stream that has
        # none); see reload_models().
        self._loaded: dict[str, Path | None] = {}
        self._next_reload = 0.0

    # --- lifecycle ---------------------------------------------------------------------------

    @property
    def group_id(self) -> str:
        return f"{self.config.edge_id}-scorer"

    @property
    def transactional_id(self) -> str:
        return f"{self.config.edge_id}-scorer-{self.instance}"

    def prepare(self) -> None:
        """Load the feature code and the models (no network): enough to score in-process."""
        from shared.features import feature_label

        self._label = feature_label
        if self.holders is None:
            self.holders = load_models(self.settings)
            self._loaded = {
                s: Path(h.current.path or "").resolve() for s, h in self.holders.items()
            }
        else:  # models handed in: only a later switch by the agent replaces them
            self._loaded = {s: self._model_dir(s) for s in self.holders}
        for stream, h in self.holders.items():
            log.info("%s model %s (threshold %.4g)", stream, h.current.version, h.current.threshold)
        for stream in self.declared():
            if stream not in self._loaded:
                self._refresh(stream)

    def start(self) -> None:
        self.prepare()
        self._letters = DeadLetters.load(self.config)
        kafka = self.config.kafka
        self._producer = Producer(
            client_config(
                kafka,
                {
                    "transactional.id": self.transactional_id,
                    "error_cb": self._loss.on_error,
                    "enable.idempotence": True,
                    "acks": "all",
                    "linger.ms": 2,
                    "compression.type": "lz4",
                    "transaction.timeout.ms": 60_000,
                    "queue.buffering.max.messages": 1_000_000,
                },
            )
        )
        # Fences any earlier instance with this id and aborts its open transaction.
        self._watchdog.call("init_transactions", 30, self._producer.init_transactions)
        self._restore_episodes(kafka)
        self._consumer = Consumer(
            client_config(
                kafka,
                {
                    "group.id": self.group_id,
                    "isolation.level": "read_committed",
                    "enable.auto.commit": False,
                    "auto.offset.reset": "earliest",
                    "fetch.wait.max.ms": FETCH_WAIT_MAX_MS,
                    "client.id": f"{self.transactional_id}",
                    "error_cb": self._loss.on_error,
                    # Static membership: a scorer started again (after a crash, a kill, an
                    # upgrade) takes its partitions back at once instead of waiting for the
                    # dead one's session to expire, with payments undecided meanwhile.
                    "group.instance.id": self.transactional_id,
                    "session.timeout.ms": self.settings.session_timeout_ms,
                },
            )
        )
        self._consumer.subscribe(list(self._input), on_assign=self._assigned)
        self._txn = Transactions(
            "scorer",
            self._producer,
            self._consumer,
            self._watchdog,
            self._rewind,
            ScorerError,
            loss=self._loss,
        )

    def declared(self) -> list[str]:
        """The declared (not built-in) streams this scorer reads."""
        return [name for name, spec in self.specs.items() if spec.declaration is not None]

    def _assigned(self, _consumer: Consumer, parts: list[TopicPartition]) -> None:
        log.info(
            "scoring %d partitions of %s as %s",
            len(parts),
            ", ".join(self._input),
            self.transactional_id,
        )

    def _restore_episodes(self, kafka: Target) -> None:
        """Replay the compacted episode topic (read_committed) into the trackers."""
        now, ours = self._clock(), [0]

        def handle(msg: Message) -> None:
            ours[0] += self.restore_episode(msg.key(), msg.value(), now)

        read_to_end(
            kafka,
            topics.SCORER_EPISODES,
            handle,
            error=ScorerError,
            missing_hint="run `fleetsentry infra up` (it creates the edge topics)",
        )
        for tracker in self.trackers.values():
            tracker.dirty.clear()
        log.info("restored %d episode records, %d open episodes", ours[0], self.open_episodes())

    def _rewind(self) -> None:
        """After an aborted batch: the episodes as the last commit left them."""
        for tracker in self.trackers.values():
            tracker.states.clear()
            tracker.dirty.clear()
        self._bare.clear()
        self._restore_episodes(self.config.kafka)

    def restore_episode(self, key: bytes | None, value: bytes | None, now: float) -> bool:
        """Apply one scorer.episodes record; whether it was this scorer's."""
        owner, _, token = (key or b"").decode().partition("/")
        if owner == self.group_id:
            return self._restore_bare(token, value, now)
        # Another scorer's (e.g. a shadow's) state is not ours, nor is that of a stream no
        # longer declared (or whose alerts are no longer episodes).
        for stream, tracker in self.trackers.items():
            if owner == episode_owner(self.group_id, stream):
                tracker.restore(token, value, now)
                return True
        return False

    def _restore_bare(self, token: str, value: bytes | None, now: float) -> bool:
        """A record an older scorer wrote under the bare group id. Its state is carried over
        and written under the stream's key at the next commit, beside a tombstone for the old
        key (``_sweep``). A tombstone of an old key only ends that: it comes after the state
        the stream's key already holds."""
        tracker = self.trackers.get(BARE_EPISODE_KEYS)
        if value is None:
            self._bare.discard(token)
            return tracker is not None
        self._bare.add(token)
        if tracker is None:
            return False
        tracker.restore(token, value, now)
        tracker.dirty.add(token)
        return True

    def open_episodes(self) -> int:
        return sum(t.open_count() for t in self.trackers.values())

    def close(self) -> None:
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None
        if self._producer is not None:
            # Nothing after the last commit needs Kafka's word (see Enricher.close).
            self._producer.flush(0 if self._loss.lost else 10)
            self._producer = None
        for fn in reversed(self._closers):
            fn()
        self._closers.clear()

    # --- the batch loop ------------------------------------------------------------------------

    def step(self) -> BatchResult | None:
        """Score one micro-batch in one transaction; None when nothing arrived."""
        assert self._consumer is not None and self._producer is not None, "start() first"
        self.reload_models()
        msgs = self._consumer.consume(self.settings.max_batch, self.settings.max_wait_ms / 1000)
        msgs = [m for m in msgs if usable(m, ScorerError, "consuming anon")]
        if not msgs:
            return self._idle_sweep()
        out, result = Out(), BatchResult()
        by_stream: dict[str, list[Message]] = {}
        for m in msgs:
            by_stream.setdefault(self._input[str(m.topic())], []).append(m)
        for stream, batch in by_stream.items():
            records = self.decode_batch(stream, [m.value() for m in batch], out, result)
            self.score_records(stream, records, out, result)
        self._sweep(out, result)
        self._confirm(result)
        return result if self._commit(out, msgs) else None

    def _confirm(self, result: BatchResult) -> None:
        """Commit nothing before the broker holds every decision of the batch."""
        if self.confirm_decisions is None or not result.decisions:
            return
        left = self.confirm_decisions(self.decision_ack_timeout_s)
        if left:
            mqtt = self.config.mqtt
            raise ScorerError(
                f"the MQTT broker at {mqtt.host}:{mqtt.port} did not acknowledge {left} "
                f"decisions within {self.decision_ack_timeout_s:.0f}s; the batch is not "
                f"committed and is scored again on restart. Check that Mosquitto is running"
            )

    def _sweep(self, out: Out, result: BatchResult) -> None:
        """Close silent vehicles' episodes (at most every sweep_every_s) and write the state."""
        now = self._clock()
        sweep = now >= self._next_sweep
        if sweep:
            self._next_sweep = now + self.sweep_every_s
        for stream, tracker in self.trackers.items():
            if sweep:
                for alert in tracker.sweep(now):
                    out.add(topics.ALERTS, alert.token, encode(alert))
                    result.alerts += 1
            owner = episode_owner(self.group_id, stream)
            for token, state in tracker.drain_dirty().items():
                out.add(topics.SCORER_EPISODES, f"{owner}/{token}", state)
        for token in self._bare:
            out.add(topics.SCORER_EPISODES, f"{self.group_id}/{token}", None)
        self._bare.clear()

    def _idle_sweep(self) -> BatchResult | None:
        """Nothing arrived: still close the episodes of vehicles gone silent, in a transaction."""
        out, result = Out(), BatchResult()
        self._sweep(out, result)
        if not out.records:
            return None
        return result if self._commit(out, []) else None

    def _active_dir(self, stream: str) -> Path:
        link = self.config.models_dir / stream  # the agent's symlink (edge/agent/store.py)
        return (link if link.is_dir() else model_dir_for(self.settings, stream)).resolve()

    def _model_dir(self, stream: str) -> Path | None:
        """Where the stream's model is now; None for a declared stream that has none (no
        baseline ships for a declared stream: its model is the one the agent installed)."""
        spec = self.specs.get(stream)
        if spec is None or spec.declaration is None:
            return self._active_dir(stream)
        link = self.config.models_dir / stream
        return link.resolve() if link.is_dir() else None

    def reload_models(self, every_s: float = 1.0) -> list[str]:
        """Between transactions: take the model the agent switched to (at most every_s).

        A model that fails to load is logged and the running one kept; the agent sees the
        scores still carry the old version and rolls the switch back. A declared stream
        starts being scored when its first model appears, and passes unscored again if its
        model is taken away (the agent rolling back its first model).
        """
        now = time.monotonic()
        if self.holders is None or now < self._next_reload:
            return []
        self._next_reload = now + every_s
        streams = list(self.holders) + [s for s in self.declared() if s not in self.holders]
        return [stream for stream in streams if self._refresh(stream)]

    def _refresh(self, stream: str) -> bool:
        """Load the stream's model when its directory changed; whether the model changed."""
        assert self.holders is not None
        target = self._model_dir(stream)
        if stream in self._loaded and self._loaded[stream] == target:
            return False
        self._loaded[stream] = target
        holder = self.holders.get(stream)
        if target is None:  # a declared stream without a model
            log.warning(
                "%s: no model in %s: its records pass unscored (counted in "
                "fleetsentry_scorer_unscored_total) until the agent installs one",
                stream,
                self.config.models_dir / stream,
            )
            if holder is None:
                return False
            del self.holders[stream]
            log.warning("%s: model %s removed; scoring stops", stream, holder.current.version)
            return True
        try:
            model = load_model(
                target, stream, self.settings.trusted_keys(), max_batch=self.settings.max_batch
            )
            old = holder.swap(model) if holder is not None else None
        except (ScorerError, OSError) as exc:
            log.error("%s: cannot switch to the model in %s: %s", stream, target, exc)
            return False
        if old is None:
            self.holders[stream] = ModelHolder(model)
            log.info(
                "%s: scoring with model %s (threshold %.4g)", stream, model.version, model.threshold
            )
        else:
            log.info("%s: switched model %s -> %s", stream, old.version, model.version)
        return True

    def _commit(self, out: Out, msgs: list[Message]) -> bool:
        """The batch's records and input offsets in one transaction; False when it was
        aborted (episodes and positions are then back at the last commit, and the batch is
        consumed and scored again)."""
        assert self._producer is not None
        p = self._producer
        ends: dict[tuple[str, int], int] = {}
        for m in msgs:
            ends[(str(m.topic()), int(m.partition() or 0))] = int(m.offset() or 0)

        def work() -> tuple[bool, list[TopicPartition]]:
            for topic, key, value in out.records:
                produce(p, topic, value, key)
            return True, offsets_after(ends)  # none for an idle sweep

        return self._txn.run(work) is not None

    def matrix(self, model: Model, records: list[Any]) -> Any:
        """The model's input rows for ``records`` (row builder cached per feature list)."""
        names = tuple(model.features)
        rows = self._rows.get(names)
        if rows is None:
            rows = self._rows[names] = FeatureRows(names)
        return rows(records)

    def decode_batch(
        self, stream: str, values: Sequence[bytes | None], out: Out, result: BatchResult
    ) -> list[Any]:
        """Anon records of one stream; a record that breaks its contract goes to the DLQ."""
        kind, records = self.specs[stream].anon_event, []
        for value in values:
            try:
                records.append(decode(kind, value or b""))
            except ContractError as exc:
                result.rejected += 1
                if self._letters is None:  # scoring in-process, without start()
                    self._letters = DeadLetters.load(self.config)
                out.add(
                    topics.DLQ_INGEST,
                    None,
                    self._letters.letter(
                        f"anon.{stream}", "contract", str(exc), time.time(), value or b""
                    ),
                )
        return records

    def score_records(self, stream: str, records: list[Any], out: Out, result: BatchResult) -> None:
        """Score, explain and decide: everything of a batch but the Kafka transaction.

        A declared stream without a model passes through: its records are counted in
        ``result.unscored`` and nothing is written for them.
        """
        assert self.holders is not None, "prepare() first"
        if not records:
            return
        spec = self.specs[stream]
        if spec.declaration is not None and stream not in self.holders:
            result.unscored[stream] = result.unscored.get(stream, 0) + len(records)
            return
        model: Model = self.holders[stream].current  # one model for the whole batch
        scores, errors = model.scorer.score_batch(self.matrix(model, records))
        thr, version, names = model.threshold, model.version, model.features
        scores_topic = spec.scores_topic
        tracker = self.trackers.get(stream)
        label = self._labels.get(stream, self._label)
        token_of_record = self._tokens[stream]
        n_anom, now = 0, self._clock()
        for i, rec in enumerate(records):
            score = float(scores[i])
            anomalous = score > thr
            token = token_of_record(rec)
            n_anom += anomalous
            out.add(
                scores_topic,
                token,
                encode(
                    Score(
                        event_id=rec.event_id,
                        ts=rec.ts,
                        stream=stream,
                        token=token,
                        score=score,
                        threshold=thr,
                        model_version=version,
                        anomalous=anomalous,
                    )
                ),
            )
            row = errors[i]

            def top(row: Any = row) -> list[Contribution]:
                return top_features(row, names, label)

            if tracker is not None:
                alerts = tracker.observe(token, rec.event_id, rec.ts, score, thr, version, top, now)
            else:
                alerts = self._single_event(stream, rec, token, score, model, top, result)
            for alert in alerts:
                out.add(topics.ALERTS, alert.token, encode(alert))
            result.alerts += len(alerts)
        result.events[stream] = len(records)
        result.anomalous[stream] = n_anom

    def _single_event(
        self,
        stream: str,
        rec: Any,
        token: str,
        score: float,
        model: Model,
        top: Callable[[], list[Contribution]],
        result: BatchResult,
    ) -> list[Alert]:
        """The alert of a stream without episodes: one per anomalous record (a payment's
        decision is written too)."""
        thr, version = model.threshold, model.version
        anomalous = score > thr
        contributions = top() if anomalous else []
        alerts = (
            [
                single_event_alert(
                    stream, token, rec.event_id, rec.ts, score, thr, version, contributions
                )
            ]
            if anomalous
            else []
        )
        spec = self.specs[stream]
        if spec.decides:
            self._decision(spec, rec, score, thr, version, contributions, result)
        return alerts

    def _decision(
        self,
        spec: StreamSpec,
        rec: Any,
        score: float,
        thr: float,
        version: str,
        top: list[Contribution],
        result: BatchResult,
    ) -> None:
        if self.send_decision is None:
            return
        if score <= thr and not self.settings.send_approvals:
            return
        # The decision goes to the device that sent the event: its token, reversed by the
        # vault, or a declared stream's device id as it is (not personal data).
        token = (
            getattr(rec, spec.tokens[spec.device_field])
            if spec.declaration is None
            else rec.device
            if spec.device_field in spec.tokens
            else None
        )
        if token is None:
            device: str | None = rec.device
        elif self.vin_lookup is None:
            return
        else:
            device = self.vin_lookup(token)
        if device is None:
            self.decisions_unrouted += 1
            log.warning(
                "%s %s: device token not in the vault; no decision sent", spec.name, rec.event_id
            )
            return
        self.send_decision(device, decide(rec.event_id, rec.ts, score, thr, version, top))
        result.decisions += 1


def run(ctx: Any) -> None:
    """Service entry point (``fleetsentry edge scorer``): runs until ``ctx.stop`` is set."""
    from edge.scorer import metrics
    from edge.scorer.decision_publisher import DecisionPublisher
    from edge.scorer.vins import VinCache
    from edge.vault.setup import open_vault

    config: EdgeConfig = ctx.config
    vault = open_vault(config)
    publisher = DecisionPublisher(config, f"{config.edge_id}-scorer-{ctx.instance}")
    svc = ScorerService(
        config,
        vin_lookup=VinCache(vault),
        send_decision=publisher.publish,
        instance=ctx.instance,
        confirm_decisions=publisher.wait_acknowledged,
    )
    svc._closers += [vault.close, publisher.close]
    publisher.start()
    try:
        svc.start()
        observe = metrics.Recorder()
        # One scorer per gateway: it always holds every partition of anon.*.
        unassigned = AssignmentGuard.for_session(config.scorer.session_timeout_ms)
        svc._watchdog.watch_stop(ctx.stop)
        while not ctx.stop.is_set():
            t0 = time.perf_counter()
            result = svc.step()
            if result is not None:
                observe(result, time.perf_counter() - t0, svc)
            assert svc._consumer is not None
            if unassigned.enforce(svc._consumer, "scorer", "anon.*", svc._watchdog.on_stuck):
                return
    finally:
        svc.close()
