"""Errors of the model agent."""

from shared.errors import FleetsentryError


class AgentError(FleetsentryError):
    """Root of the agent's errors."""


class Rejected(AgentError):
    """A received model is refused; the message is the reason reported on model-status."""
