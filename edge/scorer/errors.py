"""Errors the scorer raises on purpose."""

from __future__ import annotations

from shared.errors import FleetsentryError


class ScorerError(FleetsentryError):
    """Root of the scorer's errors."""


class ModelError(ScorerError):
    """A model directory cannot be used: unsigned, tampered, wrong feature spec or malformed."""


class ShapeError(ScorerError):
    """A feature matrix does not have the width the model takes."""
