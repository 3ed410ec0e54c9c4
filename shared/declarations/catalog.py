"""The streams a gateway or the cloud runs: the built-in ones and an operator's directory.

:func:`load_streams` is what stages call at start-up. It loads every declaration of the
configured directory beside the shipped ones and refuses, naming the file and the key:

- a declared stream taking a built-in stream's name or MQTT topic suffix;
- what the stages cannot run for a declared stream in this release: a ``named`` transform
  (those are written against the built-in streams' events) and ``decision = true`` (only
  payments send decisions back to the device).
"""

from __future__ import annotations

from pathlib import Path

from shared.declarations.errors import DeclarationError
from shared.declarations.loader import builtin, load_dir
from shared.declarations.schema import Stream

BUILTIN_NAMES = ("telemetry", "payments")


def load_streams(directory: str | Path | None = None) -> dict[str, Stream]:
    """The built-in streams, then every declaration of ``directory`` (None: none)."""
    streams = dict(builtin())
    if directory is None:
        return streams
    for stream in load_dir(Path(directory).expanduser()).values():
        for key, value in (("name", stream.name), ("topic", stream.topic)):
            taken = next(
                (s for s in streams.values() if (s.name if key == "name" else s.topic) == value),
                None,
            )
            if taken is not None:
                raise DeclarationError(
                    stream.source,
                    f"stream.{key}",
                    f"{value!r} is already declared by {taken.source}"
                    + (" (built in)" if taken.name in BUILTIN_NAMES else ""),
                )
        check_runnable(stream)
        streams[stream.name] = stream
    return streams


def declared(directory: str | Path | None) -> list[Stream]:
    """Only the operator's streams of ``directory`` (checked as by :func:`load_streams`)."""
    return [s for s in load_streams(directory).values() if s.name not in BUILTIN_NAMES]


def check_runnable(stream: Stream) -> None:
    """Refuse what no stage runs for a declared (not built-in) stream."""
    for feature in stream.features:
        if feature.transform == "named":
            raise DeclarationError(
                stream.source,
                f"features.{feature.name}",
                "named transforms serve the built-in streams' code; a declared stream's "
                "features use the generic transforms (see docs/streams.md)",
            )
    if stream.decision:
        raise DeclarationError(
            stream.source,
            "stream.decision",
            "only the built-in payments stream sends decisions back to the device in this release",
        )
