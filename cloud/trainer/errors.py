"""Errors of the trainer."""

from shared.errors import FleetsentryError


class TrainerError(FleetsentryError):
    """Training cannot go on: bad input data or settings; the message says what to change."""


class QuantizationError(TrainerError):
    """The int8 model ranks anomalies measurably worse than the float model it came from."""
