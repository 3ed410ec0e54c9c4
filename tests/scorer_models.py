"""Small signed int8 autoencoders built with real TensorFlow, for the scorer's tests.

The features follow a fixed random linear structure (a few latent factors), so an autoencoder
learns them and an event that breaks the structure scores high: enough to test the scorer's
machinery without the simulator.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edge.scorer.scorers import FloatReferenceScorer, TFLiteScorer
from shared import streams
from shared.contracts import ModelManifest, Scaling, encode
from shared.features import model_features
from shared.signing import generate_private_key, sign_model_dir, write_public_key


class SyntheticFeatures:
    """Rows = latent factors times a fixed mixing matrix, plus noise, in raw feature units.

    ``names``: the features (default: the built-in stream's), e.g. a declared stream's."""

    def __init__(
        self, stream: str, seed: int = 7, latent: int = 4, names: Sequence[str] | None = None
    ) -> None:
        self.names = list(names) if names is not None else model_features(stream)
        rng = np.random.default_rng(seed)
        self.mix = rng.normal(size=(latent, len(self.names))).astype(np.float32)
        self.offset = rng.uniform(-50, 50, size=len(self.names)).astype(np.float32)
        self.unit = rng.uniform(0.5, 20, size=len(self.names)).astype(np.float32)
        self.latent = latent

    def normal(self, n: int, seed: int) -> np.ndarray:
        rng = np.random.default_rng(seed)
        z = rng.normal(size=(n, self.latent)).astype(np.float32)
        noise = 0.05 * rng.normal(size=(n, len(self.names))).astype(np.float32)
        return (z @ self.mix + noise) * self.unit + self.offset

    def typical(self, n: int, seed: int) -> np.ndarray:
        """Normal rows from the middle of the distribution (latent factors a third as wide):
        ordinary events that no model trained on `normal` should score near its threshold."""
        rng = np.random.default_rng(seed)
        z = rng.normal(scale=1 / 3, size=(n, self.latent)).astype(np.float32)
        noise = 0.05 * rng.normal(size=(n, len(self.names))).astype(np.float32)
        return (z @ self.mix + noise) * self.unit + self.offset

    def anomalous(self, n: int, seed: int, feature: int = 3, size: float = 8.0) -> np.ndarray:
        rows = self.normal(n, seed)
        rows[:, feature] += size * self.unit[feature] * np.abs(self.mix[:, feature]).sum()
        return rows

    def as_dict(self, row: np.ndarray) -> dict[str, float]:
        return {n: float(v) for n, v in zip(self.names, row, strict=True)}


def build_model_dir(
    out: Path,
    stream: str,
    data: SyntheticFeatures,
    seed: int = 1,
    version: str = "test-1",
    threshold_quantile: float = 0.999,
    epochs: int = 30,
    key: Any = None,
    train_rows: np.ndarray | None = None,
    feature_spec: str | None = None,
) -> tuple[Path, Path]:
    """Train, quantize to int8, sign. Returns (model_dir, public_key_path).

    ``feature_spec``: what the manifest names; by default the digest of ``stream``'s
    declaration."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf

    tf.keras.utils.set_random_seed(seed)
    x = data.normal(6000, seed) if train_rows is None else train_rows.astype(np.float32)
    mean, scale = x.mean(axis=0), np.where(x.std(axis=0) > 0, x.std(axis=0), 1.0)
    xs = (x - mean) / scale
    width = xs.shape[1]
    model = tf.keras.Sequential(
        [
            tf.keras.Input((width,)),
            tf.keras.layers.Dense(24, activation="relu"),
            tf.keras.layers.Dense(8, activation="relu"),
            tf.keras.layers.Dense(24, activation="relu"),
            tf.keras.layers.Dense(width),
        ]
    )
    model.compile(tf.keras.optimizers.Adam(3e-3), "mse")
    model.fit(xs, xs, epochs=epochs, batch_size=128, verbose=0)

    conv = tf.lite.TFLiteConverter.from_keras_model(model)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = lambda: ([xs[i : i + 1]] for i in range(300))
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    conv.inference_input_type = tf.int8
    conv.inference_output_type = tf.int8
    tflite = conv.convert()

    layers = [
        (lyr.get_weights()[0], lyr.get_weights()[1], lyr.get_config()["activation"])
        for lyr in model.layers
    ]
    # The threshold is chosen on the int8 model's scores, as the cloud trainer does: the
    # gateway scores with it, and its quantization error makes normal rows score higher than
    # the float model's (on float scores, about 1 normal row in 75 lands above a 0.999 quantile).
    int8 = TFLiteScorer(tflite, mean, scale)
    scores, _ = int8.score_batch(data.normal(4000, seed + 1) if train_rows is None else x)
    threshold = float(np.quantile(scores, threshold_quantile))

    out.mkdir(parents=True, exist_ok=True)
    (out / "model.tflite").write_bytes(tflite)
    FloatReferenceScorer.save_npz(out / "reference.npz", layers)
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_content=tflite)
    iq = it.get_input_details()[0]["quantization"]
    oq = it.get_output_details()[0]["quantization"]
    manifest = ModelManifest(
        stream=stream,
        version=version,
        feature_spec=feature_spec or streams.declaration_of(stream).feature_spec,
        features=data.names,
        scaling=Scaling(mean=[float(v) for v in mean], scale=[float(v) for v in scale]),
        threshold=threshold,
        input_quant=(float(iq[0]), int(iq[1])),
        output_quant=(float(oq[0]), int(oq[1])),
        metrics={},
        data_range=(1.0, 2.0),
        created_ts=time.time(),
    )
    (out / "manifest.json").write_bytes(encode(manifest))
    key = key or generate_private_key()
    sign_model_dir(out, key)
    pub = out.parent / f"{out.name}.pub"
    write_public_key(key, pub)
    return out, pub
