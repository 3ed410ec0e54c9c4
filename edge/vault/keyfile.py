"""Secret files the gateway owns (the vault's master key, the fleet secret): 0600, never printed."""

from __future__ import annotations

import base64
import os
import secrets
import stat
from pathlib import Path

from edge.vault.errors import VaultError


def load_or_create(path: Path, nbytes: int = 32, create: bool = True) -> bytes:
    """Read a base64 secret from ``path``; create it (0600, random) when missing and allowed."""
    path = Path(path).expanduser()
    if not path.exists():
        if not create:
            raise VaultError(f"secret file {path} does not exist")
        _create(path, base64.b64encode(secrets.token_bytes(nbytes)) + b"\n")
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise VaultError(f"secret file {path} is readable by others; run: chmod 600 {path}")
    try:
        value = base64.b64decode(path.read_bytes().strip(), validate=True)
    except ValueError:
        raise VaultError(f"secret file {path} is not base64") from None
    if len(value) < 16:
        raise VaultError(f"secret file {path} holds {len(value)} bytes; at least 16 are needed")
    return value


def _create(path: Path, data: bytes) -> None:
    """Write ``path`` whole or not at all: services starting together (bridge, enricher,
    scorer) may race to create it, and none may read it half-written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass  # another process created it first: read theirs
    finally:
        tmp.unlink()
