"""Errors of the PII vault."""

from shared.errors import FleetsentryError


class VaultError(FleetsentryError):
    """The vault cannot do what was asked (bad key file, vault not started, ...)."""


class UnknownToken(VaultError, KeyError):
    """No readable value for this token: never stored, purged, or its person was erased."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "unknown token"


class SecretMismatch(VaultError):
    """The fleet secret is not the one the vault's tokens were made with."""
