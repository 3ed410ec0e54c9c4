"""Ranking and threshold metrics in numpy: ROC AUC, PR AUC (average precision), curves.

Convention everywhere: an event is anomalous when ``score > threshold``; labels are 1 for
faulty/fraudulent events and 0 for normal ones. Ties in score are handled exactly (a tie
between a positive and a negative counts half in ROC AUC; PR steps only at distinct scores).

>>> roc_auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])
0.75
>>> round(pr_auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]), 4)
0.8333
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray


def _arrays(labels: ArrayLike, scores: ArrayLike) -> tuple[NDArray[np.bool_], NDArray[np.float64]]:
    y = np.asarray(labels).astype(bool).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise ValueError(f"labels ({y.size}) and scores ({s.size}) differ in length")
    return y, s


def roc_auc(labels: ArrayLike, scores: ArrayLike) -> float:
    """Area under the ROC curve (Mann-Whitney U with average ranks); NaN if a class is empty."""
    y, s = _arrays(labels, scores)
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return math.nan
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(s.size, dtype=np.float64)
    sorted_s = s[order]
    # average rank per group of tied scores
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_s)) + 1]
    ends = np.r_[starts[1:], s.size]
    avg = (starts + ends + 1) / 2.0  # ranks are 1-based: mean of start+1 .. end
    ranks[order] = np.repeat(avg, ends - starts)
    u = ranks[y].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def _average_ranks(s: NDArray[np.float64]) -> NDArray[np.float64]:
    order = np.argsort(s, kind="mergesort")
    sorted_s = s[order]
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_s)) + 1]
    ends = np.r_[starts[1:], s.size]
    ranks = np.empty(s.size, dtype=np.float64)
    ranks[order] = np.repeat((starts + ends + 1) / 2.0, ends - starts)
    return ranks


def spearman(a: ArrayLike, b: ArrayLike) -> float:
    """Spearman rank correlation (average ranks for ties); NaN when either side is constant.

    >>> spearman([1, 2, 3, 4], [10, 20, 30, 40])
    1.0
    >>> spearman([1, 2, 3, 4], [4, 3, 2, 1])
    -1.0
    """
    x = np.asarray(a, dtype=np.float64).ravel()
    y = np.asarray(b, dtype=np.float64).ravel()
    if x.shape != y.shape:
        raise ValueError(f"spearman: {x.size} and {y.size} values differ in length")
    rx, ry = _average_ranks(x), _average_ranks(y)
    if rx.std() == 0 or ry.std() == 0:
        return math.nan
    return float(np.corrcoef(rx, ry)[0, 1])


def _descending_counts(
    y: NDArray[np.bool_], s: NDArray[np.float64]
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    """Cumulative TP and FP when the threshold sits just below each distinct score."""
    order = np.argsort(-s, kind="mergesort")
    s_sorted = s[order]
    y_sorted = y[order]
    last_of_group = np.r_[np.flatnonzero(np.diff(s_sorted)), s.size - 1]
    tps = np.cumsum(y_sorted)[last_of_group].astype(np.float64)
    fps = (last_of_group + 1 - tps).astype(np.float64)
    return tps, fps, s_sorted[last_of_group]


def roc_curve(labels: ArrayLike, scores: ArrayLike) -> tuple[NDArray[Any], NDArray[Any]]:
    """(fpr, tpr), starting at (0, 0) and ending at (1, 1)."""
    y, s = _arrays(labels, scores)
    tps, fps, _ = _descending_counts(y, s)
    n_pos = max(int(y.sum()), 1)
    n_neg = max(y.size - int(y.sum()), 1)
    return np.r_[0.0, fps / n_neg], np.r_[0.0, tps / n_pos]


def pr_curve(labels: ArrayLike, scores: ArrayLike) -> tuple[NDArray[Any], NDArray[Any]]:
    """(recall, precision) at each distinct score, highest threshold first."""
    y, s = _arrays(labels, scores)
    tps, fps, _ = _descending_counts(y, s)
    n_pos = max(int(y.sum()), 1)
    return tps / n_pos, tps / (tps + fps)


def pr_auc(labels: ArrayLike, scores: ArrayLike) -> float:
    """Average precision: sum over recall steps of precision; NaN without positives."""
    y, s = _arrays(labels, scores)
    if not y.any():
        return math.nan
    recall, precision = pr_curve(y, s)
    steps = np.diff(np.r_[0.0, recall])
    return float(np.sum(steps * precision))


@dataclass(frozen=True)
class AtThreshold:
    threshold: float
    precision: float
    recall: float
    alert_rate: float
    tp: int
    fp: int
    fn: int
    tn: int

    def as_dict(self) -> dict[str, Any]:
        return {k: _finite(v) for k, v in asdict(self).items()}


def at_threshold(labels: ArrayLike, scores: ArrayLike, threshold: float) -> AtThreshold:
    y, s = _arrays(labels, scores)
    flagged = s > threshold
    tp = int(np.sum(flagged & y))
    fp = int(np.sum(flagged & ~y))
    fn = int(np.sum(~flagged & y))
    tn = int(y.size - tp - fp - fn)
    precision = tp / (tp + fp) if tp + fp else math.nan
    recall = tp / (tp + fn) if tp + fn else math.nan
    rate = (tp + fp) / y.size if y.size else math.nan
    return AtThreshold(float(threshold), precision, recall, rate, tp, fp, fn, tn)


def threshold_for_alert_rate(normal_scores: ArrayLike, rate: float) -> float:
    """The threshold that flags about ``rate`` of the given (normal) scores."""
    s = np.sort(np.asarray(normal_scores, dtype=np.float64).ravel())
    if s.size == 0:
        raise ValueError("no scores to choose a threshold from")
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"alert rate must be in [0, 1), got {rate}")
    k = int(math.floor(rate * s.size))  # flag at most k scores: those above s[-k-1]
    return float(s[s.size - k - 1])


def threshold_for_precision(labels: ArrayLike, scores: ArrayLike, target: float) -> float:
    """Lowest threshold whose precision reaches ``target`` (the most recall at that precision).

    When no threshold reaches it, the one with the best precision (ties: most recall).
    """
    y, s = _arrays(labels, scores)
    if not y.any():
        raise ValueError("no positive labels to choose a precision threshold from")
    tps, fps, distinct = _descending_counts(y, s)
    precision = tps / (tps + fps)
    # candidate i flags every score >= distinct[i]; the threshold is the next lower score
    below = np.r_[distinct[1:], distinct[-1] - 1.0]
    ok = np.flatnonzero(precision >= target)
    i = int(ok[-1]) if ok.size else int(np.flatnonzero(precision == precision.max())[-1])
    return float(below[i])


def summary(labels: ArrayLike, scores: ArrayLike, threshold: float) -> dict[str, Any]:
    """ROC AUC, PR AUC, and precision/recall at ``threshold``, JSON-ready (NaN -> None)."""
    y, s = _arrays(labels, scores)
    out: dict[str, Any] = {
        "n": int(y.size),
        "positives": int(y.sum()),
        "roc_auc": _finite(roc_auc(y, s)),
        "pr_auc": _finite(pr_auc(y, s)),
    }
    out.update(at_threshold(y, s, threshold).as_dict())
    return out


def _finite(v: Any) -> Any:
    if isinstance(v, float):
        return None if math.isnan(v) else round(v, 6)
    return v
