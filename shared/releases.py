"""Model releases: what lets a gateway tell the current model from a replayed or stale one.

A model directory's signature says "the cloud built these bytes"; it does not say "run them
now". A release does: a record signed by one of the fleet's keys, naming the fleet, the
stream, the model version, the sha256 of its files, a release number that only grows per
stream, and an expiry. A gateway keeps the highest number it accepted per stream and refuses
anything not newer, expired, for another fleet, or signed by a key it does not trust (keys
are known by their id, the first 16 hex digits of the sha256 of the raw public key). Going
back to an earlier model is a new release of it with a higher number.

>>> from shared.signing import generate_private_key
>>> import tempfile, pathlib
>>> d = pathlib.Path(tempfile.mkdtemp())
>>> for name in RELEASED_FILES: _ = (d / name).write_bytes(name.encode())
>>> key = generate_private_key()
>>> data = issue(d, fleet="acme", stream="payments", version="v1", number=7, key=key,
...              now=1000.0, ttl_s=60.0)
>>> r = verify(data, TrustedKeys([key.public_key()]), fleet="acme", now=1030.0)
>>> (r.number, r.version)
(7, 'v1')
>>> verify(data, TrustedKeys([key.public_key()]), fleet="acme", now=1061.0)
Traceback (most recent call last):
...
shared.releases.ReleaseError: release 7 of payments v1 expired at 1970-01-01 00:17:40 UTC
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterable
from pathlib import Path

import msgspec
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from shared.errors import FleetsentryError
from shared.signing import MANIFEST_FILE, MODEL_FILE, key_fingerprint, load_public_key

RELEASE_SCHEMA = 1
RELEASED_FILES = (MODEL_FILE, MANIFEST_FILE)
FLEET_PATTERN = r"^[a-z0-9][a-z0-9-]{0,62}$"
DEFAULT_FLEET = "default"


class ReleaseError(FleetsentryError):
    """A release is malformed, not signed by a trusted key, expired or for another fleet."""


class Release(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    schema: int = RELEASE_SCHEMA
    fleet: str
    stream: str
    version: str
    number: int
    issued_ts: float
    expires_ts: float
    key_id: str
    # sha256 (hex) of each released file.
    files: dict[str, str]


class SignedRelease(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    # The encoded Release exactly as signed (bytes, so no re-encoding can change them).
    release: bytes
    signature: bytes


def _digests(files: dict[str, bytes]) -> dict[str, str]:
    return {name: hashlib.sha256(files[name]).hexdigest() for name in RELEASED_FILES}


def read_files(model_dir: Path) -> dict[str, bytes]:
    try:
        return {name: (Path(model_dir) / name).read_bytes() for name in RELEASED_FILES}
    except FileNotFoundError as exc:
        raise ReleaseError(f"{model_dir}: {Path(exc.filename).name} is missing") from None


def issue(
    model_dir: Path,
    *,
    fleet: str,
    stream: str,
    version: str,
    number: int,
    key: Ed25519PrivateKey,
    ttl_s: float,
    now: float | None = None,
) -> bytes:
    """A signed release of the model in ``model_dir`` (encoded, for the model message)."""
    now = time.time() if now is None else now
    release = Release(
        fleet=fleet,
        stream=stream,
        version=version,
        number=number,
        issued_ts=now,
        expires_ts=now + ttl_s,
        key_id=key_fingerprint(key),
        files=_digests(read_files(model_dir)),
    )
    body = msgspec.json.encode(release)
    return msgspec.json.encode(SignedRelease(release=body, signature=key.sign(body)))


class TrustedKeys:
    """The public keys a gateway accepts releases from, by key id."""

    def __init__(self, keys: Iterable[Ed25519PublicKey]) -> None:
        self.keys = {key_fingerprint(k): k for k in keys}
        if not self.keys:
            raise ReleaseError(
                "no trusted public key: set [scorer] public_key (or "
                "public_keys) to the fleet's model-signing public key"
            )

    @classmethod
    def load(cls, paths: Iterable[Path]) -> TrustedKeys:
        return cls(load_public_key(Path(p)) for p in paths)

    def __contains__(self, key_id: str) -> bool:
        return key_id in self.keys


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ts))


def verify(data: bytes, trusted: TrustedKeys, fleet: str, now: float | None = None) -> Release:
    """The release in ``data`` if a trusted key signed it, for ``fleet``, and not expired."""
    try:
        signed = msgspec.json.decode(data, type=SignedRelease)
        release = msgspec.json.decode(signed.release, type=Release)
    except msgspec.DecodeError as exc:
        raise ReleaseError(f"not a release record: {exc}") from None
    what = f"release {release.number} of {release.stream} {release.version}"
    key = trusted.keys.get(release.key_id)
    if key is None:
        raise ReleaseError(
            f"{what} is signed by key {release.key_id}, which this gateway "
            f"does not trust (trusted: {', '.join(sorted(trusted.keys))})"
        )
    try:
        key.verify(signed.signature, signed.release)
    except InvalidSignature:
        raise ReleaseError(
            f"{what}: the signature does not match key {release.key_id} "
            "(the record was changed after signing)"
        ) from None
    if release.schema != RELEASE_SCHEMA:
        raise ReleaseError(
            f"{what}: schema {release.schema} is not supported (this build reads {RELEASE_SCHEMA})"
        )
    if release.fleet != fleet:
        raise ReleaseError(
            f"{what} is for fleet {release.fleet!r}; this gateway is in fleet "
            f"{fleet!r} ([agent] fleet)"
        )
    now = time.time() if now is None else now
    if now >= release.expires_ts:
        raise ReleaseError(f"{what} expired at {_when(release.expires_ts)}")
    return release


def check_files(release: Release, files: dict[str, bytes]) -> None:
    """Raise unless ``files`` are exactly the ones the release names."""
    for name in RELEASED_FILES:
        if name not in files:
            raise ReleaseError(f"{name} is missing from release {release.number}")
        if hashlib.sha256(files[name]).hexdigest() != release.files.get(name):
            raise ReleaseError(
                f"{name} is not the file release {release.number} of "
                f"{release.stream} names (changed after release)"
            )
