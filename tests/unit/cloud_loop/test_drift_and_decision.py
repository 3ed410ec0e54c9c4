"""Drift detection (PSI, alert rate) and the champion/challenger decision: pure logic."""

from __future__ import annotations

import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from cloud.trainer_service.decision import (
    Evaluation,
    PromotionRule,
    curves,
    decide,
    evaluate,
    recall_at_fpr,
)
from cloud.trainer_service.drift import DriftSettings, Profile, detect, profile, psi


def _x(n: int, shift: float = 0.0, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.column_stack([rng.normal(shift, 1, n), rng.exponential(2, n), rng.integers(0, 2, n)])


FEATURES = ["amount_z", "card_uses_1h", "cat_fuel"]


def test_psi_is_small_for_the_same_distribution_and_large_for_a_shift() -> None:
    ref = profile(_x(5000), FEATURES)
    same = psi(ref, _x(5000, seed=1))
    assert same.max() < 0.05
    moved = psi(ref, _x(5000, shift=1.5, seed=2))
    assert moved[0] > 0.5 and moved[1] < 0.05 and moved[2] < 0.05


def test_profile_round_trips_through_json() -> None:
    ref = profile(_x(2000), FEATURES)
    again = Profile.from_json(ref.to_json())
    x = _x(1000, shift=1.0, seed=3)
    assert np.allclose(psi(ref, x), psi(again, x))


def test_constant_and_nan_features_do_not_break_psi() -> None:
    x = _x(1000)
    x[:, 2] = 1.0
    ref = profile(x, FEATURES)
    y = _x(1000, seed=5)
    y[:, 2] = 1.0
    y[:10, 0] = np.nan
    values = psi(ref, y)
    assert np.isfinite(values).all() and values[2] == 0.0


def test_detect_names_shifted_features_and_alert_rate_jumps() -> None:
    s = DriftSettings(min_events=500)
    ref = profile(_x(5000), FEATURES)
    calm = detect(
        ref, _x(2000, seed=7), s, alert_rate=0.012, expected_alert_rate=0.01, scored_events=2000
    )
    assert not calm.drifted and "stable" in calm.reason
    shifted = detect(ref, _x(2000, shift=2.0, seed=8), s)
    assert shifted.drifted and "amount_z" in shifted.reason
    alerts = detect(
        ref, _x(2000, seed=9), s, alert_rate=0.08, expected_alert_rate=0.01, scored_events=2000
    )
    assert alerts.drifted and "alert rate 8.00%" in alerts.reason
    few = detect(ref, _x(100, shift=3.0), s)
    assert not few.drifted and "only 100" in few.reason


@settings(max_examples=40, deadline=None)
@given(st.floats(-3, 3), st.integers(0, 10_000))
def test_psi_is_never_negative(shift: float, seed: int) -> None:
    ref = profile(_x(500, seed=seed), FEATURES)
    assert (psi(ref, _x(300, shift=shift, seed=seed + 1)) >= 0).all()


def _eval(pr: float, fpr: float, recall: float) -> Evaluation:
    return Evaluation(
        pr_auc=pr,
        roc_auc=0.9,
        precision=0.5,
        recall=recall,
        false_positive_rate=fpr,
        alert_rate=0.02,
        n=1000,
        positives=20,
    )


def test_decision_promotes_only_a_better_model() -> None:
    rule = PromotionRule()
    champ = _eval(0.80, 0.020, 0.90)
    assert decide(_eval(0.80, 0.020, 0.90), champ, rule)[0] is False
    assert decide(_eval(0.81, 0.020, 0.90), champ, rule)[0] is True
    worse = decide(_eval(0.76, 0.001, 0.95), champ, rule)
    assert worse[0] is False and "ranks worse" in worse[1]
    # After drift: the champion still ranks well but alerts on far too much normal traffic.
    refit = decide(_eval(0.787, 0.003, 0.89), _eval(0.80, 0.226, 0.90), rule)
    assert refit[0] is True and "false-positive rate 0.30% vs 22.60%" in refit[1]
    fewer_false = decide(_eval(0.80, 0.010, 0.89), champ, rule)
    assert fewer_false[0] is True and "false-positive rate 1.00% vs 2.00%" in fewer_false[1]
    lost_recall = decide(_eval(0.80, 0.010, 0.70), champ, rule)
    assert lost_recall[0] is False
    assert decide(_eval(0.5, 0.1, 0.5), None, rule) == (True, "no champion to compare with")
    no_pos = decide(_eval(math.nan, 0.0, math.nan), champ, rule)
    assert no_pos[0] is False
    # Ranks better on a holdout with few positives, but would alert on 12x the normal traffic
    # (a demo run promoted this before the gateways' shadow check refused it on one gateway).
    noisy = decide(_eval(0.105, 0.0126, 0.5), _eval(0.029, 0.0010, 0.5), rule)
    assert noisy[0] is False and "too many false alerts" in noisy[1]
    assert decide(_eval(0.105, 0.0110, 0.5), _eval(0.029, 0.0010, 0.5), rule)[0] is True


def test_a_drifted_champions_recall_counts_at_the_challengers_false_positive_rate() -> None:
    """After drift the champion alerts on 16 % of normal events, which buys it recall: held to
    the challenger's 0.16 % it reaches far less, and the challenger is what the gateways need."""
    rule = PromotionRule()
    challenger, champion = _eval(0.950, 0.0016, 0.90), _eval(0.961, 0.1623, 0.99)
    kept = decide(challenger, champion, rule)
    assert kept[0] is False and "not better" in kept[1]
    promoted = decide(challenger, champion, rule, champion_recall_at_fpr=0.80)
    assert promoted[0] is True
    assert "recall 0.900 vs 0.800 at the challenger's false-positive rate" in promoted[1]
    # Held to the challenger's rate the champion still finds more: kept.
    assert decide(challenger, champion, rule, champion_recall_at_fpr=0.95)[0] is False
    # A matched recall above the champion's own (a coarse holdout) does not raise the bar.
    assert decide(_eval(0.80, 0.010, 0.89), _eval(0.80, 0.020, 0.90), rule, 0.99)[0] is True


def test_recall_at_a_false_positive_rate() -> None:
    y = np.array([0] * 100 + [1] * 10)
    s = np.r_[np.arange(100, dtype=float), np.arange(90, 100, dtype=float) + 0.5]
    # Flagging at most 5 of 100 negatives: those above 94, so positives 94.5 .. 99.5 (6 of 10).
    assert recall_at_fpr(y, s, 0.05) == 0.6
    assert recall_at_fpr(y, s, 0.0) == 0.1  # above the top negative (99): only 99.5
    assert recall_at_fpr(y, s, 1.0) == 1.0
    assert math.isnan(recall_at_fpr(y[:100], s[:100], 0.05))


def test_evaluate_and_curves_on_the_same_holdout() -> None:
    y = np.array([0] * 90 + [1] * 10)
    good = np.r_[np.linspace(0, 1, 90), np.linspace(2, 3, 10)]
    noisy = np.r_[np.linspace(0, 2.5, 90), np.linspace(0.5, 3, 10)]
    a, b = evaluate(y, good, 1.5), evaluate(y, noisy, 1.5)
    assert a.pr_auc == 1.0 and a.false_positive_rate == 0.0 and a.recall == 1.0
    assert b.pr_auc < a.pr_auc and b.false_positive_rate > 0
    assert decide(a, b, PromotionRule())[0] and not decide(b, a, PromotionRule())[0]
    c = curves(y, noisy, max_points=20)
    assert len(c["roc"]) <= 20 and c["roc"][0] == [0.0, 0.0] and c["roc"][-1] == [1.0, 1.0]
