"""Each stream's alert-episode rule on this gateway.

A stream forms episodes when its declaration says so (``alerts = { kind = "episodes", ... }``;
the shipped ``telemetry`` does): its rule is the declaration's, unless the gateway's
``[scorer]`` settings override a part of it for every such stream. The update interval of an
open episode is the gateway's.
"""

from __future__ import annotations

from edge.config import ScorerSettings
from shared import streams
from shared.declarations.schema import EpisodeAlerts
from shared.episodes import EpisodeSettings


def episode_rule(s: ScorerSettings, alerts: EpisodeAlerts) -> EpisodeSettings:
    """A stream's rule: what ``[scorer]`` sets, else what the stream declares."""
    return EpisodeSettings(
        open_events=alerts.open_events if s.episode_open_events is None else s.episode_open_events,
        open_window_s=alerts.window_s
        if s.episode_open_window_s is None
        else s.episode_open_window_s,
        quiet_gap_s=alerts.quiet_s if s.episode_quiet_gap_s is None else s.episode_quiet_gap_s,
        update_interval_s=s.episode_update_interval_s,
    )


def episode_rules(s: ScorerSettings) -> dict[str, EpisodeSettings]:
    """``stream -> rule`` for every registered stream whose alerts are episodes (the others
    raise one alert per anomalous event)."""
    rules = {}
    for spec in streams.all_streams():
        alerts = streams.declaration_of(spec.name).alerts
        if isinstance(alerts, EpisodeAlerts):
            rules[spec.name] = episode_rule(s, alerts)
    return rules
