"""Streams as data: one TOML declaration per stream, loaded and validated at start-up.

A declaration names a stream's fields (types, units, ranges, which are personal data and
what becomes of them), its device and time fields, how its alerts form, and its features,
built from generic per-device transforms (:mod:`shared.declarations.transforms`) and named
Python ones (:mod:`shared.declarations.named`). Each loaded :class:`Stream` carries a
feature-spec digest that changes whenever a feature's value or order would.

The built-in ``telemetry`` and ``payments`` ship as declarations (:func:`builtin`). In this
release no stage reads declarations yet: they still run the built-in code in
``shared.features``, and the unit tests hold the two equal. See docs/streams.md.
"""

from shared.declarations.errors import DeclarationError
from shared.declarations.loader import builtin, load_dir, load_file, load_text
from shared.declarations.model import Feature, FieldDecl, Stream

__all__ = [
    "DeclarationError",
    "Feature",
    "FieldDecl",
    "Stream",
    "builtin",
    "load_dir",
    "load_file",
    "load_text",
]
