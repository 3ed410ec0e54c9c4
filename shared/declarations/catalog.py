"""The streams a gateway or the cloud runs: the built-in ones and an operator's directory.

:func:`load_streams` is what stages call at start-up. It loads every declaration of the
configured directory beside the shipped ones and refuses, naming the file and the key:

- a declared stream taking a built-in stream's name or MQTT topic suffix;
- what the stages cannot run for a declared stream in this release: a ``named`` transform
  whose fields the declaration lacks or types otherwise, or whose keyed state (a card's, a
  driver's, the vehicle's) its declaration does not tokenize in that state's namespace.
"""

from __future__ import annotations

from pathlib import Path

from shared.declarations import named
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
        if feature.transform != "named":
            continue
        entry = named.get(feature.params["named"])
        if entry is None or not entry.runnable:
            runnable = ", ".join(n for n in named.names() if (e := named.get(n)) and e.runnable)
            raise DeclarationError(
                stream.source,
                f"features.{feature.name}",
                f"named transform {feature.params['named']!r} is computed by built-in code "
                f"only; the named transforms a declared stream may use: {runnable}",
            )
        keyed = entry.keyed
        reads, text = (
            (keyed.reads, keyed.text_reads) if keyed else (feature.inputs, entry.text_reads)
        )
        for name in reads:
            if name not in stream.fields:
                raise DeclarationError(
                    stream.source,
                    f"features.{feature.name}",
                    f"named transform {entry.name!r} reads {name!r}, which is not declared",
                )
            kind = stream.fields[name].type
            if name not in text and kind not in ("float", "int", "bool"):
                raise DeclarationError(
                    stream.source,
                    f"features.{feature.name}",
                    f"named transform {entry.name!r} computes with {name!r} as a number; it "
                    f"is declared {kind!r}",
                )
        problem = named.keyed_field_problem(entry, stream.fields)
        if problem is not None:
            raise DeclarationError(stream.source, f"features.{feature.name}", problem)
