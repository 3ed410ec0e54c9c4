"""Errors of the bridge."""

from __future__ import annotations

from shared.errors import FleetsentryError


class BridgeError(FleetsentryError):
    """The bridge cannot run (bad credentials, broker refused us, ...)."""


class Rejected(FleetsentryError):
    """One message fails validation. ``reason`` is a short fixed word (a metric label)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
