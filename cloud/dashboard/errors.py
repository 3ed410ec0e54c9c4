"""Errors of the dashboard."""

from shared.errors import FleetsentryError


class DashboardError(FleetsentryError):
    """The dashboard cannot do what was asked."""


class AuthError(DashboardError):
    """Sign-in settings are unusable (an empty password, a short session key)."""


class BadQuery(DashboardError):
    """A query parameter is malformed or out of range; the message says what is accepted."""


class SignInBusy(DashboardError):
    """Too many password checks are queued; the client should try again shortly."""
