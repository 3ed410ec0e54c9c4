"""Which features each model takes, in order, and their plain names for alert explanations.

Which models fit them is not numbered here: a model carries the digest of its stream's
declaration (``shared.declarations.digest``), and a gateway refuses one built for another.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from shared.errors import ConfigError

if TYPE_CHECKING:  # numpy is imported where vectors are built: the enricher never needs it
    import numpy as np
    import numpy.typing as npt


@functools.cache
def _builtin() -> tuple[dict[str, list[str]], dict[str, str]]:
    """The shipped declarations' model features per stream, and their labels: the names,
    order and words are those of ``shared/declarations/builtin/*.toml``, which
    tests/unit/streams holds equal to what the feature code computes."""
    from shared.declarations import builtin  # it imports this package: not at import time

    names: dict[str, list[str]] = {}
    labels: dict[str, str] = {}
    for stream in builtin().values():
        names[stream.name] = stream.feature_names
        labels.update((f.name, f.label) for f in stream.features)
    return names, labels


def model_features(stream: str) -> list[str]:
    """The ordered feature names the model of ``stream`` takes (a fresh list each call): the
    shipped declaration's of a built-in stream, or a registered declaration's."""
    return list(_names(stream))


def feature_memory_s(stream: str) -> float:
    """Seconds after an episode ends during which its features still carry it: an alert
    raised that soon after a fault ends reports the fault's tail, not a new event.

    From the stream's declaration (``shared.declarations.memory``) at its declared
    ``interval_s``: the shipped telemetry's rolling statistics at one frame a second, longer
    than its coolant trend's three time constants; 0 for payments, whose alerts are single
    events, and for a declared stream that declares no interval (the trainer measures one).
    """
    from shared import streams
    from shared.declarations.memory import memory_s

    _names(stream)  # an unknown stream raises ConfigError
    return memory_s(streams.declaration_of(stream))


def feature_label(name: str) -> str:
    """A plain-language name for a feature of a built-in stream, e.g. for "the 3 features
    that drove this alert" (a declared stream's are its declaration's ``label``)."""
    return _builtin()[1].get(name, name.replace("_", " "))


def _features_of(record: Any) -> Mapping[str, float]:
    feats = record.get("features", record) if isinstance(record, Mapping) else record.features
    return feats


def feature_vector(stream: str, record: Any) -> npt.NDArray[np.float32]:
    """The model input for one anon record (or its ``features`` dict); missing features are 0."""
    import numpy as np

    feats = _features_of(record)
    return np.array([feats.get(n, 0.0) for n in _names(stream)], dtype=np.float32)


def feature_matrix(stream: str, records: Iterable[Any]) -> npt.NDArray[np.float32]:
    """Model inputs for many records, one row each (shape: n x len(model_features(stream)))."""
    import numpy as np

    names = _names(stream)
    rows = [[_features_of(r).get(n, 0.0) for n in names] for r in records]
    return np.array(rows, dtype=np.float32).reshape(len(rows), len(names))


def _names(stream: str) -> list[str]:
    names = _builtin()[0].get(stream)
    if names is not None:
        return names
    from shared import streams

    spec = streams.find(stream)
    if spec is None or spec.declaration is None:
        known = sorted({*_builtin()[0], *(s.name for s in streams.all_streams())})
        raise ConfigError(f"no feature spec for stream {stream!r}; known: {known}")
    return spec.declaration.feature_names
