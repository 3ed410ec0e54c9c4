"""The autoencoder: scaling, the Keras model, int8 conversion, and scoring both ways.

Score = mean squared reconstruction error over the scaled feature vector. The int8 model's
output is dequantized and compared with the float scaled input, exactly as the edge scores it.
TensorFlow is imported lazily so the rest of the cloud package works without the extra.
"""

from __future__ import annotations

import contextlib
import io
import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from cloud.trainer.errors import TrainerError
from shared.errors import MissingExtraError

# Same guard as the edge scorer: a wild value must not overflow float32 once squared.
CLIP = 1e6
MIN_SCALE = 1e-6
Layer = tuple[NDArray[np.float32], NDArray[np.float32], str]


def tensorflow() -> Any:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    try:
        import tensorflow as tf
    except ImportError:
        raise MissingExtraError("tensorflow-cpu (model training)", "cloud") from None
    return tf


# --- scaling -----------------------------------------------------------------------------


ENVELOPE_Q = 1e-4  # the normal envelope: from this quantile to its mirror
ENVELOPE_SPAN = 3.0  # scaled units from the mean to the envelope's edge, at most
ENVELOPE_MARGIN = 0.5  # scaled units the model still follows beyond the envelope


def fit_scaling(x: NDArray[np.float32]) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Mean and scale per feature: the standard deviation, widened for heavy-tailed features.

    Each feature's normal envelope (its 0.01 % .. 99.99 % range) ends up within about
    ``ENVELOPE_SPAN`` scaled units of the mean, so one heavy-tailed sensor cannot drown the
    others in the mean squared error. A constant feature gets scale 1.
    """
    if x.shape[0] == 0:
        raise TrainerError("no normal records to fit the input scaling on")
    x64 = x.astype(np.float64)
    with np.errstate(invalid="ignore"), warnings_ignored():
        mean = np.nan_to_num(np.nanmean(x64, axis=0), nan=0.0)
        std = np.nanstd(x64, axis=0)
        lo, hi = np.nanquantile(x64, [ENVELOPE_Q, 1 - ENVELOPE_Q], axis=0)
    reach = np.nan_to_num(np.maximum(hi - mean, mean - lo), nan=0.0) / ENVELOPE_SPAN
    std = np.maximum(np.nan_to_num(std, nan=0.0), reach)
    std = np.where(np.isfinite(std) & (std > MIN_SCALE), std, 1.0)
    return mean, std


def envelope(xs: NDArray[np.float32]) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
    """Per-feature bounds (scaled units) of normal training data, widened by the margin."""
    lo, hi = np.quantile(xs, [ENVELOPE_Q, 1 - ENVELOPE_Q], axis=0)
    return (lo - ENVELOPE_MARGIN).astype(np.float32), (hi + ENVELOPE_MARGIN).astype(np.float32)


@contextlib.contextmanager
def warnings_ignored() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        yield


def scale(
    x: NDArray[Any], mean: Sequence[float] | NDArray[Any], std: Sequence[float] | NDArray[Any]
) -> NDArray[np.float32]:
    """Raw features -> model input; NaN (feature not available) means the usual value, 0."""
    m = np.asarray(mean, dtype=np.float32)
    s = np.asarray(std, dtype=np.float32)
    out = (x.astype(np.float32, copy=False) - m) / s
    return np.nan_to_num(out, nan=0.0, posinf=CLIP, neginf=-CLIP).clip(-CLIP, CLIP)


# --- the Keras model ---------------------------------------------------------------------


def build_autoencoder(
    width: int,
    hidden: Sequence[int],
    learning_rate: float,
    seed: int,
    bounds: tuple[NDArray[np.float32], NDArray[np.float32]] | None = None,
) -> Any:
    """Dense encoder ``hidden`` (last = bottleneck), mirrored decoder, linear output.

    With ``bounds``, a fixed first layer clips each feature to its normal envelope (a diagonal
    Dense with relu6: exact in int8 and in the edge's numpy reference). The model then cannot
    reconstruct a value beyond what normal vehicles showed, so such a value keeps its full
    error: autoencoders otherwise happily extrapolate an overheating engine along the
    "engine temperature" direction they learned.
    """
    tensorflow()
    import keras

    keras.utils.set_random_seed(seed)
    inputs = keras.Input((width,), name="features")
    h = inputs
    if bounds is not None:
        lo, hi = bounds
        gain = 6.0 / np.maximum(hi - lo, 1e-3)
        clip = keras.layers.Dense(width, activation="relu6", trainable=False, name="envelope")
        h = clip(h)
        clip.set_weights([np.diag(gain).astype(np.float32), (-lo * gain).astype(np.float32)])
    for i, units in enumerate(hidden):
        h = keras.layers.Dense(units, activation="relu", name=f"enc{i}")(h)
    for i, units in enumerate(reversed(list(hidden)[:-1])):
        h = keras.layers.Dense(units, activation="relu", name=f"dec{i}")(h)
    outputs = keras.layers.Dense(width, activation="linear", name="reconstruction")(h)
    model = keras.Model(inputs, outputs, name="autoencoder")
    model.compile(optimizer=keras.optimizers.Adam(learning_rate), loss="mse")
    return model


def dense_layers(model: Any) -> list[Layer]:
    """(kernel inputs x units, bias, activation) per Dense layer, for the numpy reference."""
    out: list[Layer] = []
    for layer in model.layers:
        if not layer.get_weights():
            continue
        w, b = layer.get_weights()
        act = layer.get_config()["activation"]
        out.append((np.asarray(w, np.float32), np.asarray(b, np.float32), str(act)))
    return out


def float_reconstruct(layers: Sequence[Layer], xs: NDArray[np.float32]) -> NDArray[np.float32]:
    h = xs
    for w, b, act in layers:
        h = h @ w + b
        if act == "relu":
            h = np.maximum(h, 0)
        elif act == "relu6":
            h = np.clip(h, 0, 6)
        elif act != "linear":
            raise TrainerError(f"activation {act!r} has no numpy reference")
    return h.astype(np.float32)


def float_scores(layers: Sequence[Layer], xs: NDArray[np.float32]) -> NDArray[np.float32]:
    out = np.empty(xs.shape[0], np.float32)
    for i in range(0, xs.shape[0], 65_536):
        chunk = xs[i : i + 65_536]
        out[i : i + 65_536] = np.square(float_reconstruct(layers, chunk) - chunk).mean(axis=1)
    return out


def error_scale(
    layers: Sequence[Layer], xs: NDArray[np.float32], floor: float, quantile: float
) -> NDArray[np.float64]:
    """Per feature: the root of a high quantile of its squared error on normal data.

    A quantile rather than the mean: a heavy-tailed feature (lateral acceleration in a sharp
    bend) must not reach the threshold on its own, while a feature that is tight on normal
    vehicles (coolant temperature) should count for more when it leaves its range.
    """
    err = np.square(float_reconstruct(layers, xs) - xs).astype(np.float64)
    return np.sqrt(np.maximum(np.quantile(err, quantile, axis=0), floor))


def fold_error_scale(layers: Sequence[Layer], c: NDArray[np.float64]) -> list[Layer]:
    """Re-express the model in units where feature j is divided by ``c[j]``.

    Dividing a feature's scale by ``c[j]`` divides its squared error by ``c[j]**2``, so the
    score becomes the mean of each feature's error relative to its error on normal data: a sensor the model normally reconstructs well (coolant temperature) then weighs
    more than one it never can (hard braking). The first layer's rows are multiplied and the
    output layer's columns divided, so the network computes exactly the same function.
    """
    c32 = c.astype(np.float32)
    out = [(w.copy(), b.copy(), a) for w, b, a in layers]
    w0, b0, a0 = out[0]
    out[0] = (w0 * c32[:, None], b0, a0)
    wl, bl, al = out[-1]
    out[-1] = (wl / c32[None, :], bl / c32, al)
    return out


# --- int8 --------------------------------------------------------------------------------


def quantize(model: Any, representative: NDArray[np.float32], batch: int = 100) -> bytes:
    """Full-integer int8 TFLite (int8 weights, activations, input and output)."""
    tf = tensorflow()
    if representative.shape[0] == 0:
        raise TrainerError("no representative rows for int8 calibration")

    def rep() -> Iterator[list[NDArray[np.float32]]]:
        for i in range(0, representative.shape[0], batch):
            yield [representative[i : i + batch]]

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = rep
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.int8
    converter.inference_output_type = tf.int8
    # The exporter prints its SavedModel signature to stdout; keep the progress display clean.
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        # "Statistics for quantized inputs were expected": the int8 input's range comes from
        # the representative dataset, which is exactly what we want.
        warnings.simplefilter("ignore", UserWarning)
        return bytes(converter.convert())


class Int8Model:
    """Runs a full-integer model through LiteRT, as the edge does, in fixed-size batches."""

    BATCH = 4096

    def __init__(self, content: bytes) -> None:
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError:
            raise MissingExtraError("ai-edge-litert (the LiteRT runtime)", "cloud") from None
        self._it = Interpreter(model_content=content, num_threads=2)
        inp = self._it.get_input_details()[0]
        out = self._it.get_output_details()[0]
        if inp["dtype"] != np.int8 or out["dtype"] != np.int8:
            raise TrainerError("converted model is not full-integer int8")
        self.width = int(inp["shape"][-1])
        self._it.resize_tensor_input(inp["index"], [self.BATCH, self.width])
        self._it.allocate_tensors()
        self._in, self._out = inp["index"], out["index"]
        self.input_quant = (float(inp["quantization"][0]), int(inp["quantization"][1]))
        self.output_quant = (float(out["quantization"][0]), int(out["quantization"][1]))

    def reconstruct(self, xs: NDArray[np.float32]) -> NDArray[np.float32]:
        s_in, z_in = self.input_quant
        s_out, z_out = self.output_quant
        q = np.clip(np.rint(xs / s_in) + z_in, -128, 127).astype(np.int8)
        out = np.empty(xs.shape, np.float32)
        buf = np.zeros((self.BATCH, self.width), np.int8)
        for i in range(0, q.shape[0], self.BATCH):
            chunk = q[i : i + self.BATCH]
            buf[: chunk.shape[0]] = chunk
            self._it.set_tensor(self._in, buf)
            self._it.invoke()
            res = self._it.get_tensor(self._out)[: chunk.shape[0]]
            out[i : i + chunk.shape[0]] = (res.astype(np.float32) - z_out) * s_out
        return out

    def scores(self, xs: NDArray[np.float32]) -> NDArray[np.float32]:
        return np.square(self.reconstruct(xs) - xs).mean(axis=1).astype(np.float32)


def keras_progress_callback(on_epoch: Callable[[int, float], None]) -> Any:
    import keras

    class _Progress(keras.callbacks.Callback):
        def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
            on_epoch(epoch + 1, float((logs or {}).get("loss", float("nan"))))

    return _Progress()
