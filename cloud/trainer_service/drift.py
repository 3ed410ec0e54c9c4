"""Drift: has the live traffic moved away from what the champion was trained on?

Two signals, either one triggers a retrain:

- the population stability index (PSI) of each model feature, recent window versus the
  champion's training window, binned at the training window's deciles; and
- the champion's alert rate on the recent window versus its rate on the holdout.

PSI = sum over bins of (recent% - train%) * ln(recent% / train%). Rule of thumb: < 0.1 stable,
0.1-0.25 moderate, > 0.25 a real shift.

>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> p = profile(rng.normal(size=(5000, 1)), ["x"])
>>> float(psi(p, rng.normal(size=(5000, 1)))[0]) < 0.05
True
>>> float(psi(p, rng.normal(loc=1.0, size=(5000, 1)))[0]) > 0.25
True
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

_FLOOR = 1e-4  # an empty bin would make the log infinite


@dataclass(frozen=True)
class Profile:
    """Per feature: the bin edges (training deciles) and the training share of each bin."""

    features: list[str]
    edges: list[list[float]]
    shares: list[list[float]]
    n: int

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Profile:
        return cls(
            list(data["features"]),
            [list(e) for e in data["edges"]],
            [list(s) for s in data["shares"]],
            int(data["n"]),
        )


def _clean(x: NDArray[Any]) -> NDArray[np.float64]:
    return np.nan_to_num(np.asarray(x, dtype=np.float64), nan=0.0, posinf=1e12, neginf=-1e12)


def _shares(col: NDArray[np.float64], edges: NDArray[np.float64]) -> NDArray[np.float64]:
    idx = np.searchsorted(edges, col, side="right")
    counts = np.bincount(idx, minlength=edges.size + 1).astype(np.float64)
    return counts / max(1, col.size)


def profile(x: NDArray[Any], features: list[str], bins: int = 10) -> Profile:
    """The reference distribution of a training window (rows x features)."""
    x = _clean(x)
    edges, shares = [], []
    for j in range(x.shape[1]):
        e = (
            np.unique(np.quantile(x[:, j], np.linspace(0, 1, bins + 1)[1:-1]))
            if x.size
            else np.zeros(0)
        )
        edges.append([float(v) for v in e])
        shares.append([float(v) for v in _shares(x[:, j], e)])
    return Profile(list(features), edges, shares, int(x.shape[0]))


def psi(ref: Profile, x: NDArray[Any]) -> NDArray[np.float64]:
    """PSI of every feature of ``x`` against the reference profile."""
    x = _clean(x)
    out = np.zeros(len(ref.features))
    for j in range(len(ref.features)):
        e = np.asarray(ref.edges[j])
        expected = np.maximum(np.asarray(ref.shares[j]), _FLOOR)
        actual = np.maximum(_shares(x[:, j], e), _FLOOR)
        out[j] = float(np.sum((actual - expected) * np.log(actual / expected)))
    return out


@dataclass(frozen=True)
class DriftSettings:
    # A feature whose PSI exceeds this has shifted; this many such features mean drift.
    psi_threshold: float = 0.25
    min_drifted_features: int = 1
    # The champion's recent alert rate may reach max(ratio x expected, expected + increase).
    alert_rate_ratio: float = 2.0
    alert_rate_increase: float = 0.01
    # Below this many recent events nothing is concluded.
    min_events: int = 500
    # The alert-rate signal leaves out this share of a gateway's vehicles, those with the most
    # anomalous frames: a few faulty vehicles (whose labels arrive only after their episodes
    # end) are not drift, a shift across many vehicles is.
    trim_vehicles: float = 0.1


@dataclass(frozen=True)
class DriftReport:
    drifted: bool
    reason: str
    events: int
    psi: dict[str, float] = field(default_factory=dict)
    alert_rate: float | None = None
    expected_alert_rate: float | None = None
    # Per gateway: {"alert_rate": ..., "scored": ..., "drifted": ...} (alert-rate signal).
    gateways: dict[str, dict[str, Any]] = field(default_factory=dict)
    # The gateways whose traffic drifted (empty: the fleet's pooled features, or none).
    drifted_gateways: list[str] = field(default_factory=list)
    # Per drifted gateway: the features its alerts blame, with their share of the error.
    blamed: dict[str, list[tuple[str, float]]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def detect(
    ref: Profile | None,
    recent: NDArray[Any] | None,
    settings: DriftSettings,
    alert_rate: float | None = None,
    expected_alert_rate: float | None = None,
    scored_events: int = 0,
    gateway_rates: Mapping[str, tuple[float, int]] | None = None,
) -> DriftReport:
    """Compare the recent window with the reference; say whether (and why) it drifted.

    ``ref`` None: no feature profile to compare with (PSI is skipped, the alert rate still
    counts). ``gateway_rates``: each gateway's recent alert rate and scored events, judged
    one by one against ``expected_alert_rate`` (instead of the single ``alert_rate``).
    """
    n = 0 if recent is None else int(recent.shape[0])
    reasons: list[str] = []
    by_feature, psi_note = _feature_drift(ref, recent, settings, reasons)
    rates = (
        dict(gateway_rates)
        if gateway_rates is not None
        else ({"": (alert_rate, scored_events)} if alert_rate is not None else {})
    )
    gateways, drifted_gateways = _rate_drift(rates, expected_alert_rate, settings, reasons)
    pooled = rates.get("") if "" in rates else None
    rate_out = pooled[0] if pooled else None
    if reasons:
        return DriftReport(
            True,
            "; ".join(reasons),
            n,
            by_feature,
            rate_out,
            expected_alert_rate,
            gateways,
            drifted_gateways,
        )
    notes = [psi_note]
    if gateways:
        notes.append(
            "alert rate "
            + ", ".join(f"{gw} {100 * g['alert_rate']:.2f}%" for gw, g in gateways.items())
            + (
                f" (holdout {100 * expected_alert_rate:.2f}%)"
                if expected_alert_rate is not None
                else ""
            )
        )
    return DriftReport(
        False, "; ".join(notes), n, by_feature, rate_out, expected_alert_rate, gateways, []
    )


def _feature_drift(
    ref: Profile | None, recent: NDArray[Any] | None, settings: DriftSettings, reasons: list[str]
) -> tuple[dict[str, float], str]:
    """Each feature's PSI (recent against the reference) and a note on them; a reason is
    added to ``reasons`` when enough features shifted."""
    n = 0 if recent is None else int(recent.shape[0])
    if ref is None or recent is None:
        return {}, "no feature profile to compare with"
    if n < settings.min_events:
        return {}, f"only {n} recent events (need {settings.min_events})"
    values = psi(ref, recent)
    by_feature = {f: round(float(v), 4) for f, v in zip(ref.features, values, strict=True)}
    shifted = sorted(
        (f for f, v in by_feature.items() if v > settings.psi_threshold),
        key=lambda f: -by_feature[f],
    )
    if len(shifted) >= settings.min_drifted_features:
        top = ", ".join(f"{f} {by_feature[f]:.2f}" for f in shifted[:3])
        reasons.append(f"PSI over {settings.psi_threshold} on {len(shifted)} features ({top})")
    worst = max(by_feature.values(), default=0.0)
    return by_feature, f"stable (largest feature PSI {worst:.3f})"


def _rate_drift(
    rates: Mapping[str, tuple[float, int]],
    expected_alert_rate: float | None,
    settings: DriftSettings,
    reasons: list[str],
) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """Each gateway's alert rate against the holdout's (``""``: the pooled rate): the
    gateways' figures and those that drifted; a reason is added to ``reasons`` for each."""
    gateways: dict[str, dict[str, Any]] = {}
    drifted_gateways = []
    for gw, (rate, scored) in sorted(rates.items()):
        hit = False
        if expected_alert_rate is not None and scored >= settings.min_events:
            ceiling = max(
                expected_alert_rate * settings.alert_rate_ratio,
                expected_alert_rate + settings.alert_rate_increase,
            )
            hit = rate > ceiling
        if gw:
            gateways[gw] = {"alert_rate": round(rate, 6), "scored": scored, "drifted": hit}
        if hit:
            where = f"{gw}: " if gw else ""
            reasons.append(
                f"{where}alert rate {100 * rate:.2f}% over {scored} scored events "
                f"against {100 * (expected_alert_rate or 0.0):.2f}% on the holdout"
            )
            if gw:
                drifted_gateways.append(gw)
    return gateways, drifted_gateways


def blamed_features(alerts: list[Any], top: int = 3) -> list[tuple[str, float]]:
    """The features the alerts' reconstruction errors point at: each feature's share of the
    summed error of every alert's top contributions (the last state of each alert)."""
    last: dict[str, Any] = {}
    for a in alerts:
        last[a.alert_id] = a
    totals: dict[str, float] = {}
    for a in last.values():
        for c in a.top_features:
            totals[c.feature] = totals.get(c.feature, 0.0) + max(0.0, float(c.error))
    whole = sum(totals.values())
    if whole <= 0:
        return []
    ranked = sorted(totals.items(), key=lambda kv: -kv[1])[:top]
    return [(f, round(v / whole, 3)) for f, v in ranked]


def trimmed_rate(per_key: Mapping[str, tuple[int, int]], trim: float) -> tuple[float, int]:
    """(anomalous share, frames) over keys, leaving out the ``trim`` share of keys with the
    highest anomalous share; ``per_key`` maps a key to (anomalous frames, frames).

    >>> trimmed_rate({"a": (9, 10), "b": (0, 10), "c": (1, 10)}, 0.34)
    (0.05, 20)
    """
    ranked = sorted(per_key.values(), key=lambda c: -(c[0] / c[1]) if c[1] else 0.0)
    kept = ranked[int(len(ranked) * trim) :]
    frames = sum(n for _, n in kept)
    return (sum(a for a, _ in kept) / frames if frames else 0.0), frames
