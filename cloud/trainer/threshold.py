"""Choosing the alert threshold on the validation split.

Three rules, one per operator question:
- ``alert_rate``: flag about this fraction of normal events;
- ``precision``: the most recall whose precision reaches this value (payments: few false
  declines);
- ``false_episodes``: at most this many false alert episodes per 100 vehicle-hours (device-
  hours), replaying the edge's episode rule, or a declared stream's own alerts (telemetry: a
  fleet manager's pager). Without labels every event is presumed normal, so every episode
  counts as false.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from cloud.evaluation import ranking
from cloud.evaluation.episode_report import EpisodeRule, alert_episodes, vehicle_hours
from cloud.trainer.data import Records
from cloud.trainer.errors import TrainerError
from shared.declarations.loader import parse_threshold
from shared.declarations.schema import THRESHOLD_MODES

Mode = Literal["alert_rate", "precision", "false_episodes"]
MODES: tuple[str, ...] = THRESHOLD_MODES


@dataclass(frozen=True)
class ThresholdRule:
    mode: Mode
    value: float

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise TrainerError(f"threshold rule {self.mode!r} unknown; use one of {MODES}")
        if self.value < 0 or (self.mode != "false_episodes" and self.value >= 1):
            raise TrainerError(f"threshold rule {self.mode}={self.value} is out of range")

    @classmethod
    def parse(cls, text: str) -> ThresholdRule:
        """``precision=0.9``, ``alert_rate=0.001`` or ``false_episodes=0.5``."""
        try:
            mode, value = parse_threshold(text)
        except ValueError as exc:
            raise TrainerError(f"threshold rule {exc}") from None
        return cls(mode, value)  # type: ignore[arg-type]


# Each stream's default rule is in its declaration (``[training] threshold``): the built-in
# streams' in the shipped declarations, an operator's stream's by default ``alert_rate=0.001``
# (a new stream has no labels, so its budget is how often it may alert on presumed-normal
# data: one event in a thousand is a rate an operator can reason about for any event rate and
# alert kind, and isolated alerts at that rate seldom meet an episode rule).

# What a rule that needs labels becomes when training without them is allowed and the
# validation split has none: alert on the top 1 % of (presumed normal) events.
UNLABELLED_RULE = ThresholdRule("alert_rate", 0.01)


def choose_threshold(
    rule: ThresholdRule,
    val: Records,
    scores: NDArray[np.float32],
    episode_rule: EpisodeRule,
    memory_s: float = 0.0,
) -> float:
    if scores.size == 0:
        raise TrainerError(f"the {val.stream} validation split is empty")
    y = val.labelled
    if rule.mode == "alert_rate":
        return ranking.threshold_for_alert_rate(scores[~y], rule.value)
    if rule.mode == "precision":
        if not y.any():
            raise TrainerError(
                "the precision rule needs labelled anomalies in the validation "
                "split; pass labels or use alert_rate=..."
            )
        return ranking.threshold_for_precision(y, scores, rule.value)
    return threshold_for_false_episodes(val, scores, rule.value, episode_rule, memory_s)


def false_episode_rate(
    val: Records,
    scores: NDArray[np.float32],
    threshold: float,
    rule: EpisodeRule,
    hours: float,
    memory_s: float = 0.0,
) -> float:
    """False alert episodes per 100 vehicle-hours if ``threshold`` were used.

    An alert starting within ``memory_s`` after a labelled episode ends belongs to that
    episode: its features still hold the fault (see ``shared.features.feature_memory_s``).
    """
    labelled = _labelled_spans(val)
    false = 0
    for ep in alert_episodes(val.tokens, val.ts, scores > threshold, rule):
        spans = labelled.get(ep.token, ())
        if not any(ep.start_ts <= end + memory_s and ep.end_ts >= start for start, end in spans):
            false += 1
    return 100.0 * false / hours if hours else 0.0


def _labelled_spans(val: Records) -> dict[str, list[tuple[float, float]]]:
    spans: dict[str, dict[str, list[float]]] = {}
    for i in np.flatnonzero(val.labelled):
        tok, ep = str(val.tokens[i]), str(val.episodes[i])
        span = spans.setdefault(tok, {}).setdefault(ep, [float(val.ts[i]), float(val.ts[i])])
        span[0], span[1] = min(span[0], float(val.ts[i])), max(span[1], float(val.ts[i]))
    return {tok: [(s, e) for s, e in eps.values()] for tok, eps in spans.items()}


def threshold_for_false_episodes(
    val: Records,
    scores: NDArray[np.float32],
    target: float,
    rule: EpisodeRule,
    memory_s: float = 0.0,
) -> float:
    """The lowest threshold keeping false alert episodes at or under ``target`` per 100 h.

    Candidates are the top scores of normal events; the rate falls (almost) monotonically as
    the threshold rises, so a binary search over them is enough.
    """
    hours = vehicle_hours(val.tokens, val.ts)
    normal = np.unique(scores[~val.labelled])[::-1][:20_000]  # descending
    if normal.size == 0:
        raise TrainerError("no normal events in the validation split")
    lo, hi = 0, normal.size - 1  # normal[0] (the max) gives zero false episodes
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if false_episode_rate(val, scores, float(normal[mid]), rule, hours, memory_s) <= target:
            lo = mid
        else:
            hi = mid - 1
    return float(normal[lo])


def describe(rule: ThresholdRule, val: Records | None = None) -> dict[str, Any]:
    """The rule, and for ``false_episodes`` the validation split's vehicle-hours and how many
    false episodes the budget allows on them (``allowed_episodes``): at 0, the threshold is
    the single worst normal episode's, and which vehicles the split holds moves it."""
    out: dict[str, Any] = {"mode": rule.mode, "value": rule.value}
    if rule.mode == "false_episodes" and val is not None:
        hours = vehicle_hours(val.tokens, val.ts)
        out["validation_vehicle_hours"] = round(hours, 1)
        out["allowed_episodes"] = int(rule.value * hours / 100.0 + 1e-9)
    return out


def budget_warning(stream: str, described: dict[str, Any]) -> str | None:
    """A sentence for a false-episode budget that allows no episode on the validation split."""
    if described.get("mode") != "false_episodes" or described.get("allowed_episodes", 1) >= 1:
        return None
    value, hours = described["value"], described["validation_vehicle_hours"]
    needed = 100.0 / value if value else float("inf")
    return (
        f"{stream}: the threshold rule false_episodes={value:g} allows no false episode on "
        f"the validation split's {hours:g} vehicle-hours, so the threshold is the single worst "
        f"normal episode's and moves with which vehicles the split holds; give the validation "
        f"split at least {needed:.0f} vehicle-hours (more data, or a larger second --splits "
        "fraction)"
    )
