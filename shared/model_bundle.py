"""One signed model directory as one Kafka message (the compacted ``models`` topic).

The cloud publisher packs the champion of a stream; the edge agent unpacks it into a fresh
directory and verifies the signature there, exactly as if the directory had been copied.
Only the signed files and the signature travel: anything else beside them (float reference
weights, reports) is not covered by the signature and is never trusted at the edge.

The message is msgspec JSON (bytes as base64), keyed by the stream name:

>>> import tempfile, pathlib
>>> d = pathlib.Path(tempfile.mkdtemp())
>>> for name in SIGNED_FILES: _ = (d / name).write_bytes(name.encode())
>>> b = unpack(pack(d, stream="payments", version="v1"))
>>> (b.stream, b.version, sorted(b.files))
('payments', 'v1', ['manifest.json', 'model.tflite', 'signature'])
"""

from __future__ import annotations

from pathlib import Path

import msgspec

from shared.errors import FleetsentryError
from shared.signing import MANIFEST_FILE, MODEL_FILE, SIGNATURE_FILE
from shared.topics import MODEL_MESSAGE_BYTES

BUNDLE_SCHEMA = 1
SIGNED_FILES = (MODEL_FILE, MANIFEST_FILE, SIGNATURE_FILE)
# JSON field names, base64 padding and the key take a little room beside the file bytes.
_ENVELOPE_BYTES = 4096


class BundleError(FleetsentryError):
    """A model message cannot be built or read (missing file, too large, malformed)."""


class ModelBundle(msgspec.Struct, frozen=True, kw_only=True):
    """A model directory in transit. ``stream``/``version`` are routing hints only: the
    receiver trusts nothing but the signed manifest inside ``files``."""

    schema: int = BUNDLE_SCHEMA
    stream: str
    version: str
    published_ts: float = 0.0
    files: dict[str, bytes]
    # The signed release record (shared/releases.py): what makes a gateway run these files.
    release: bytes = b""


def max_model_bytes() -> int:
    """Largest model.tflite + manifest + signature that fits one message (base64 costs 4/3)."""
    return (MODEL_MESSAGE_BYTES - _ENVELOPE_BYTES) * 3 // 4


def pack(
    model_dir: Path, stream: str, version: str, published_ts: float = 0.0, release: bytes = b""
) -> bytes:
    """Encode the signed files of ``model_dir``; raise BundleError when over the topic limit."""
    files: dict[str, bytes] = {}
    for name in SIGNED_FILES:
        try:
            files[name] = (Path(model_dir) / name).read_bytes()
        except FileNotFoundError:
            raise BundleError(
                f"{model_dir}: {name} is missing; only signed model directories are published"
            ) from None
    size = sum(len(v) for v in files.values())
    if size > max_model_bytes():
        raise BundleError(
            f"{model_dir}: {size:,} bytes of model files exceed the {max_model_bytes():,} that "
            f"fit the models topic (max.message.bytes {MODEL_MESSAGE_BYTES:,}); raise "
            f"MODEL_MESSAGE_BYTES in shared/topics.py and the brokers' limit together"
        )
    bundle = ModelBundle(
        stream=stream, version=version, published_ts=published_ts, files=files, release=release
    )
    return msgspec.json.encode(bundle)


def unpack(data: bytes) -> ModelBundle:
    """Decode a model message; raise BundleError naming what is wrong."""
    if len(data) > MODEL_MESSAGE_BYTES:
        raise BundleError(
            f"model message is {len(data):,} bytes, over the {MODEL_MESSAGE_BYTES:,} limit"
        )
    try:
        bundle = msgspec.json.decode(data, type=ModelBundle)
    except msgspec.DecodeError as exc:
        raise BundleError(f"not a model message: {exc}") from None
    if bundle.schema != BUNDLE_SCHEMA:
        raise BundleError(
            f"model message schema {bundle.schema} is not supported "
            f"(this build reads {BUNDLE_SCHEMA})"
        )
    unknown = set(bundle.files) - set(SIGNED_FILES)
    if unknown:
        raise BundleError(f"model message carries unexpected files {sorted(unknown)}")
    return bundle


def write_files(bundle: ModelBundle, out_dir: Path) -> Path:
    """Write the bundle's files into ``out_dir`` (created; must not hold other files)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=False)
    for name, content in bundle.files.items():
        (out_dir / name).write_bytes(content)
    return out_dir
