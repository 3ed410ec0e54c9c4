"""Open the vault and the fleet tokenizer from the gateway's config."""

from __future__ import annotations

from pathlib import Path

from edge.config import EdgeConfig
from edge.vault.errors import SecretMismatch, VaultError
from edge.vault.keyfile import load_or_create
from edge.vault.vault import Vault
from shared.tokens import Tokenizer


def vault_path(config: EdgeConfig) -> Path:
    return config.vault.path or config.data_dir / "vault.sqlite"


def key_file(config: EdgeConfig) -> Path:
    return config.vault.key_file or config.data_dir / "vault.key"


def secret_file(config: EdgeConfig) -> Path:
    return config.vault.fleet_secret_file or config.data_dir / "fleet.secret"


def fleet_tokenizer(config: EdgeConfig) -> Tokenizer:
    """The tokenizer keyed with the fleet secret (the file is created when missing)."""
    return Tokenizer(load_or_create(secret_file(config)))


def open_vault(config: EdgeConfig) -> Vault:
    """A started vault with the fleet tokenizer; refused (naming the setting) when the fleet
    secret is not the one the vault was filled with."""
    try:
        return Vault(vault_path(config), key_file(config), fleet_tokenizer(config)).start()
    except SecretMismatch as exc:
        raise VaultError(
            f"{exc}. Check vault.fleet_secret_file ({secret_file(config)}): every gateway of "
            "a fleet holds the same secret; restore it there. A missing file is made afresh, "
            "at random, so a lost one shows here. To start this gateway's history over "
            "instead, move the vault away."
        ) from None
