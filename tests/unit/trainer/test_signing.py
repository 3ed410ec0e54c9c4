"""Model signing: a signed directory verifies; any change or another key is refused."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from shared import signing
from shared.contracts import ModelManifest, Scaling, encode
from shared.errors import FleetsentryError


def _manifest() -> ModelManifest:
    return ModelManifest(
        stream="telemetry",
        version="t-1",
        feature_spec="1",
        features=["a", "b"],
        scaling=Scaling(mean=[0.0, 1.0], scale=[1.0, 2.0]),
        threshold=0.5,
        input_quant=(0.05, -3),
        output_quant=(0.04, 1),
        metrics={"roc_auc": 0.9},
        data_range=(1.0, 2.0),
        created_ts=3.0,
    )


@pytest.fixture()
def model_dir(tmp_path: Path) -> Path:
    d = tmp_path / "m"
    d.mkdir()
    (d / "model.tflite").write_bytes(bytes(range(256)) * 4)
    (d / "manifest.json").write_bytes(encode(_manifest()))
    return d


def test_signed_model_verifies_and_returns_manifest(model_dir: Path) -> None:
    key = signing.generate_private_key()
    signing.sign_model_dir(model_dir, key)
    assert signing.verify_model_dir(model_dir, key.public_key()) == _manifest()


def test_verify_accepts_a_public_key_file(model_dir: Path, tmp_path: Path) -> None:
    key = signing.generate_private_key()
    signing.write_public_key(key, tmp_path / "fleet.pub")
    signing.sign_model_dir(model_dir, key)
    assert signing.verify_model_dir(model_dir, tmp_path / "fleet.pub").stream == "telemetry"


@pytest.mark.parametrize("name", ["model.tflite", "manifest.json"])
@pytest.mark.parametrize("offset", [0, 17, -1])
def test_one_flipped_byte_is_refused(model_dir: Path, name: str, offset: int) -> None:
    key = signing.generate_private_key()
    signing.sign_model_dir(model_dir, key)
    path = model_dir / name
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(signing.SignatureError, match="does not match"):
        signing.verify_model_dir(model_dir, key.public_key())


def test_unsigned_model_is_refused(model_dir: Path) -> None:
    key = signing.generate_private_key()
    with pytest.raises(signing.SignatureError, match="unsigned"):
        signing.verify_model_dir(model_dir, key.public_key())


def test_other_key_is_refused(model_dir: Path) -> None:
    signing.sign_model_dir(model_dir, signing.generate_private_key())
    with pytest.raises(signing.SignatureError):
        signing.verify_model_dir(model_dir, signing.generate_private_key().public_key())


def test_garbled_or_missing_files_are_refused(model_dir: Path) -> None:
    key = signing.generate_private_key()
    signing.sign_model_dir(model_dir, key)
    (model_dir / "signature").write_bytes(b"not base64!!")
    with pytest.raises(signing.SignatureError):
        signing.verify_model_dir(model_dir, key.public_key())
    signing.sign_model_dir(model_dir, key)
    (model_dir / "model.tflite").unlink()
    with pytest.raises(signing.SignatureError, match="missing"):
        signing.verify_model_dir(model_dir, key.public_key())


def test_signature_error_is_ours() -> None:
    assert issubclass(signing.SignatureError, FleetsentryError)


def test_private_key_file_is_owner_only_and_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "signing.key"
    key = signing.ensure_private_key(path, create=True)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.with_suffix(".pub").exists()
    again = signing.ensure_private_key(path)
    assert signing.key_fingerprint(again) == signing.key_fingerprint(key)
    pub = signing.load_public_key(path.with_suffix(".pub"))
    assert signing.key_fingerprint(pub) == signing.key_fingerprint(key)


def test_bad_key_files_name_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pem"
    bad.write_text("hello")
    with pytest.raises(signing.KeyFileError, match="bad.pem"):
        signing.load_public_key(bad)
    with pytest.raises(signing.KeyFileError, match="bad.pem"):
        signing.load_private_key(bad)
    with pytest.raises(signing.KeyFileError, match="missing.pem"):
        signing.load_private_key(tmp_path / "missing.pem")


def test_a_missing_signing_key_is_an_error_that_says_what_to_do(tmp_path: Path) -> None:
    path = tmp_path / "fleet.key"
    with pytest.raises(signing.KeyFileError, match="fleetsentry cloud keygen"):
        signing.ensure_private_key(path)
    assert not path.exists()  # never generated behind the operator's back
    key = signing.create_private_key(path)
    with pytest.raises(signing.KeyFileError, match="never overwritten"):
        signing.create_private_key(path)
    assert signing.key_fingerprint(signing.ensure_private_key(path)) == signing.key_fingerprint(key)
