"""The detection report: scores and alerts joined with labels by event_id.

Per stream and per kind: ROC AUC, PR AUC, precision and recall of what the edge flagged.
For telemetry, also alert episodes against labelled fault episodes: how many were alerted,
how fast (from the fault's start to the alert), and false alert episodes per 100 vehicle-hours.

An alert episode that starts within the features' memory after a labelled episode ends
(``shared.features.feature_memory_s``: the rolling statistics look back that far) is counted
as that fault's tail, not as a false alert; the report states the window it used.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from cloud.evaluation import ranking
from cloud.evaluation.episode_report import (
    AlertEpisode,
    EpisodeRule,
    LabelEpisode,
    alert_episodes,
    declared_rule,
    evaluate_episodes,
    vehicle_hours,
)
from shared import streams
from shared.contracts import Alert, Label, Score
from shared.declarations.schema import EpisodeAlerts
from shared.features import feature_memory_s

DEFAULT_RULE = EpisodeRule()


@dataclass
class StreamScores:
    """One stream's scored events, row-aligned, with their labels joined."""

    stream: str
    event_ids: NDArray[Any]
    ts: NDArray[np.float64]
    tokens: NDArray[Any]
    scores: NDArray[np.float64]
    flagged: NDArray[np.bool_]
    kinds: NDArray[Any]  # "" = no label

    @property
    def labelled(self) -> NDArray[np.bool_]:
        return self.kinds != ""


@dataclass
class Report:
    data: dict[str, Any]
    curves: dict[str, StreamScores] = field(default_factory=dict)


def join(scores: Iterable[Score], labels: dict[str, Label]) -> dict[str, StreamScores]:
    """Group scores by stream (the last score of a re-scored event wins) and attach labels."""
    latest: dict[tuple[str, str], Score] = {}
    for s in scores:
        latest[(s.stream, s.event_id)] = s
    by_stream: dict[str, list[Score]] = defaultdict(list)
    for (stream, _), s in latest.items():
        by_stream[stream].append(s)
    out: dict[str, StreamScores] = {}
    for stream, rows in sorted(by_stream.items()):
        kinds = [labels[r.event_id].kind if r.event_id in labels else "" for r in rows]
        out[stream] = StreamScores(
            stream=stream,
            event_ids=np.array([r.event_id for r in rows], dtype=object),
            ts=np.array([r.ts for r in rows], dtype=np.float64),
            tokens=np.array([r.token for r in rows], dtype=object),
            scores=np.array([r.score for r in rows], dtype=np.float64),
            flagged=np.array([r.anomalous for r in rows], dtype=bool),
            kinds=np.array(kinds, dtype=object),
        )
    return out


def stream_metrics(s: StreamScores) -> dict[str, Any]:
    y = s.labelled
    out = _block(y, s.scores, s.flagged)
    per_kind: dict[str, Any] = {}
    for kind in sorted(set(s.kinds[y])):
        mask = ~y | (s.kinds == kind)
        per_kind[kind] = _block(s.kinds[mask] == kind, s.scores[mask], s.flagged[mask])
    out["per_kind"] = per_kind
    return out


def _block(
    y: NDArray[np.bool_], scores: NDArray[np.float64], flagged: NDArray[np.bool_]
) -> dict[str, Any]:
    tp = int(np.sum(flagged & y))
    fp = int(np.sum(flagged & ~y))
    fn = int(np.sum(~flagged & y))
    return {
        "events": int(y.size),
        "labelled": int(y.sum()),
        "roc_auc": ranking._finite(ranking.roc_auc(y, scores)),
        "pr_auc": ranking._finite(ranking.pr_auc(y, scores)),
        "precision": round(tp / (tp + fp), 6) if tp + fp else None,
        "recall": round(tp / (tp + fn), 6) if tp + fn else None,
        "tp": tp,
        "fp": fp,
        "fn": fn,
    }


def label_episodes(
    labels: Iterable[Label], stream: str, token_of: dict[str, str]
) -> tuple[list[LabelEpisode], int]:
    """Labelled episodes of ``stream`` with the token their scored events carry.

    Returns the episodes and how many had no scored event at all (never reached the scorer).
    """
    eps: dict[str, LabelEpisode] = {}
    seen: set[str] = set()
    for lab in labels:
        if lab.stream != stream:
            continue
        seen.add(lab.episode_id)
        token = token_of.get(lab.event_id)
        if token is None or lab.episode_id in eps:
            continue
        eps[lab.episode_id] = LabelEpisode(
            lab.episode_id, lab.kind, token, lab.start_ts, lab.end_ts
        )
    return list(eps.values()), len(seen) - len(eps)


def episodes_from_alerts(alerts: Iterable[Alert], stream: str) -> list[AlertEpisode]:
    """The edge's own episodes: first and last state per alert_id; raised at the open state."""
    first: dict[str, Alert] = {}
    last: dict[str, Alert] = {}
    for a in alerts:
        if a.stream != stream:
            continue
        first.setdefault(a.alert_id, a)
        last[a.alert_id] = a
    return [
        AlertEpisode(a.token, a.start_ts, first[aid].end_ts, a.end_ts) for aid, a in last.items()
    ]


def evaluate(
    scores: Iterable[Score],
    labels: list[Label],
    alerts: list[Alert] | None = None,
    rule: EpisodeRule = DEFAULT_RULE,
    within_s: float = 60.0,
) -> Report:
    """The whole report. Without ``alerts``, telemetry episodes replay the edge's rule."""
    label_map = {lab.event_id: lab for lab in labels}
    joined = join(scores, label_map)
    data: dict[str, Any] = {"streams": {}}
    for stream, s in joined.items():
        block = stream_metrics(s)
        episodes = _episode_rule(stream, rule)
        if episodes is not None:
            block["episodes"] = _episodes(stream, s, labels, alerts, *episodes, within_s)
        data["streams"][stream] = block
    scored_ids = {eid for s in joined.values() for eid in s.event_ids}
    data["labels"] = {
        "total": len(label_map),
        "unscored": sum(1 for eid in label_map if eid not in scored_ids),
    }
    return Report(data, joined)


def _episode_rule(stream: str, rule: EpisodeRule) -> tuple[EpisodeRule, float] | None:
    """How ``stream``'s alerts form as episodes, and how long its features remember a fault;
    None for a stream whose every alert stands alone (payments, declared ``kind = "event"``).
    A built-in stream of episodes (telemetry) takes the command's rule, a declared stream its
    declaration's ``alerts``; the memory is the declaration's (``feature_memory_s``: 0 for a
    declared stream that declares no ``interval_s``)."""
    spec = streams.find(stream)
    if spec is None:
        return None
    alerts = streams.declaration_of(stream).alerts
    if not isinstance(alerts, EpisodeAlerts):
        return None
    return (rule if spec.declaration is None else declared_rule(alerts)), feature_memory_s(stream)


def _episodes(
    stream: str,
    s: StreamScores,
    labels: list[Label],
    alerts: list[Alert] | None,
    rule: EpisodeRule,
    memory_s: float,
    within_s: float,
) -> dict[str, Any]:
    token_of = dict(zip(s.event_ids.tolist(), s.tokens.tolist(), strict=True))
    lab_eps, unscored = label_episodes(labels, stream, token_of)
    if alerts is not None:
        found = episodes_from_alerts(alerts, stream)
        source = "alerts"
    else:
        found = alert_episodes(s.tokens, s.ts, s.flagged, rule)
        source = "replayed from scores"
    result = evaluate_episodes(
        found, lab_eps, vehicle_hours(s.tokens, s.ts), within_s=within_s, memory_s=memory_s
    )
    out = result.as_dict()
    out["fault_tail_s"] = memory_s
    out["alert_source"] = source
    out["unscored_episodes"] = unscored
    return out
