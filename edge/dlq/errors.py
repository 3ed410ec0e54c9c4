"""Errors of the dead letters."""

from shared.errors import FleetsentryError


class DeadLetterError(FleetsentryError):
    """A dead letter cannot be opened (another master key, a damaged record, ...)."""
