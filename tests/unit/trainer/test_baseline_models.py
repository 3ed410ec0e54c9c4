"""The baseline models shipped with the edge package: signed, current, and self-describing.

Fails when the shared feature code changes without the baselines being retrained
(``make baseline-models``), so a gateway never ships a model its scorer would refuse.
"""

from __future__ import annotations

import hashlib

import pytest

from shared import signing, streams
from shared.baselines import BASELINE_DIR
from shared.features import model_features

BASELINE = BASELINE_DIR


@pytest.mark.parametrize("stream", ["telemetry", "payments"])
def test_baseline_model_verifies_and_matches_the_feature_code(stream: str) -> None:
    d = BASELINE / stream
    manifest = signing.verify_model_dir(d, BASELINE / "fleet.pub")
    assert manifest.stream == stream
    shipped = streams.declaration_of(stream)
    assert manifest.feature_spec == shipped.feature_spec, "retrain: make baseline-models"
    assert manifest.features == model_features(stream), "retrain: make baseline-models"
    assert len(manifest.scaling.mean) == len(manifest.scaling.scale) == len(manifest.features)
    assert all(s > 0 for s in manifest.scaling.scale)
    assert manifest.threshold > 0 and manifest.input_quant[0] > 0 and manifest.output_quant[0] > 0
    m = manifest.metrics
    q = m["quantization"]
    assert q["int8_roc_auc"] >= q["float_roc_auc"] - q["max_drop"]
    for key in ("roc_auc", "pr_auc", "precision", "recall", "threshold"):
        assert key in m["holdout"]
    assert m["per_kind"] and m["threshold_rule"]["mode"] in ("precision", "false_episodes")
    assert hashlib.sha256((d / "reference.npz").read_bytes()).hexdigest() == m["reference_sha256"]
    if stream == "telemetry":
        assert m["episodes"]["vehicle_hours"] > 0


def test_the_private_key_is_not_shipped() -> None:
    names = {p.name for p in BASELINE.rglob("*")}
    assert "fleet.pub" in names
    assert not any(n.endswith(".key") or n.endswith(".pem") for n in names)
