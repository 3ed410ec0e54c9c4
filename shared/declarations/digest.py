"""The feature-spec digest: which model a stream's features fit.

It is a sha256 over a canonical JSON of everything that decides the feature values and their
order: the device field (the per-device state key), then every feature in order with its
name, transform, inputs, output, ``then`` step and parameters (defaults filled in; a field's
range, typical deviation and enum values, a reference table and a named transform's version
are parameters). Labels, units, field order, ``required``, PII handling and alert settings do
not enter it, so rewording a label keeps every model valid; any change to a feature's inputs,
transform, parameters or place changes it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence

import msgspec

from shared.declarations.schema import Feature

PREFIX = "fs-"
HEX_CHARS = 12


def canonical(device_field: str, features: Sequence[Feature]) -> bytes:
    """The bytes the digest is taken over (sorted keys, no whitespace, exact floats)."""
    body = {
        "device": device_field,
        "features": [
            {
                "name": f.name,
                "transform": f.transform,
                "inputs": list(f.inputs),
                "output": f.output,
                "then": f.then,
                "params": msgspec.to_builtins(f.params),
            }
            for f in features
        ],
    }
    return json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


def feature_spec(device_field: str, features: Sequence[Feature]) -> str:
    """The feature-spec version string of a stream: ``fs-`` and 12 hex characters."""
    return PREFIX + hashlib.sha256(canonical(device_field, features)).hexdigest()[:HEX_CHARS]


# Before the built-in streams' models carried their declarations' digests, they carried a
# hand-numbered spec. A gateway keeps loading such a model (its active one, after an upgrade in
# place) while the shipped declaration is still the one the number meant: (stream, number) ->
# the digest it equals.
NUMBERED: dict[tuple[str, str], str] = {
    ("telemetry", "fs3"): "fs-4836888ce6f1",
    ("payments", "fs3"): "fs-9053e80737bc",
}


def fits(stream: str, declared: str, model_spec: str) -> bool:
    """Whether a model built for ``model_spec`` takes the features of ``stream``'s declaration,
    whose digest is ``declared``.

    >>> fits("telemetry", "fs-4836888ce6f1", "fs3"), fits("telemetry", "fs-000000000000", "fs3")
    (True, False)
    """
    return model_spec == declared or NUMBERED.get((stream, model_spec)) == declared
