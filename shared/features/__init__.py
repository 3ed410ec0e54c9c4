"""Feature code shared by the edge (enricher, scorer) and the cloud (trainer).

- :func:`anonymize` turns a raw event into its anon record plus per-key state updates (pure).
- :class:`Anonymizer` carries the state along for a replayed sequence of events.
- :func:`model_features`, :func:`feature_vector`, :func:`feature_matrix` build model inputs;
  :func:`feature_label` gives a feature's plain name. Which models fit them is the digest of
  the stream's declaration (``shared.streams.declaration_of(name).feature_spec``).
"""

from shared.features.anonymize import Anonymized, Anonymizer, FeatureError, anonymize
from shared.features.spec import (
    feature_label,
    feature_matrix,
    feature_memory_s,
    feature_vector,
    model_features,
)
from shared.features.state import (
    FeatureState,
    KeyState,
    decode_state,
    encode_state,
)

__all__ = [
    "Anonymized",
    "Anonymizer",
    "FeatureError",
    "FeatureState",
    "KeyState",
    "anonymize",
    "decode_state",
    "encode_state",
    "feature_label",
    "feature_matrix",
    "feature_memory_s",
    "feature_vector",
    "model_features",
]
