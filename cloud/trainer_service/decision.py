"""Champion versus challenger on the same labelled holdout: promote only a better model.

"Better" for an anomaly detector judged by operators: it ranks fraud and faults at least as
well (PR AUC, the figure that matters with rare positives), and either ranks them clearly
better or raises clearly fewer false alerts at its threshold for about the same recall.

>>> champ = Evaluation(pr_auc=0.80, roc_auc=0.95, precision=0.5, recall=0.9,
...                    false_positive_rate=0.02, alert_rate=0.03, n=1000, positives=20)
>>> decide(champ, champ, PromotionRule())[0]
False
>>> better = Evaluation(pr_auc=0.86, roc_auc=0.97, precision=0.6, recall=0.9,
...                     false_positive_rate=0.01, alert_rate=0.02, n=1000, positives=20)
>>> decide(better, champ, PromotionRule())
(True, 'PR AUC 0.860 vs 0.800 (+0.060)')
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from cloud.evaluation import ranking


@dataclass(frozen=True)
class PromotionRule:
    # Promote on ranking: PR AUC up by at least this much.
    min_pr_auc_gain: float = 0.005
    # ... or on false alerts at the threshold the gateways alert at: false-positive rate down
    # by this fraction at a recall no more than max_recall_loss below the champion's ...
    min_fpr_reduction: float = 0.2
    max_recall_loss: float = 0.02
    # ... as long as PR AUC (ranking over every threshold) is no more than this lower. After
    # drift, the champion's threshold no longer fits: its ranking on the holdout can stay high
    # while it alerts on a fifth of the fleet's normal traffic, and a challenger that ranks a
    # little lower but alerts where it should is what the gateways need.
    max_pr_auc_loss: float = 0.03
    # Never promote what the gateways' shadow check would refuse: a false-positive rate above
    # this many times the champion's plus this much (ranking gains on a holdout with few
    # positives can be noise; false alerts on every normal event are not).
    max_fpr_ratio: float = 2.0
    max_fpr_increase: float = 0.01


@dataclass(frozen=True)
class Evaluation:
    pr_auc: float
    roc_auc: float
    precision: float
    recall: float
    false_positive_rate: float
    alert_rate: float
    n: int
    positives: int

    def to_json(self) -> dict[str, Any]:
        return {
            k: (None if isinstance(v, float) and math.isnan(v) else v)
            for k, v in asdict(self).items()
        }


def evaluate(labels: ArrayLike, scores: ArrayLike, threshold: float) -> Evaluation:
    y = np.asarray(labels).astype(bool)
    s = np.asarray(scores, dtype=np.float64)
    at = ranking.at_threshold(y, s, threshold)
    negatives = at.fp + at.tn
    return Evaluation(
        pr_auc=ranking.pr_auc(y, s),
        roc_auc=ranking.roc_auc(y, s),
        precision=at.precision,
        recall=at.recall,
        false_positive_rate=at.fp / negatives if negatives else math.nan,
        alert_rate=at.alert_rate,
        n=int(y.size),
        positives=int(y.sum()),
    )


def recall_at_fpr(labels: ArrayLike, scores: ArrayLike, fpr: float) -> float:
    """The recall ``scores`` reach with the threshold that flags at most ``fpr`` of the
    negatives (NaN without positives or negatives)."""
    y = np.asarray(labels).astype(bool)
    s = np.asarray(scores, dtype=np.float64)
    neg, pos = np.sort(s[~y])[::-1], s[y]
    if not neg.size or not pos.size or math.isnan(fpr):
        return math.nan
    allowed = int(math.floor(fpr * neg.size + 1e-9))  # negatives that may score above it
    threshold = neg[allowed] if allowed < neg.size else -math.inf
    return float(np.mean(pos > threshold))


def decide(
    challenger: Evaluation,
    champion: Evaluation | None,
    rule: PromotionRule,
    champion_recall_at_fpr: float | None = None,
) -> tuple[bool, str]:
    """(promote?, why) for a challenger against the champion on the same holdout.

    ``champion_recall_at_fpr``: the champion's recall with its threshold moved to flag no
    more of the holdout's normal events than the challenger does (``recall_at_fpr``). A
    champion whose threshold no longer fits (after drift) reaches a high recall by alerting
    on much of the normal traffic; its recall at the challenger's false-positive rate is the
    one to keep up with."""
    if champion is None:
        return True, "no champion to compare with"
    if math.isnan(challenger.pr_auc):
        return False, "the holdout has no labelled positives: nothing to judge the model on"
    if math.isnan(champion.pr_auc):
        return True, "the champion cannot be scored on this holdout"
    gain = challenger.pr_auc - champion.pr_auc
    versus = f"PR AUC {challenger.pr_auc:.3f} vs {champion.pr_auc:.3f} ({gain:+.3f})"
    fpr_c, fpr_p = challenger.false_positive_rate, champion.false_positive_rate
    if (
        not math.isnan(fpr_c)
        and not math.isnan(fpr_p)
        and fpr_c > fpr_p * rule.max_fpr_ratio + rule.max_fpr_increase
    ):
        return False, (
            f"too many false alerts: false-positive rate {100 * fpr_c:.2f}% vs "
            f"{100 * fpr_p:.2f}% (at most {rule.max_fpr_ratio:g}x + "
            f"{100 * rule.max_fpr_increase:g} points); {versus}"
        )
    if gain < -rule.max_pr_auc_loss:
        return False, f"ranks worse: {versus}"
    if gain >= rule.min_pr_auc_gain:
        return True, versus
    matched = champion_recall_at_fpr
    recall_p = champion.recall
    if matched is not None and not math.isnan(matched) and matched < recall_p:
        recall_p = matched
    recall_ok = challenger.recall >= recall_p - rule.max_recall_loss
    if fpr_p > 0 and fpr_c <= fpr_p * (1 - rule.min_fpr_reduction) and recall_ok:
        same = " at the challenger's false-positive rate" if recall_p < champion.recall else ""
        return True, (
            f"false-positive rate {100 * fpr_c:.2f}% vs {100 * fpr_p:.2f}% at "
            f"recall {challenger.recall:.3f} vs {recall_p:.3f}{same}; {versus}"
        )
    return (
        False,
        f"not better: {versus}, false-positive rate {100 * fpr_c:.2f}% vs {100 * fpr_p:.2f}%",
    )


def curves(labels: ArrayLike, scores: ArrayLike, max_points: int = 200) -> dict[str, Any]:
    """ROC and PR points (thinned to ``max_points``) for charts."""
    fpr, tpr = ranking.roc_curve(labels, scores)
    recall, precision = ranking.pr_curve(labels, scores)
    return {"roc": _thin(fpr, tpr, max_points), "pr": _thin(recall, precision, max_points)}


def _thin(a: np.ndarray, b: np.ndarray, k: int) -> list[list[float]]:
    if not a.size:
        return []
    idx = np.unique(np.linspace(0, a.size - 1, min(k, a.size)).astype(int))
    return [[round(float(a[i]), 5), round(float(b[i]), 5)] for i in idx]
