"""Loading signed model directories and holding the one the scorer uses right now.

A model is accepted only when its signature verifies against the fleet's public key, its
manifest names this gateway's feature spec, and its feature list is what the shared feature
code produces for the stream (for a declared stream: the digest and the feature list of this
gateway's declaration of it). ``ModelHolder.swap`` replaces the model between transactions,
so every batch is scored by exactly one model version.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from edge.scorer.errors import ModelError
from edge.scorer.scorers import FloatReferenceScorer, Scorer, TFLiteScorer
from shared.baselines import BASELINE_DIR, BASELINE_PUBLIC_KEY, baseline_dir, is_baseline
from shared.contracts import ModelManifest
from shared.errors import ConfigError

__all__ = [
    "BASELINE_DIR",
    "BASELINE_PUBLIC_KEY",
    "Model",
    "ModelHolder",
    "baseline_dir",
    "check_manifest",
    "load_model",
]

REFERENCE_FILE = "reference.npz"


@dataclass(frozen=True)
class Model:
    """A verified model: its manifest and a ready scorer."""

    manifest: ModelManifest
    scorer: Scorer
    path: Path | None = None

    @property
    def stream(self) -> str:
        return self.manifest.stream

    @property
    def version(self) -> str:
        return self.manifest.version

    @property
    def threshold(self) -> float:
        return self.manifest.threshold

    @property
    def features(self) -> list[str]:
        return self.manifest.features


def check_manifest(manifest: ModelManifest, stream: str) -> None:
    """Refuse a model built for another stream or another version of the stream's features.

    A model must carry the feature-spec digest and the feature list of this gateway's
    declaration of the stream, the shipped one for the built-in streams (docs/streams.md).
    """
    from shared import streams
    from shared.declarations.digest import fits

    if manifest.stream != stream:
        raise ModelError(
            f"model {manifest.version} is for stream {manifest.stream!r}, not {stream!r}"
        )
    try:
        declaration = streams.declaration_of(stream)
    except ConfigError as e:
        raise ModelError(f"model {manifest.version}: {e}") from e
    if not fits(stream, declaration.feature_spec, manifest.feature_spec):
        raise ModelError(
            f"model {manifest.version} was built for feature spec "
            f"{manifest.feature_spec!r}; this gateway's declaration of {stream} "
            f"({declaration.source}) computes {declaration.feature_spec!r}"
        )
    expected = list(declaration.feature_names)
    if list(manifest.features) != expected:
        raise ModelError(
            f"model {manifest.version} takes features {manifest.features}; this "
            f"gateway's declaration of {stream} ({declaration.source}) produces {expected}"
        )
    n = len(expected)
    if len(manifest.scaling.mean) != n or len(manifest.scaling.scale) != n:
        raise ModelError(f"model {manifest.version}: scaling does not have {n} entries")


def load_model(
    model_dir: str | Path,
    stream: str,
    public_key: str | Path | Sequence[Path] | None = None,
    reference: bool = False,
    max_batch: int = 4096,
) -> Model:
    """Verify and load a model directory (``reference=True``: the float numpy scorer).

    ``public_key``: the key, or the keys (any may have signed it), the model must be signed
    with (default: the key shipped with the baselines)."""
    from shared.signing import SignatureError, verify_model_dir

    model_dir = Path(model_dir)
    if public_key is None:
        keys = [BASELINE_PUBLIC_KEY]
    elif isinstance(public_key, str | Path):
        keys = [Path(public_key)]
    else:
        keys = [Path(k) for k in public_key]
    if is_baseline(model_dir):
        # The shipped baseline is trusted as far as the installed package is, and carries its
        # own key: a fleet that signs with its own key still scores from its first minute.
        keys = [BASELINE_PUBLIC_KEY]
    errors = []
    for key in keys:
        try:
            manifest = verify_model_dir(model_dir, key)
            break
        except SignatureError as exc:
            errors.append(str(exc))
    else:
        raise ModelError(f"refusing model: {'; '.join(errors)}")
    check_manifest(manifest, stream)
    mean, scale = manifest.scaling.mean, manifest.scaling.scale
    scorer: Scorer
    if reference:
        ref = model_dir / REFERENCE_FILE
        if not ref.exists():
            raise ModelError(f"{model_dir}: no {REFERENCE_FILE} (float weights) beside the model")
        scorer = FloatReferenceScorer.from_npz(ref, mean, scale)
    else:
        scorer = TFLiteScorer.from_file(
            model_dir / "model.tflite", mean, scale, max_batch=max_batch
        )
    return Model(manifest, scorer, model_dir)


class ModelHolder:
    """The current model of one stream. ``swap`` takes effect at the next batch boundary.

    The scorer reads ``current`` once per batch (a plain attribute read is atomic), so a swap
    from another thread never splits a batch between two models.
    """

    def __init__(self, model: Model) -> None:
        self._model = model
        self._lock = threading.Lock()
        self.swaps = 0

    @property
    def current(self) -> Model:
        return self._model

    def swap(self, model: Model) -> Model:
        """Install ``model``; returns the one it replaces (kept by callers for rollback)."""
        if model.stream != self._model.stream:
            raise ModelError(
                f"cannot swap a {model.stream} model into the {self._model.stream} scorer"
            )
        with self._lock:
            old, self._model = self._model, model
            self.swaps += 1
        return old
