"""The edge's PII vault: encrypted values under keyed tokens, erasure, retention, audit."""

from edge.vault.errors import UnknownToken, VaultError
from edge.vault.vault import Vault

__all__ = ["UnknownToken", "Vault", "VaultError"]
