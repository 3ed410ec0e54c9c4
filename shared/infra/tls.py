"""Throwaway TLS material for a local broker: a CA and a server certificate it signed.

For tests and demos on one machine (127.0.0.1 / localhost). Real gateways get theirs from
the Ansible role, which does the same with openssl.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shared.infra.errors import PrerequisiteError

DEFAULT_HOSTS = ("127.0.0.1", "localhost")
VALID_DAYS = 30


@dataclass(frozen=True)
class TlsFiles:
    """PEM files a TLS listener needs: the CA that clients trust, the server's cert and key."""

    ca_file: Path
    cert_file: Path
    key_file: Path


def make_local_ca(
    directory: Path, hosts: Sequence[str] = DEFAULT_HOSTS, name: str = "fleetsentry test"
) -> TlsFiles:
    """Write ``ca.pem``, ``server.pem`` and ``server.key`` (0600) into ``directory``.

    The server certificate names every host (IP addresses as IP SANs, names as DNS SANs),
    so clients that check host names accept it. The CA's key is never written.
    """
    try:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ec
    except ImportError as exc:  # pragma: no cover - a base dependency
        raise PrerequisiteError("generating certificates needs `pip install cryptography`") from exc
    directory.mkdir(parents=True, exist_ok=True)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = _certificate(f"{name} CA", ca_key, ca_key, None, is_ca=True, hosts=())
    server_key = ec.generate_private_key(ec.SECP256R1())
    server_cert = _certificate(hosts[0], server_key, ca_key, ca_cert, is_ca=False, hosts=hosts)
    files = TlsFiles(directory / "ca.pem", directory / "server.pem", directory / "server.key")
    pem = serialization.Encoding.PEM
    files.ca_file.write_bytes(ca_cert.public_bytes(pem))
    files.cert_file.write_bytes(server_cert.public_bytes(pem))
    key_pem = server_key.private_bytes(
        pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    fd = os.open(files.key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(key_pem)
    return files


def certificate_fresh(cert_file: Path, hosts: Sequence[str], min_days: float = 1.0) -> bool:
    """Whether ``cert_file`` exists, stays valid ``min_days`` more and names every host."""
    try:
        from cryptography import x509

        cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
    except (OSError, ValueError, ImportError):
        return False
    left = cert.not_valid_after_utc - dt.datetime.now(dt.UTC)
    try:
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    named = {str(v) for v in names.get_values_for_type(x509.IPAddress)}
    named |= set(names.get_values_for_type(x509.DNSName))
    return left > dt.timedelta(days=min_days) and set(hosts) <= named


def _certificate(
    common_name: str, key: Any, signer_key: Any, issuer: Any, *, is_ca: bool, hosts: Sequence[str]
) -> Any:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.subject if issuer is not None else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        # A little in the past: a client whose clock is slightly behind still accepts it.
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=VALID_DAYS))
        .add_extension(
            x509.BasicConstraints(ca=is_ca, path_length=0 if is_ca else None), critical=True
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    if is_ca:
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    else:
        builder = (
            builder.add_extension(
                x509.SubjectAlternativeName([_san(h) for h in hosts]), critical=False
            )
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(signer_key.public_key()),
                critical=False,
            )
        )
    return builder.sign(signer_key, hashes.SHA256())


def _san(host: str) -> Any:
    from cryptography import x509

    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)
