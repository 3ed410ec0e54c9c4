"""A real (small) TensorFlow training run on simulator data, its int8 model run through LiteRT,
the quantization check refusing a broken model, and the eval report over the model's scores."""

from __future__ import annotations

import json
from pathlib import Path

import msgspec
import numpy as np
import pytest
from click.testing import CliRunner
from firmware_sim import FAULT_KINDS, Fleet, SimSettings

from cloud.evaluation import ranking
from cloud.evaluation.cli import eval_cmd
from cloud.trainer import autoencoder as ae
from cloud.trainer.data import Records, records_from_messages
from cloud.trainer.errors import QuantizationError
from cloud.trainer.pipeline import (
    TrainedModel,
    TrainSettings,
    check_quantization,
    train_stream,
    write_model_dir,
)
from shared import signing, streams
from shared.contracts import Score
from shared.features import model_features

SMALL = TrainSettings(epochs=3, max_fit_rows=20_000, hidden=(24, 8), seed=5)


@pytest.fixture(scope="module")
def telemetry() -> Records:
    fleet = Fleet(
        SimSettings(vehicles=16, duration_s=900, seed=3, fault_rates={k: 1.5 for k in FAULT_KINDS})
    )
    return records_from_messages(list(fleet.events()), fleet.labels)["telemetry"]


@pytest.fixture(scope="module")
def trained(telemetry: Records) -> TrainedModel:
    return train_stream(telemetry, SMALL)


def _litert_scores(content: bytes, xs: np.ndarray) -> np.ndarray:
    """Score with LiteRT directly, independent of the trainer's own runner."""
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_content=content)
    inp, out = it.get_input_details()[0], it.get_output_details()[0]
    assert inp["dtype"] == np.int8 and out["dtype"] == np.int8
    it.resize_tensor_input(inp["index"], list(xs.shape))
    it.allocate_tensors()
    s_in, z_in = inp["quantization"]
    s_out, z_out = out["quantization"]
    it.set_tensor(inp["index"], np.clip(np.rint(xs / s_in) + z_in, -128, 127).astype(np.int8))
    it.invoke()
    recon = (it.get_tensor(out["index"]).astype(np.float32) - z_out) * s_out
    return np.square(recon - xs).mean(axis=1)


def test_model_directory_is_signed_and_complete(trained: TrainedModel, tmp_path: Path) -> None:
    key = signing.generate_private_key()
    out = write_model_dir(trained, tmp_path / "telemetry", key)
    manifest = signing.verify_model_dir(out, key.public_key())
    assert (
        manifest.stream == "telemetry"
        and manifest.feature_spec == streams.declaration_of("telemetry").feature_spec
    )
    assert manifest.features == model_features("telemetry")
    assert len(manifest.scaling.mean) == len(manifest.features)
    q = manifest.metrics["quantization"]
    assert q["int8_roc_auc"] >= q["float_roc_auc"] - 0.005
    assert manifest.metrics["holdout"]["positives"] > 0
    assert set(manifest.metrics["per_kind"]) <= set(FAULT_KINDS)
    assert "episodes" in manifest.metrics and manifest.threshold > 0
    assert manifest.metrics["training"]["epochs"] == 3
    assert (out / "reference.npz").exists()
    assert len((out / "manifest.json").read_bytes()) < 16 * 1024


def test_int8_model_in_litert_agrees_with_float(trained: TrainedModel, telemetry: Records) -> None:
    m = trained.manifest
    xs = ae.scale(telemetry.x[:4000], m.scaling.mean, m.scaling.scale)
    int8 = _litert_scores(trained.tflite, xs)
    flt = ae.float_scores(trained.layers, xs)
    assert (m.input_quant[0], m.output_quant[0]) == pytest.approx(
        (ae.Int8Model(trained.tflite).input_quant[0], ae.Int8Model(trained.tflite).output_quant[0])
    )
    # per event: within 10 % of the float score plus a small absolute slack
    assert np.all(np.abs(int8 - flt) <= 0.1 * flt + 0.05), np.max(np.abs(int8 - flt))
    # ranking: the same anomalies come out on top
    y = telemetry.labelled[:4000]
    if y.any() and not y.all():
        assert ranking.roc_auc(y, int8) >= ranking.roc_auc(y, flt) - 0.005


def test_quantization_check_refuses_a_broken_int8_model(trained: TrainedModel) -> None:
    hold = trained.holdout
    m = trained.manifest
    xs = ae.scale(hold.x, m.scaling.mean, m.scaling.scale)
    # A converted model that lost the autoencoder: it passes its input straight through
    # (calibrated on the holdout itself, so nothing clips and the int8 step stays fine), so
    # its "errors" are int8 rounding noise and no longer rank anomalies. The check must
    # refuse it against the float scores. (A far wider calibration range would round every
    # input to zero, and the squared input would rank anomalies by itself.)
    import keras

    inputs = keras.Input((xs.shape[1],))
    identity = keras.layers.Dense(xs.shape[1], use_bias=False)
    broken_model = keras.Model(inputs, identity(inputs))
    identity.set_weights([np.eye(xs.shape[1], dtype=np.float32)])
    int8 = ae.Int8Model(ae.quantize(broken_model, xs.astype(np.float32))).scores(xs)
    flt = ae.float_scores(trained.layers, xs)
    with pytest.raises(QuantizationError, match="below the float model"):
        check_quantization(hold.labelled, flt, int8, 0.005)


def test_eval_report_over_the_models_scores(trained: TrainedModel, tmp_path: Path) -> None:
    hold, m = trained.holdout, trained.manifest
    scores = [
        Score(
            event_id=str(e),
            ts=float(t),
            stream="telemetry",
            token=str(tok),
            score=float(s),
            threshold=m.threshold,
            model_version=m.version,
            anomalous=bool(s > m.threshold),
        )
        for e, t, tok, s in zip(
            hold.event_ids, hold.ts, hold.tokens, trained.holdout_int8, strict=True
        )
    ]
    enc = msgspec.json.Encoder()
    (tmp_path / "scores.jsonl").write_bytes(b"\n".join(enc.encode(s) for s in scores))
    labels = tmp_path / "labels.jsonl"
    fleet_labels = Fleet(
        SimSettings(vehicles=16, duration_s=900, seed=3, fault_rates={k: 1.5 for k in FAULT_KINDS})
    )
    list(fleet_labels.events())
    labels.write_bytes(b"\n".join(enc.encode(lab) for lab in fleet_labels.labels))
    out = tmp_path / "report"
    result = CliRunner().invoke(
        eval_cmd,
        ["--labels", str(labels), "--scores", str(tmp_path / "scores.jsonl"), "--out", str(out)],
    )
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    tel = report["streams"]["telemetry"]
    assert tel["roc_auc"] == pytest.approx(m.metrics["holdout"]["roc_auc"], abs=1e-6)
    assert tel["pr_auc"] == pytest.approx(m.metrics["holdout"]["pr_auc"], abs=1e-6)
    assert tel["recall"] == pytest.approx(m.metrics["holdout"]["recall"] or 0.0, abs=1e-6)
    assert tel["episodes"]["alert_source"] == "replayed from scores"
    assert (out / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "Detection report" in result.output
