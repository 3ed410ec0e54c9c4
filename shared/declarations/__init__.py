"""Streams as data: one TOML declaration per stream, loaded and validated at start-up.

A declaration names a stream's fields (types, units, ranges, which are personal data and
what becomes of them), its device and time fields, how its alerts form, and its features,
built from generic per-device transforms (:mod:`shared.declarations.transforms`) and named
Python ones (:mod:`shared.declarations.named`). Each loaded :class:`Stream` carries a
feature-spec digest that changes whenever a feature's value or order would.

Gateways and the cloud load an operator's declarations from their ``[streams] dir``
(:func:`shared.streams.use_declarations`, :mod:`shared.declarations.catalog`): the bridge
validates with a contract built from each (:mod:`~shared.declarations.events`), the enricher
anonymizes and computes features with :mod:`~shared.declarations.vector` (event by event:
:mod:`~shared.declarations.anonymize`), the scorer and trainer take the declared features and
digest. ``fleetsentry streams infer`` drafts a declaration from a recording
(:mod:`~shared.declarations.infer`). The built-in ``telemetry`` and ``payments`` ship as
declarations (:func:`builtin`), run by the same engine; their records keep their topics'
shapes (:mod:`~shared.declarations.shapes`), and the unit tests hold them equal to the
feature code in ``shared.features``. See docs/streams.md.
"""

from shared.declarations.errors import DeclarationError
from shared.declarations.loader import builtin, load_dir, load_file, load_text
from shared.declarations.schema import Feature, FieldDecl, Stream

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
