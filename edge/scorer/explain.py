"""Why an event scored high: the features that contributed most reconstruction error."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from shared.contracts import Contribution


def top_features(
    errors: np.ndarray, names: Sequence[str], label: Callable[[str], str], k: int = 3
) -> list[Contribution]:
    """The ``k`` largest per-feature errors of one row, biggest first, in plain names.

    Ties keep the model's feature order so the same row always explains itself the same way.

    >>> top_features(np.array([0.1, 3.0, 0.5]), ["a", "b", "c"], str.upper, k=2)
    [Contribution(feature='B', error=3.0), Contribution(feature='C', error=0.5)]
    """
    if errors.shape != (len(names),):
        raise ValueError(f"{errors.shape[0]} errors for {len(names)} feature names")
    order = np.argsort(-errors, kind="stable")[:k]
    return [Contribution(label(names[i]), round(float(errors[i]), 6)) for i in order]
