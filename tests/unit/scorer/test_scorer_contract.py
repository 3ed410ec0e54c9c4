"""Every Scorer implementation honours one contract; TFLite and float agree within a bound."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from edge.scorer import FloatReferenceScorer, Scorer, TFLiteScorer
from edge.scorer.errors import ModelError, ShapeError
from edge.scorer.model_runner import load_model
from tests.scorer_models import SyntheticFeatures

Factory = Callable[[Path, Path], Scorer]

IMPLEMENTATIONS: dict[str, Factory] = {
    "tflite": lambda d, key: load_model(d, "telemetry", key).scorer,
    "float": lambda d, key: load_model(d, "telemetry", key, reference=True).scorer,
}


@pytest.fixture(params=sorted(IMPLEMENTATIONS))
def scorer(request: pytest.FixtureRequest, telemetry_model: tuple[Path, Path]) -> Scorer:
    return IMPLEMENTATIONS[request.param](*telemetry_model)


def test_scores_have_one_value_per_row_and_one_error_per_feature(
    scorer: Scorer, telemetry_data: SyntheticFeatures
) -> None:
    rows = telemetry_data.normal(37, seed=100)
    scores, errors = scorer.score_batch(rows)
    assert scores.shape == (37,) and errors.shape == (37, len(telemetry_data.names))
    assert np.all(errors >= 0) and np.all(np.isfinite(scores))
    np.testing.assert_allclose(scores, errors.mean(axis=1), rtol=1e-5)


def test_batching_does_not_change_a_rows_score(
    scorer: Scorer, telemetry_data: SyntheticFeatures
) -> None:
    rows = telemetry_data.normal(300, seed=101)
    whole, _ = scorer.score_batch(rows)
    parts = np.concatenate([scorer.score_batch(rows[i : i + 7])[0] for i in range(0, 300, 7)])
    # int8 is bit-exact; float matmul may sum in another order for another batch size.
    np.testing.assert_allclose(whole, parts, rtol=1e-4)


def test_anomalies_score_above_normal_rows(
    scorer: Scorer, telemetry_data: SyntheticFeatures
) -> None:
    normal, _ = scorer.score_batch(telemetry_data.normal(500, seed=102))
    odd, errors = scorer.score_batch(telemetry_data.anomalous(50, seed=103, feature=3))
    assert np.median(odd) > 10 * np.median(normal)
    # The broken feature is the one that explains the error.
    assert np.mean(errors.argmax(axis=1) == 3) > 0.9


def test_empty_batch_and_wrong_width(scorer: Scorer) -> None:
    scores, errors = scorer.score_batch(np.zeros((0, scorer.width), np.float32))
    assert scores.shape == (0,) and errors.shape == (0, scorer.width)
    with pytest.raises(ShapeError, match="takes"):
        scorer.score_batch(np.zeros((2, scorer.width + 1), np.float32))


def test_missing_and_extreme_values_stay_finite(
    scorer: Scorer, telemetry_data: SyntheticFeatures
) -> None:
    rows = telemetry_data.normal(4, seed=104)
    rows[0, 0], rows[1, 1], rows[2, 2] = np.nan, np.inf, 1e30
    scores, _ = scorer.score_batch(rows)
    assert np.all(np.isfinite(scores))
    assert scores[1] > scores[3] and scores[2] > scores[3]


def test_int8_and_float_agree_within_the_quantization_bound(
    telemetry_model: tuple[Path, Path], telemetry_data: SyntheticFeatures
) -> None:
    model_dir, key = telemetry_model
    tfl = load_model(model_dir, "telemetry", key).scorer
    ref = load_model(model_dir, "telemetry", key, reference=True).scorer
    assert isinstance(tfl, TFLiteScorer) and isinstance(ref, FloatReferenceScorer)
    normal = telemetry_data.normal(2000, seed=105)
    odd = telemetry_data.anomalous(200, seed=106)
    step = tfl.output_quant[0]
    # RMS reconstruction error = sqrt(score); int8 rounding of inputs, weights and activations
    # moves it by a few output quantization steps at most (triangle inequality per row).
    s_t, _ = tfl.score_batch(normal)
    s_f, _ = ref.score_batch(normal)
    rms_gap = np.abs(np.sqrt(s_t) - np.sqrt(s_f))
    assert np.quantile(rms_gap, 0.99) <= 2 * step, (np.quantile(rms_gap, 0.99), step)
    limit = 127 * tfl.input_quant[0]
    in_range = np.abs(tfl.scale(normal)).max(axis=1) < limit
    # Rare rows outside the representative data saturate a hidden layer: a wider, still
    # bounded gap.
    assert in_range.mean() > 0.95 and rms_gap[in_range].max() <= 12 * step
    # Both put every anomaly above every normal row (the ranking the threshold relies on).
    o_t, _ = tfl.score_batch(odd)
    o_f, _ = ref.score_batch(odd)
    assert o_t.min() > s_t.max() and o_f.min() > s_f.max()
    # Out of the int8 input range the model sees a clipped value; the score stays large.
    np.testing.assert_allclose(np.log(o_t), np.log(o_f), atol=np.log(2))


def test_tampered_or_foreign_models_are_refused(
    tmp_path: Path, telemetry_model: tuple[Path, Path]
) -> None:
    model_dir, key = telemetry_model
    bad = tmp_path / "bad"
    shutil.copytree(model_dir, bad)
    blob = bytearray((bad / "model.tflite").read_bytes())
    blob[-10] ^= 0xFF
    (bad / "model.tflite").write_bytes(bytes(blob))
    with pytest.raises(ModelError, match="signature"):
        load_model(bad, "telemetry", key)
    with pytest.raises(ModelError, match="for stream 'telemetry', not 'payments'"):
        load_model(model_dir, "payments", key)


@pytest.fixture(scope="module")
def fleet_records() -> dict[str, list[object]]:
    """Anonymized simulator records: what the shipped models see at a gateway."""
    from firmware_sim import Fleet, SimSettings

    from shared.features import Anonymizer
    from shared.tokens import Tokenizer

    anon = Anonymizer(Tokenizer(b"contract-test-secret"))
    out: dict[str, list[object]] = {"telemetry": [], "payments": []}
    for topic, payload in Fleet(
        SimSettings(vehicles=20, duration_s=300, seed=5, payment_rate=30.0)
    ).events():
        out[topic.rsplit("/", 1)[-1]].append(anon.message(topic, payload))
    return out


@pytest.mark.parametrize("stream", ["telemetry", "payments"])
def test_shipped_baselines_agree_with_their_float_weights(
    stream: str, fleet_records: dict[str, list[object]]
) -> None:
    from edge.scorer.model_runner import baseline_dir
    from shared.features import feature_matrix

    tfl = load_model(baseline_dir(stream), stream)
    ref = load_model(baseline_dir(stream), stream, reference=True)
    rows = feature_matrix(stream, fleet_records[stream])
    assert rows.shape[0] > 50
    s_t, _ = tfl.scorer.score_batch(rows)
    s_f, _ = ref.scorer.score_batch(rows)
    assert isinstance(tfl.scorer, TFLiteScorer)
    step = tfl.scorer.output_quant[0]
    gap = np.abs(np.sqrt(s_t) - np.sqrt(s_f))
    assert np.quantile(gap, 0.99) <= 2 * step, (np.quantile(gap, 0.99), step)
    # Decisions at the shipped threshold: the int8 model and its float weights agree on every
    # event whose score is further from the threshold than the quantization bound, and on
    # almost all of those within that band.
    near = np.abs(np.sqrt(s_f) - np.sqrt(tfl.threshold)) <= 2 * step
    agree = (s_t > tfl.threshold) == (s_f > tfl.threshold)
    assert agree[~near].all(), np.flatnonzero(~agree & ~near)
    assert agree.mean() >= 0.95, agree.mean()
