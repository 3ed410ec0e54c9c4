"""Ed25519 signing of model directories.

A model directory holds ``model.tflite``, ``manifest.json`` and ``signature``. The signature
covers ``sha256(model.tflite) || sha256(manifest.json)``, so changing any byte of either file,
or signing with another key, makes :func:`verify_model_dir` raise :class:`SignatureError`.

Keys are PEM files: the private key (PKCS#8, written with mode 0600) stays with the cloud,
the public key (SubjectPublicKeyInfo) ships to every gateway.

>>> import tempfile, pathlib
>>> d = pathlib.Path(tempfile.mkdtemp())
>>> key = generate_private_key()
>>> _ = (d / "model.tflite").write_bytes(b"model")
>>> from shared.contracts import ModelManifest, Scaling, encode
>>> m = ModelManifest(stream="payments", version="v1", feature_spec="1", features=["a"],
...     scaling=Scaling(mean=[0.0], scale=[1.0]), threshold=1.0, input_quant=(0.1, 0),
...     output_quant=(0.1, 0), metrics={}, data_range=(1.0, 2.0), created_ts=1.0)
>>> _ = (d / "manifest.json").write_bytes(encode(m))
>>> _ = sign_model_dir(d, key)
>>> verify_model_dir(d, key.public_key()).version
'v1'
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
from pathlib import Path

import msgspec
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from shared.contracts import ModelManifest
from shared.errors import FleetsentryError

log = logging.getLogger("signing")
MODEL_FILE = "model.tflite"
MANIFEST_FILE = "manifest.json"
SIGNATURE_FILE = "signature"
DEV_KEY_DIR = Path("~/.config/fleetsentry")
DEV_PRIVATE_KEY = "model-signing.key"
DEV_PUBLIC_KEY = "model-signing.pub"


class SignatureError(FleetsentryError):
    """A model directory is unsigned, tampered with, or signed by a key we do not trust."""


class KeyFileError(FleetsentryError):
    """A key file is missing or not an Ed25519 PEM key."""


# --- keys --------------------------------------------------------------------------------


def generate_private_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def write_private_key(key: Ed25519PrivateKey, path: Path) -> None:
    """Write ``key`` as PEM, readable by the owner only (created 0600, never world-readable)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
    os.chmod(path, 0o600)  # O_CREAT's mode does not apply to a file that already existed


def public_key_pem(key: Ed25519PrivateKey | Ed25519PublicKey) -> bytes:
    pub = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return pub.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def write_public_key(key: Ed25519PrivateKey | Ed25519PublicKey, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(public_key_pem(key))


def load_private_key(path: Path) -> Ed25519PrivateKey:
    data = _read_key_file(path, "private")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise KeyFileError(f"{path}: not a readable PEM private key ({exc})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(f"{path}: expected an Ed25519 private key, got {type(key).__name__}")
    return key


def load_public_key(path: Path) -> Ed25519PublicKey:
    data = _read_key_file(path, "public")
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError as exc:
        raise KeyFileError(f"{path}: not a readable PEM public key ({exc})") from None
    if not isinstance(key, Ed25519PublicKey):
        raise KeyFileError(f"{path}: expected an Ed25519 public key, got {type(key).__name__}")
    return key


def _read_key_file(path: Path, what: str) -> bytes:
    try:
        return Path(path).expanduser().read_bytes()
    except OSError as exc:
        raise KeyFileError(f"cannot read {what} key file {path}: {exc.strerror}") from None


def create_private_key(path: Path) -> Ed25519PrivateKey:
    """Generate a key, write it (0600) to ``path`` and its public key to ``path.pub``."""
    path = Path(path).expanduser()
    if path.exists():
        raise KeyFileError(f"{path} already exists: a signing key is never overwritten")
    key = generate_private_key()
    write_private_key(key, path)
    write_public_key(key, path.with_suffix(".pub"))
    return key


def ensure_private_key(path: Path, create: bool = False) -> Ed25519PrivateKey:
    """Load the signing key at ``path``.

    A missing key is created only when asked (``create``) or when ``path`` is the development
    key (``~/.config/fleetsentry/model-signing.key``, for one-machine trials; a warning says
    so). Otherwise it is an error saying how to make one: a key generated silently would sign
    models that every gateway, which trusts the fleet's real public key, refuses.
    """
    path = Path(path).expanduser()
    if path.exists() or not (create or path == dev_private_key_path()):
        return require_private_key(path)
    key = create_private_key(path)
    if not create:
        log.warning(
            "created the development model-signing key %s (key id %s); gateways "
            "accept its models only with [scorer] public_key = %s",
            path,
            key_fingerprint(key),
            path.with_suffix(".pub"),
        )
    return key


def require_private_key(path: Path) -> Ed25519PrivateKey:
    """Load the signing key at ``path``; a missing one, the development key's path included,
    is an error saying how to make it (the signer never generates a key of its own)."""
    path = Path(path).expanduser()
    if not path.exists():
        raise KeyFileError(
            f"no model-signing key at {path}: create one with `fleetsentry "
            f"cloud keygen {path}` and give every gateway its public key "
            f"({path.with_suffix('.pub')}), or point --key at the fleet's key"
        )
    return load_private_key(path)


def dev_private_key_path() -> Path:
    return (DEV_KEY_DIR / DEV_PRIVATE_KEY).expanduser()


def key_fingerprint(key: Ed25519PrivateKey | Ed25519PublicKey) -> str:
    """Short id of a public key (sha256 of its raw bytes), for logs and manifests."""
    pub = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    raw = pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


# --- model directories -------------------------------------------------------------------


def signed_digest(model_dir: Path) -> bytes:
    """The message that is signed: sha256(model.tflite) || sha256(manifest.json)."""
    model_dir = Path(model_dir)
    parts = []
    for name in (MODEL_FILE, MANIFEST_FILE):
        try:
            parts.append(hashlib.sha256((model_dir / name).read_bytes()).digest())
        except FileNotFoundError:
            raise SignatureError(f"{model_dir}: {name} is missing") from None
    return b"".join(parts)


def sign_model_dir(model_dir: Path, private_key: Ed25519PrivateKey) -> Path:
    """Sign the model and manifest in ``model_dir``; returns the signature file's path."""
    sig = private_key.sign(signed_digest(model_dir))
    path = Path(model_dir) / SIGNATURE_FILE
    path.write_bytes(base64.b64encode(sig) + b"\n")
    return path


def verify_model_dir(model_dir: Path, public_key: Ed25519PublicKey | Path | str) -> ModelManifest:
    """Check the signature and return the decoded manifest; raise SignatureError otherwise."""
    model_dir = Path(model_dir)
    if not isinstance(public_key, Ed25519PublicKey):
        public_key = load_public_key(Path(public_key))
    sig_path = model_dir / SIGNATURE_FILE
    if not sig_path.exists():
        raise SignatureError(f"{model_dir}: unsigned model (no {SIGNATURE_FILE} file)")
    try:
        sig = base64.b64decode(sig_path.read_bytes().strip(), validate=True)
    except ValueError:
        raise SignatureError(f"{sig_path}: not a base64 signature") from None
    message = signed_digest(model_dir)
    try:
        public_key.verify(sig, message)
    except InvalidSignature:
        raise SignatureError(
            f"{model_dir}: signature does not match (files changed after signing, "
            f"or signed by another key than {key_fingerprint(public_key)})"
        ) from None
    try:
        # Not contracts.decode: its message-size cap is for broker traffic, not manifests.
        return msgspec.json.decode((model_dir / MANIFEST_FILE).read_bytes(), type=ModelManifest)
    except msgspec.DecodeError as exc:  # ValidationError is a DecodeError
        raise SignatureError(f"{model_dir}: signed manifest is not valid: {exc}") from None
