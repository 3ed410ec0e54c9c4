"""Errors of the model registry."""

from shared.errors import FleetsentryError


class RegistryError(FleetsentryError):
    """The registry cannot do what was asked (unknown version, nothing to roll back to, ...)."""
