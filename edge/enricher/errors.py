"""Errors of the enricher."""

from shared.errors import FleetsentryError


class EnricherError(FleetsentryError):
    """The enricher cannot continue (fenced by a newer instance, broker unreachable, ...)."""
