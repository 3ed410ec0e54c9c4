"""Scorers: feature matrix in, reconstruction-error scores out.

Score = mean squared reconstruction error over the *scaled* feature vector, the output
dequantized, compared with the float scaled input (not its int8 rounding: a sensor stuck far
outside the training range is clipped by the input quantization, and comparing with the
unclipped value is what keeps such an event anomalous).

>>> import numpy as np
>>> ref = FloatReferenceScorer(mean=np.zeros(2), scale=np.ones(2),
...                            layers=[(np.eye(2, dtype=np.float32), np.zeros(2), "linear")])
>>> scores, errors = ref.score_batch(np.array([[1.0, 2.0]], dtype=np.float32))
>>> float(scores[0]), errors.shape
(0.0, (1, 2))
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edge.scorer.errors import ModelError, ShapeError
from shared.errors import MissingExtraError

# Inputs far outside the training range would overflow float32 once squared.
_CLIP = 1e6


class Scorer(abc.ABC):
    """Scores a batch of feature vectors (rows) with one model."""

    def __init__(self, mean: Sequence[float] | np.ndarray, scale: Sequence[float] | np.ndarray):
        self.mean = np.asarray(mean, dtype=np.float32)
        scale_arr = np.asarray(scale, dtype=np.float32)
        if self.mean.shape != scale_arr.shape or self.mean.ndim != 1:
            raise ModelError("scaling mean and scale must be 1-d and the same length")
        # A constant feature has scale 0 in the training data; scaling it by 1 keeps it finite.
        self.inv_scale = np.where(scale_arr == 0, 1.0, 1.0 / np.where(scale_arr == 0, 1, scale_arr))
        self.inv_scale = self.inv_scale.astype(np.float32)

    @property
    def width(self) -> int:
        return int(self.mean.shape[0])

    def scale(self, matrix: np.ndarray) -> np.ndarray:
        """Raw feature matrix -> the scaled matrix the model sees (NaN means 'usual value')."""
        if matrix.ndim != 2 or matrix.shape[1] != self.width:
            raise ShapeError(
                f"feature matrix has shape {matrix.shape}; the model takes (n, {self.width})"
            )
        scaled = (matrix.astype(np.float32, copy=False) - self.mean) * self.inv_scale
        return np.nan_to_num(scaled, nan=0.0, posinf=_CLIP, neginf=-_CLIP).clip(-_CLIP, _CLIP)

    def score_batch(self, matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Return ``(scores[n], per_feature_errors[n, width])`` for ``n`` raw feature rows."""
        scaled = self.scale(matrix)
        if scaled.shape[0] == 0:
            return np.zeros(0, np.float32), np.zeros((0, self.width), np.float32)
        recon = self.reconstruct(scaled)
        errors = np.square(recon - scaled)
        return errors.mean(axis=1), errors

    @abc.abstractmethod
    def reconstruct(self, scaled: np.ndarray) -> np.ndarray:
        """The autoencoder's float reconstruction of scaled rows."""


# --- int8 model through LiteRT -----------------------------------------------------------


def interpreter_class() -> Any:
    """LiteRT's Interpreter, or tflite-runtime's when only that is installed."""
    try:
        from ai_edge_litert.interpreter import Interpreter

        return Interpreter
    except ImportError:
        pass
    try:
        from tflite_runtime.interpreter import Interpreter

        return Interpreter
    except ImportError:
        raise MissingExtraError("ai-edge-litert (the LiteRT model runtime)", "edge") from None


class TFLiteScorer(Scorer):
    """Runs a full-integer int8 autoencoder through LiteRT in micro-batches.

    Batches are padded up to a power-of-two bucket and each bucket size gets its own
    interpreter, so changing batch sizes never reallocates tensors on the hot path.
    """

    MIN_BUCKET = 16

    def __init__(
        self,
        model: bytes,
        mean: Sequence[float] | np.ndarray,
        scale: Sequence[float] | np.ndarray,
        max_batch: int = 4096,
        num_threads: int = 1,
    ) -> None:
        super().__init__(mean, scale)
        self.model = model
        self.max_batch = max(self.MIN_BUCKET, 1 << (max(1, max_batch) - 1).bit_length())
        self.num_threads = num_threads
        self._interpreters: dict[int, tuple[Any, int, int]] = {}
        probe = self._interpreter(self.MIN_BUCKET)[0]
        inp, out = probe.get_input_details()[0], probe.get_output_details()[0]
        if inp["dtype"] != np.int8 or out["dtype"] != np.int8:
            raise ModelError(
                f"model is not full-integer int8 (input {inp['dtype'].__name__}, "
                f"output {out['dtype'].__name__})"
            )
        if int(inp["shape"][-1]) != self.width or int(out["shape"][-1]) != self.width:
            raise ModelError(
                f"model takes {inp['shape'][-1]} features, the manifest lists {self.width}"
            )
        self.input_quant = (float(inp["quantization"][0]), int(inp["quantization"][1]))
        self.output_quant = (float(out["quantization"][0]), int(out["quantization"][1]))

    @classmethod
    def from_file(
        cls,
        path: str | Path,
        mean: Sequence[float] | np.ndarray,
        scale: Sequence[float] | np.ndarray,
        **kw: Any,
    ) -> TFLiteScorer:
        return cls(Path(path).read_bytes(), mean, scale, **kw)

    def _interpreter(self, bucket: int) -> tuple[Any, int, int]:
        entry = self._interpreters.get(bucket)
        if entry is None:
            try:
                it = interpreter_class()(model_content=self.model, num_threads=self.num_threads)
                inp = it.get_input_details()[0]
                it.resize_tensor_input(inp["index"], [bucket, int(inp["shape"][-1])])
                it.allocate_tensors()
            except ValueError as exc:
                raise ModelError(f"LiteRT cannot load the model: {exc}") from None
            entry = (it, inp["index"], it.get_output_details()[0]["index"])
            self._interpreters[bucket] = entry
        return entry

    def quantize(self, scaled: np.ndarray) -> np.ndarray:
        s, zp = self.input_quant
        return np.clip(np.rint(scaled / s) + zp, -128, 127).astype(np.int8)

    def invoke_int8(self, q: np.ndarray) -> np.ndarray:
        """Raw batched inference: int8 rows in, int8 rows out (the bench times this alone)."""
        n = q.shape[0]
        out = np.empty_like(q)
        for start in range(0, n, self.max_batch):
            chunk = q[start : start + self.max_batch]
            bucket = max(self.MIN_BUCKET, 1 << (chunk.shape[0] - 1).bit_length())
            it, i_idx, o_idx = self._interpreter(bucket)
            if chunk.shape[0] != bucket:
                padded = np.zeros((bucket, q.shape[1]), np.int8)
                padded[: chunk.shape[0]] = chunk
                chunk = padded
            it.set_tensor(i_idx, chunk)
            it.invoke()
            out[start : start + self.max_batch] = it.get_tensor(o_idx)[
                : min(self.max_batch, n - start)
            ]
        return out

    def reconstruct(self, scaled: np.ndarray) -> np.ndarray:
        s, zp = self.output_quant
        return (self.invoke_int8(self.quantize(scaled)).astype(np.float32) - zp) * s


# --- float reference in numpy --------------------------------------------------------------

_ACTIVATIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "linear": lambda x: x,
    "relu": lambda x: np.maximum(x, 0),
    "relu6": lambda x: np.clip(x, 0, 6),
    "tanh": np.tanh,
    "sigmoid": lambda x: 1.0 / (1.0 + np.exp(-x)),
}

Layer = tuple[np.ndarray, np.ndarray, str]


class FloatReferenceScorer(Scorer):
    """The same dense autoencoder in float32 numpy: the reference the int8 model is held to.

    Weights come from ``reference.npz`` beside the model: ``w0, b0, w1, b1, ...`` (kernel as
    Keras stores it, inputs x units) and ``activations`` (one name per layer).
    """

    def __init__(
        self,
        mean: Sequence[float] | np.ndarray,
        scale: Sequence[float] | np.ndarray,
        layers: Sequence[Layer],
    ) -> None:
        super().__init__(mean, scale)
        for _w, _b, act in layers:
            if act not in _ACTIVATIONS:
                raise ModelError(f"unknown activation {act!r}; known: {sorted(_ACTIVATIONS)}")
        self.layers = [
            (np.asarray(w, np.float32), np.asarray(b, np.float32), a) for w, b, a in layers
        ]

    @classmethod
    def from_npz(
        cls,
        path: str | Path,
        mean: Sequence[float] | np.ndarray,
        scale: Sequence[float] | np.ndarray,
    ) -> FloatReferenceScorer:
        with np.load(path, allow_pickle=False) as data:
            acts = [str(a) for a in data["activations"]]
            layers = [(data[f"w{i}"], data[f"b{i}"], a) for i, a in enumerate(acts)]
        return cls(mean, scale, layers)

    @staticmethod
    def save_npz(path: str | Path, layers: Sequence[Layer]) -> None:
        arrays: dict[str, np.ndarray] = {"activations": np.array([a for _, _, a in layers])}
        for i, (w, b, _a) in enumerate(layers):
            arrays[f"w{i}"], arrays[f"b{i}"] = np.asarray(w), np.asarray(b)
        np.savez(path, **arrays)  # type: ignore[arg-type]

    def reconstruct(self, scaled: np.ndarray) -> np.ndarray:
        x = scaled
        for w, b, act in self.layers:
            x = _ACTIVATIONS[act](x @ w + b)
        return x.astype(np.float32)
