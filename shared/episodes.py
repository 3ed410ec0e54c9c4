"""Alert episodes: a run of anomalous events from one token is one alert, not one per second.

One rule for the whole appliance: the edge scorer raises alerts with :class:`EpisodeTracker`
as events arrive, and the cloud (threshold choice, evaluation reports) replays the very same
tracker over offline scores with :func:`replay`, so the episodes it counts are the ones an
operator sees.

An episode opens when ``open_events`` anomalous events from a token fall within
``open_window_s`` seconds (event time, from the device), so a single noisy frame raises nothing.
While open, further anomalous events extend it and a new peak is reported at most every
``update_interval_s``; it closes after ``quiet_gap_s`` seconds without an anomalous event, seen
from the token's own next event (its own event time: one vehicle's clock never moves another's
episodes). A vehicle that goes silent still gets its episode closed: :meth:`EpisodeTracker.sweep`
closes it once nothing came from the token for ``quiet_gap_s`` of processing time (wall clock,
which no vehicle controls).

The tracker is pure: events in, alerts out. Its per-token state serializes to bytes so the
service can keep it in a compacted topic written inside the same transaction as the alerts,
which is what lets a restarted scorer carry on an open episode instead of opening a second one.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import msgspec

from shared.contracts import Alert, Contribution


@dataclass(frozen=True)
class EpisodeSettings:
    # Four anomalous frames in ten seconds: a vehicle braking hard into a stop or starting to
    # refuel can look odd for two or three frames; a fault keeps at it (every kind reaches
    # four within seconds of its start, far inside the 60 s detection budget).
    open_events: int = 4
    open_window_s: float = 10.0
    quiet_gap_s: float = 30.0
    update_interval_s: float = 10.0
    max_event_ids: int = 50


class _Pending(msgspec.Struct, array_like=True):
    ts: float
    event_id: str
    score: float
    top: list[Contribution]


class _Episode(msgspec.Struct):
    alert_id: str
    start_ts: float
    peak_ts: float
    peak_score: float
    end_ts: float
    threshold: float
    model_version: str
    top: list[Contribution]
    event_ids: list[str]
    last_emit_ts: float
    peak_emitted: bool = True


class TokenState(msgspec.Struct):
    pending: list[_Pending] = msgspec.field(default_factory=list)
    episode: _Episode | None = None
    # Processing time of the token's last event (wall clock live; event time offline). States
    # written before it existed decode with 0 and are given the restore time instead.
    seen_at: float = 0.0

    def empty(self) -> bool:
        return not self.pending and self.episode is None


_enc = msgspec.json.Encoder()
_dec = msgspec.json.Decoder(TokenState)

TopFn = Callable[[], list[Contribution]]


def alert_id(stream: str, token: str, first_event_id: str) -> str:
    """Deterministic, so a replay after a crash names the same episode the same way."""
    digest = hashlib.sha256(f"{stream}\0{token}\0{first_event_id}".encode()).hexdigest()
    return f"{stream[:3]}-{digest[:32]}"


class EpisodeTracker:
    """Per-token episode state for one stream."""

    def __init__(self, stream: str, settings: EpisodeSettings | None = None) -> None:
        self.stream = stream
        self.settings = settings or EpisodeSettings()
        self.states: dict[str, TokenState] = {}
        self.dirty: set[str] = set()

    # --- persistence ---------------------------------------------------------------------

    def restore(self, token: str, data: bytes | None, now: float = 0.0) -> None:
        """Apply one record of the state topic (``None`` is a tombstone).

        ``now`` (the restore's wall time) restarts the token's idle clock: a scorer that was
        down must not close every open episode before it has read the events it missed.
        """
        if data is None:
            self.states.pop(token, None)
        else:
            st = self.states[token] = _dec.decode(data)
            st.seen_at = max(st.seen_at, now)

    def drain_dirty(self) -> dict[str, bytes | None]:
        """State records changed since the last drain: bytes, or None where a token is clear."""
        out: dict[str, bytes | None] = {}
        for token in self.dirty:
            st = self.states.get(token)
            out[token] = None if st is None else _enc.encode(st)
        self.dirty.clear()
        return out

    def open_count(self) -> int:
        return sum(1 for st in self.states.values() if st.episode is not None)

    # --- events ----------------------------------------------------------------------------

    def observe(
        self,
        token: str,
        event_id: str,
        ts: float,
        score: float,
        threshold: float,
        model_version: str,
        top: TopFn,
        now: float | None = None,
    ) -> list[Alert]:
        """Feed one scored event; ``top`` is only called for anomalous events.

        ``now`` is when the event was processed (wall clock); offline, where there is no
        such time, the event's own time stands in for it.
        """
        st = self.states.get(token)
        anomalous = score > threshold
        if st is None and not anomalous:
            return []  # the hot path: a normal event from a quiet vehicle
        if st is None:
            st = self.states[token] = TokenState()
        st.seen_at = ts if now is None else now
        self.dirty.add(token)
        alerts: list[Alert] = []
        ep = st.episode
        if ep is not None and ts - ep.end_ts > self.settings.quiet_gap_s:
            alerts.append(self._close(token, st))
            ep = None
        if anomalous:
            if ep is not None:
                alerts += self._extend(token, ep, event_id, ts, score, top)
            else:
                st.pending.append(_Pending(ts, event_id, score, top()))
                self._prune(st, ts)
                if len(st.pending) >= self.settings.open_events:
                    alerts.append(self._open(token, st, threshold, model_version))
        else:
            self._prune(st, ts)
        if st.empty():
            del self.states[token]
        return alerts

    def sweep(self, now: float) -> list[Alert]:
        """Close the episodes of tokens silent for ``quiet_gap_s`` of processing time.

        Each token is judged by its own last event only (``seen_at``), so no other token's
        traffic or clock can close, or keep from opening, its episode. Pending frames of a
        token silent for ``open_window_s`` are dropped, as its next event would prune them.
        """
        alerts: list[Alert] = []
        gap, window = self.settings.quiet_gap_s, self.settings.open_window_s
        for token in list(self.states):
            st = self.states[token]
            idle = now - st.seen_at
            changed = False
            if st.episode is not None and idle > gap:
                alerts.append(self._close(token, st))
                changed = True
            if st.pending and idle > window:
                st.pending.clear()
                changed = True
            if changed:
                self.dirty.add(token)
                if st.empty():
                    del self.states[token]
        return alerts

    # --- transitions -------------------------------------------------------------------------

    def _prune(self, st: TokenState, now: float) -> None:
        horizon = now - self.settings.open_window_s
        if st.pending and st.pending[0].ts < horizon:
            st.pending = [p for p in st.pending if p.ts >= horizon]

    def _open(self, token: str, st: TokenState, threshold: float, model_version: str) -> Alert:
        first = st.pending[0]
        peak = max(st.pending, key=lambda p: p.score)
        last = st.pending[-1]
        st.episode = _Episode(
            alert_id=alert_id(self.stream, token, first.event_id),
            start_ts=first.ts,
            peak_ts=peak.ts,
            peak_score=peak.score,
            end_ts=last.ts,
            threshold=threshold,
            model_version=model_version,
            top=peak.top,
            event_ids=[p.event_id for p in st.pending][: self.settings.max_event_ids],
            last_emit_ts=last.ts,
        )
        st.pending = []
        return self._alert(token, st.episode, "open")

    def _extend(
        self, token: str, ep: _Episode, event_id: str, ts: float, score: float, top: TopFn
    ) -> list[Alert]:
        ep.end_ts = max(ep.end_ts, ts)
        if len(ep.event_ids) < self.settings.max_event_ids:
            ep.event_ids.append(event_id)
        if score > ep.peak_score:
            ep.peak_score, ep.peak_ts, ep.top = score, ts, top()  # explained only at a peak
            ep.peak_emitted = False
        if not ep.peak_emitted and ts - ep.last_emit_ts >= self.settings.update_interval_s:
            ep.last_emit_ts, ep.peak_emitted = ts, True
            return [self._alert(token, ep, "update")]
        return []

    def _close(self, token: str, st: TokenState) -> Alert:
        assert st.episode is not None
        alert = self._alert(token, st.episode, "closed")
        st.episode = None
        return alert

    def _alert(self, token: str, ep: _Episode, state: str) -> Alert:
        return Alert(
            alert_id=ep.alert_id,
            stream=self.stream,
            token=token,
            state=state,  # type: ignore[arg-type]
            start_ts=ep.start_ts,
            peak_ts=ep.peak_ts,
            end_ts=ep.end_ts,
            peak_score=ep.peak_score,
            threshold=ep.threshold,
            event_ids=list(ep.event_ids),
            top_features=list(ep.top),
            model_version=ep.model_version,
        )


def single_event_alert(
    stream: str,
    token: str,
    event_id: str,
    ts: float,
    score: float,
    threshold: float,
    model_version: str,
    top: Sequence[Contribution],
) -> Alert:
    """A payment is its own episode: opened and closed by the one event."""
    return Alert(
        alert_id=alert_id(stream, token, event_id),
        stream=stream,
        token=token,
        state="closed",
        start_ts=ts,
        peak_ts=ts,
        end_ts=ts,
        peak_score=score,
        threshold=threshold,
        event_ids=[event_id],
        top_features=list(top),
        model_version=model_version,
    )


# --- offline replay -------------------------------------------------------------------------


@dataclass(frozen=True)
class AlertEpisode:
    """An alert episode as the edge would raise it from scored events."""

    token: str
    start_ts: float  # first anomalous event of the episode
    open_ts: float  # when the alert was raised (the event that completed ``open_events``)
    end_ts: float  # last anomalous event


def _no_top() -> list[Contribution]:
    return []


def replay(
    tokens: Iterable[Any],
    ts: Iterable[float],
    anomalous: Iterable[bool],
    settings: EpisodeSettings | None = None,
) -> list[AlertEpisode]:
    """The episodes :class:`EpisodeTracker` raises over scored events (any order).

    The three columns are row-aligned (lists or numpy arrays). Only anomalous events can
    open, extend or close an episode by its quiet gap, so they alone are fed, in event time
    per token; a final sweep closes what is still open.
    """
    by_token: dict[str, list[float]] = defaultdict(list)
    for token, t, flagged in zip(tokens, ts, anomalous, strict=True):
        if flagged:
            by_token[str(token)].append(float(t))
    tracker = EpisodeTracker("replay", settings)
    spans: dict[str, list[Any]] = {}  # alert id -> [token, start, open, end]

    def note(alerts: list[Alert]) -> None:
        for a in alerts:
            span = spans.setdefault(a.alert_id, [a.token, a.start_ts, a.end_ts, a.end_ts])
            span[3] = max(span[3], a.end_ts)

    for token, times in by_token.items():
        times.sort()
        for n, t in enumerate(times):
            note(tracker.observe(token, str(n), t, 1.0, 0.0, "", _no_top))
    note(tracker.sweep(float("inf")))
    return [AlertEpisode(*span) for span in spans.values()]
