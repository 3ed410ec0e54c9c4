"""Alert episodes and their scoring against labelled fault episodes.

The edge opens an alert episode when ``open_events`` anomalous events of one token fall within
``open_window_s`` seconds, and closes it after ``quiet_gap_s`` seconds without one. The same
rule (``shared.episodes``, the code the edge runs) is replayed here over offline scores, so
thresholds are chosen, and reports computed, on the episodes an operator would actually see.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from shared.declarations.schema import EpisodeAlerts, EventAlerts
from shared.episodes import AlertEpisode, EpisodeSettings, replay

__all__ = [
    "AlertEpisode",
    "EpisodeReport",
    "EpisodeRule",
    "LabelEpisode",
    "alert_episodes",
    "declared_rule",
    "evaluate_episodes",
    "vehicle_hours",
]


# The edge's rule, replayed here: one implementation (shared.episodes) for both sides.
EpisodeRule = EpisodeSettings
_DEFAULT_RULE = EpisodeRule()
# Every anomalous event its own alert: it opens one at once, and any later anomalous event of
# the token (even at the same instant) is past the quiet gap, so it closes it and opens its own.
EVENT_RULE = EpisodeRule(open_events=1, open_window_s=0.0, quiet_gap_s=-1.0)


def declared_rule(alerts: EpisodeAlerts | EventAlerts) -> EpisodeRule:
    """The episode rule a declared stream's ``alerts`` set: its episodes, or one per event."""
    if isinstance(alerts, EpisodeAlerts):
        return EpisodeRule(
            open_events=alerts.open_events,
            open_window_s=alerts.window_s,
            quiet_gap_s=alerts.quiet_s,
        )
    return EVENT_RULE


@dataclass(frozen=True)
class LabelEpisode:
    episode_id: str
    kind: str
    token: str
    start_ts: float
    end_ts: float


@dataclass
class EpisodeReport:
    episodes: int
    detected: int
    detected_within: int
    within_s: float
    false_alert_episodes: int
    vehicle_hours: float
    delays: list[float] = field(default_factory=list)
    per_kind: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def false_per_100h(self) -> float:
        return 100.0 * self.false_alert_episodes / self.vehicle_hours if self.vehicle_hours else 0.0

    def as_dict(self) -> dict[str, Any]:
        d = np.asarray(self.delays, dtype=np.float64)
        return {
            "episodes": self.episodes,
            "detected": self.detected,
            f"detected_within_{self.within_s:g}s": self.detected_within,
            "detected_within_fraction": _ratio(self.detected_within, self.episodes),
            "delay_p50_s": float(np.median(d)) if d.size else None,
            "delay_max_s": float(d.max()) if d.size else None,
            "false_alert_episodes": self.false_alert_episodes,
            "vehicle_hours": round(self.vehicle_hours, 3),
            "false_alert_episodes_per_100h": round(self.false_per_100h, 4),
            "per_kind": self.per_kind,
        }


def _ratio(a: int, b: int) -> float | None:
    return round(a / b, 6) if b else None


def alert_episodes(
    tokens: NDArray[Any],
    ts: NDArray[np.float64],
    anomalous: NDArray[np.bool_],
    rule: EpisodeRule = _DEFAULT_RULE,
) -> list[AlertEpisode]:
    """Replay the edge's episode rule over scored events (any order; sorted per token there)."""
    idx = np.flatnonzero(anomalous)
    return replay(tokens[idx].tolist(), ts[idx].tolist(), [True] * idx.size, rule)


def vehicle_hours(tokens: NDArray[Any], ts: NDArray[np.float64]) -> float:
    """Observed hours summed over tokens (first to last event of each)."""
    if ts.size == 0:
        return 0.0
    order = np.argsort(tokens, kind="stable")
    tok, t = tokens[order], ts[order]
    bounds = np.r_[0, np.flatnonzero(tok[1:] != tok[:-1]) + 1, tok.size]
    total = 0.0
    for a, b in zip(bounds[:-1], bounds[1:], strict=True):
        total += float(t[a:b].max() - t[a:b].min())
    return total / 3600.0


def evaluate_episodes(
    alerts: Iterable[AlertEpisode],
    labels: Iterable[LabelEpisode],
    hours: float,
    within_s: float = 60.0,
    margin_s: float = 0.0,
    memory_s: float = 0.0,
) -> EpisodeReport:
    """Match alert episodes to labelled episodes of the same token by time overlap.

    A labelled episode is detected by the first alert raised between its start and its end
    (plus ``margin_s``); its delay is that alert's raise time minus the episode start. An alert
    episode overlapping no labelled episode is a false alert episode; one starting within
    ``memory_s`` after a labelled episode ends is that episode's tail, not a false alert (the
    features look back that far: ``shared.features.feature_memory_s``).
    """
    alerts = list(alerts)
    labels = list(labels)
    by_token: dict[str, list[LabelEpisode]] = defaultdict(list)
    for lab in labels:
        by_token[lab.token].append(lab)
    alerts_by_token: dict[str, list[AlertEpisode]] = defaultdict(list)
    false = 0
    for a in alerts:
        alerts_by_token[a.token].append(a)
        tail = margin_s + memory_s
        if not any(
            a.start_ts <= lab.end_ts + tail and a.end_ts >= lab.start_ts - margin_s
            for lab in by_token.get(a.token, [])
        ):
            false += 1
    report = EpisodeReport(len(labels), 0, 0, within_s, false, hours)
    kinds: dict[str, list[float | None]] = defaultdict(list)
    for lab in labels:
        delay = _first_delay(lab, alerts_by_token.get(lab.token, []), margin_s)
        kinds[lab.kind].append(delay)
        if delay is not None:
            report.detected += 1
            report.delays.append(delay)
            report.detected_within += delay <= within_s
    for kind, delays in sorted(kinds.items()):
        hit = [d for d in delays if d is not None]
        within = sum(1 for d in hit if d <= within_s)
        report.per_kind[kind] = {
            "episodes": len(delays),
            "detected": len(hit),
            "detected_within_fraction": _ratio(within, len(delays)),
            "delay_p50_s": float(np.median(hit)) if hit else None,
        }
    return report


def _first_delay(lab: LabelEpisode, alerts: list[AlertEpisode], margin_s: float) -> float | None:
    """Delay to the first alert raised while the labelled episode runs.

    An alert episode that opened before the fault and is still running when it starts counts
    from the fault's start (the operator already sees an open alert for that vehicle).
    """
    best: float | None = None
    for a in alerts:
        if a.open_ts > lab.end_ts + margin_s or a.end_ts < lab.start_ts:
            continue
        delay = max(0.0, a.open_ts - lab.start_ts)
        best = delay if best is None else min(best, delay)
    return best
