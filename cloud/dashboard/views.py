"""What each page shows, as JSON-ready dicts: the pages render them, ``/api`` returns them.

Built from the registry (SQLite) and the live state (replicated topics). Nothing here holds
personal data: the replicated topics carry tokens only, and a token is all an alert shows.
"""

from __future__ import annotations

import math
import re
import time
from typing import Any

from cloud.dashboard.errors import BadQuery
from cloud.dashboard.live import LiveState, Series, chart_range, empty_window
from cloud.registry import ModelRecord, Registry, RunRecord, TrainerStatus
from shared.features import feature_label

RATE_WINDOW_S = 60.0
ALERT_RATE_WINDOW_S = 300.0
FIT = "fit"  # charts span the data held, not a fixed window
ALL = "all"  # charts span everything kept (LiveState.window_s)
WINDOW_PRESETS_S = (300, 900, 3600)


def _round(v: Any, digits: int = 4) -> Any:
    if isinstance(v, float):
        return None if math.isnan(v) or math.isinf(v) else round(v, digits)
    return v


def champions(registry: Registry) -> dict[str, str]:
    out = {}
    for stream in registry.streams():
        c = registry.champion(stream)
        if c is not None:
            out[stream] = c.version
    return out


# --- chart windows ---------------------------------------------------------------------------


def chart_window(value: str | None, live: LiveState) -> float | None:
    """The ``window`` query parameter of the chart pages: None to fit the data (the default,
    also ``fit``), else seconds of event time (``all``: everything kept). Anything else is a
    :class:`BadQuery` saying what is accepted."""
    if value is None or value == FIT:
        return None
    if value == ALL:
        return live.window_s
    if re.fullmatch(r"[0-9]{1,9}", value) and live.bucket_s <= int(value) <= live.window_s:
        return float(int(value))
    raise BadQuery(
        f"window must be {FIT!r}, {ALL!r} or a whole number of seconds from "
        f"{live.bucket_s:g} (one bucket) to {live.window_s:g} (all that is kept), "
        f"not {value[:40]!r}"
    )


def window_choices(live: LiveState, window_s: float | None) -> list[dict[str, Any]]:
    """The windows a page offers, the one shown (``window_s`` from :func:`chart_window`)
    marked current and added when it is none of the presets."""
    choices: list[tuple[str, float | None, str]] = [(FIT, None, "fit to data")]
    choices += [(str(s), float(s), _duration(s)) for s in WINDOW_PRESETS_S if s < live.window_s]
    choices.append((ALL, live.window_s, f"all kept ({_duration(live.window_s)})"))
    if window_s not in {seconds for _, seconds, _ in choices}:
        choices.append((f"{window_s:g}", window_s, _duration(window_s or 0)))
    return [
        {"value": v, "label": label, "current": seconds == window_s}
        for v, seconds, label in choices
    ]


def _duration(s: float) -> str:
    if s % 3600 == 0:
        return f"{s / 3600:g} h"
    return f"{s / 60:g} min" if s % 60 == 0 else f"{s:g} s"


def _window_info(
    live: LiveState, window_s: float | None, span: tuple[float, float] | None
) -> dict[str, Any]:
    return {
        "fit": window_s is None,
        "seconds": window_s,
        "bucket_s": live.bucket_s,
        "start": span[0] if span else None,
        "end": span[1] if span else None,
    }


def _rates(series: Series, span: tuple[float, float] | None, keys: list[str]) -> dict[str, Any]:
    """Per-second rates over ``span``; its end is the event-time now (the bucket filling)."""
    return series.window(span[0], span[1], keys, now=span[1]) if span else empty_window(keys)


# --- fleet -----------------------------------------------------------------------------------


def fleet(live: LiveState, registry: Registry, now: float | None = None) -> dict[str, Any]:
    now = time.time() if now is None else now
    champs = champions(registry)
    with live.lock:
        gateways = [_gateway_row(live, gw_id, champs, now) for gw_id in sorted(live.gateways)]
        totals = {"records": live.records, "rejected": live.rejected}
    return {
        "now": now,
        "champions": champs,
        "gateways": gateways,
        "totals": totals,
        "online": sum(g["online"] for g in gateways),
    }


def _gateway_row(
    live: LiveState, edge_id: str, champs: dict[str, str], now: float
) -> dict[str, Any]:
    gw = live.gateways[edge_id]
    streams = sorted(gw.events.keys() | set(gw.models))
    events = sum(gw.events.total(s, now - RATE_WINDOW_S, now) for s in streams)
    recent = sum(gw.events.total(s, now - ALERT_RATE_WINDOW_S, now) for s in streams)
    anomalous = sum(gw.anomalous.total(s, now - ALERT_RATE_WINDOW_S, now) for s in streams)
    alerts_h = sum(gw.alerts.total(s, now - 3600, now) for s in gw.alerts.keys())
    beat = gw.last_heartbeat
    # The heartbeat's age is the replication lag; without heartbeats, the newest record's.
    lag = now - (beat if beat is not None else gw.last_seen)
    return {
        "edge_id": edge_id,
        "online": now - gw.last_seen <= live.offline_after_s,
        "last_seen": gw.last_seen or None,
        "replication_lag_s": _round(max(0.0, lag), 1),
        "models": [
            {
                "stream": s,
                "version": gw.models.get(s),
                "champion": champs.get(s),
                "current": gw.models.get(s) == champs.get(s),
            }
            for s in streams
        ],
        "events_per_s": _round(events / RATE_WINDOW_S, 2),
        "alert_rate": _round(anomalous / recent, 4) if recent else None,
        "alerts_last_hour": alerts_h,
    }


def gateway(
    live: LiveState,
    registry: Registry,
    edge_id: str,
    now: float | None = None,
    window_s: float | None = None,
) -> dict[str, Any] | None:
    """One gateway; its chart runs on its own event clock (``window_s`` as in
    :func:`chart_window`), so a gateway gone quiet shows its last data."""
    now = time.time() if now is None else now
    champs = champions(registry)
    with live.lock:
        if edge_id not in live.gateways:
            return None
        row = _gateway_row(live, edge_id, champs, now)
        gw = live.gateways[edge_id]
        statuses = sorted(gw.statuses, key=lambda s: s["ts"], reverse=True)
        span = chart_range(gw.events, now, window_s, live.window_s)
        streams = sorted(gw.events.keys())
        events = _rates(gw.events, span, streams)
        anomalous = _rates(gw.anomalous, span, streams)
    history = [s for s in statuses if s["state"] in ("active", "rolled_back")]
    return {
        **row,
        "statuses": statuses,
        "model_history": history,
        "window": _window_info(live, window_s, span),
        "series": {"t": events["t"], "events": events["rates"], "anomalous": anomalous["rates"]},
    }


# --- detection -------------------------------------------------------------------------------


def detection(
    live: LiveState,
    registry: Registry,
    now: float | None = None,
    latest: int = 50,
    window_s: float | None = None,
) -> dict[str, Any]:
    """The whole fleet; every chart spans the same event time (``window_s`` as in
    :func:`chart_window`), set by the scored events."""
    now = time.time() if now is None else now
    with live.lock:
        span = chart_range(live.events, now, window_s, live.window_s)
        streams = sorted(live.events.keys())
        events = _rates(live.events, span, streams)
        anomalous = _rates(live.anomalous, span, streams)
        decisions = _rates(live.decisions, span, ["approve", "decline"])
        alert_series = (
            live.alert_series(span[0], span[1], now=span[1]) if span else empty_window([])
        )
        alerts = [dict(a, kind=live.alert_kind(a)) for a in reversed(live.alerts.values())]
        live_scores = {k: list(v) for k, v in live.scores.items()}
    recent = [_alert_row(a) for a in alerts[:latest]]
    dists = {
        s: _score_distribution(registry, s, live_scores)
        for s in sorted(set(streams) | set(registry.streams()))
    }
    return {
        "now": now,
        "streams": streams,
        "window": _window_info(live, window_s, span),
        "rates": {"t": events["t"], "events": events["rates"], "anomalous": anomalous["rates"]},
        "decisions": decisions,
        "alerts_by_kind": alert_series,
        "score_distributions": dists,
        "latest_alerts": recent,
    }


def _alert_row(a: dict[str, Any]) -> dict[str, Any]:
    row = {k: v for k, v in a.items() if k not in ("event_ids", "top_features")}
    row["top_features"] = [
        {"feature": f, "label": feature_label(f), "error": _round(e, 4)}
        for f, e in a["top_features"]
    ]
    return row


def _quantiles(values: list[float]) -> list[float]:
    if not values:
        return []
    s = sorted(values)
    out = []
    for i in range(101):
        pos = (len(s) - 1) * i / 100
        lo, hi = math.floor(pos), math.ceil(pos)
        out.append(round(s[lo] + (s[hi] - s[lo]) * (pos - lo), 6))
    return out


def _score_distribution(
    registry: Registry, stream: str, live_scores: dict[tuple[str, str], list[float]]
) -> dict[str, Any]:
    """Live scores of the champion beside the scores on its training holdout (percentiles)."""
    champ = registry.champion(stream)
    version = champ.version if champ else None
    if version is None or (stream, version) not in live_scores:
        # The gateways may still run another version: show the one with most live scores.
        candidates = [(len(v), k[1]) for k, v in live_scores.items() if k[0] == stream]
        version = max(candidates)[1] if candidates else version
    live_q = _quantiles(live_scores.get((stream, version or ""), []))
    training_q: list[float] = []
    rec = registry.find(version) if version else None
    if rec is not None and rec.run_id is not None:
        run = registry.run(rec.run_id)
        training_q = list((run.curves.get("score_quantiles") or {}).get("challenger") or [])
    return {
        "version": version,
        "threshold": rec.threshold if rec else None,
        "live": live_q,
        "live_n": len(live_scores.get((stream, version or ""), [])),
        "training": training_q,
        "psi": _round(_psi(training_q, live_q), 3),
    }


def _psi(reference_q: list[float], live_q: list[float]) -> float | None:
    """Population stability of live scores over the reference's deciles."""
    if len(reference_q) != 101 or len(live_q) != 101:
        return None
    edges = reference_q[10:100:10]
    shares = [0.0] * 10
    for i in range(100):  # each live percentile interval holds 1%
        mid = (live_q[i] + live_q[i + 1]) / 2
        shares[sum(mid > e for e in edges)] += 0.01
    return sum((a - 0.1) * math.log(max(a, 1e-4) / 0.1) for a in shares)


# --- training runs ---------------------------------------------------------------------------


def run_row(run: RunRecord) -> dict[str, Any]:
    return {
        "id": run.id,
        "stream": run.stream,
        "trigger": run.trigger,
        "triggered_by": run.triggered_by,
        "trigger_reason": run.trigger_reason,
        "status": run.status,
        "started_ts": run.started_ts,
        "finished_ts": run.finished_ts,
        "duration_s": _round(run.duration_s, 1),
        "data_from": run.data_from,
        "data_to": run.data_to,
        "records": run.records,
        "champion": run.champion,
        "challenger": run.challenger,
        "decision": run.decision,
        "decision_reason": run.decision_reason,
        "error": run.error,
    }


def status_row(st: TrainerStatus) -> dict[str, Any]:
    return {
        "stream": st.stream,
        "state": st.state,
        "detail": st.detail,
        "since_ts": st.since_ts,
        "updated_ts": st.updated_ts,
        "next_ts": st.next_ts,
        "failures": st.failures,
        "drift": st.drift,
    }


def runs(registry: Registry, limit: int = 100) -> dict[str, Any]:
    """The runs, newest first, and what the trainer service is doing about each stream."""
    return {
        "runs": [run_row(r) for r in registry.runs(limit=limit)],
        "trainer": [status_row(st) for st in registry.statuses()],
    }


def _confusion(ev: dict[str, Any] | None) -> dict[str, int] | None:
    if not ev or ev.get("n") is None or ev.get("positives") is None:
        return None
    n, pos = int(ev["n"]), int(ev["positives"])
    neg = n - pos
    tp = round((ev.get("recall") or 0.0) * pos)
    fp = round((ev.get("false_positive_rate") or 0.0) * neg)
    return {"tp": tp, "fn": pos - tp, "fp": fp, "tn": neg - fp}


def run(registry: Registry, run_id: int) -> dict[str, Any]:
    r = registry.run(run_id)
    manifest_metrics = r.metrics.get("challenger_manifest") or {}
    holdout = manifest_metrics.get("holdout") or {}
    exact = (
        {k: holdout[k] for k in ("tp", "fp", "fn", "tn")}
        if all(k in holdout for k in ("tp", "fp", "fn", "tn"))
        else None
    )
    challenger = registry.find(r.challenger) if r.challenger else None
    champion = registry.find(r.champion) if r.champion else None
    return {
        **run_row(r),
        "params": r.params,
        "metrics": {
            "challenger": r.metrics.get("challenger"),
            "champion": r.metrics.get("champion"),
        },
        "thresholds": {
            "challenger": challenger.threshold if challenger else None,
            "champion": champion.threshold if champion else None,
        },
        "confusion": {
            "challenger": exact or _confusion(r.metrics.get("challenger")),
            "champion": _confusion(r.metrics.get("champion")),
        },
        "quantization": manifest_metrics.get("quantization"),
        "per_kind": manifest_metrics.get("per_kind"),
        "curves": {
            "loss": r.curves.get("loss") or [],
            "challenger": r.curves.get("challenger") or {},
            "champion": r.curves.get("champion") or {},
            "score_quantiles": r.curves.get("score_quantiles") or {},
        },
    }


# --- registry --------------------------------------------------------------------------------


def model_row(m: ModelRecord) -> dict[str, Any]:
    hold = m.metrics.get("holdout") or {}
    return {
        "version": m.version,
        "stream": m.stream,
        "state": m.state,
        "parent": m.parent,
        "run_id": m.run_id,
        "registered_ts": m.registered_ts,
        "updated_ts": m.updated_ts,
        "threshold": _round(m.threshold, 6),
        "feature_spec": m.manifest.get("feature_spec"),
        "data_range": m.manifest.get("data_range"),
        "sha256": m.sha256,
        "roc_auc": hold.get("roc_auc"),
        "pr_auc": hold.get("pr_auc"),
        "precision": hold.get("precision"),
        "recall": hold.get("recall"),
        "alert_rate": hold.get("alert_rate"),
    }


def registry_view(registry: Registry) -> dict[str, Any]:
    streams = []
    for stream in registry.streams():
        champ = registry.champion(stream)
        streams.append(
            {
                "stream": stream,
                "champion": champ.version if champ else None,
                "lineage": [m.version for m in registry.lineage(champ.version)] if champ else [],
                "versions": [model_row(m) for m in registry.models(stream)],
            }
        )
    return {"streams": streams, "actions": registry.actions(limit=50)}


def model(registry: Registry, version: str) -> dict[str, Any] | None:
    m = registry.find(version)
    if m is None:
        return None
    return {
        **model_row(m),
        "lineage": [model_row(x) for x in registry.lineage(version)],
        "metrics": m.metrics,
        "features": m.manifest.get("features"),
        "actions": [
            a
            for a in registry.actions(m.stream, limit=200)
            if a["version"] == version or a["previous"] == version
        ],
    }
