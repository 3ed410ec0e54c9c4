"""Errors of the trainer."""

from shared.errors import FleetsentryError


class TrainerError(FleetsentryError):
    """Training cannot go on: bad input data or settings; the message says what to change."""


class QuantizationError(TrainerError):
    """The int8 model ranks anomalies measurably worse than the float model it came from."""


class NeedsLabelsError(TrainerError):
    """The data has no labelled anomalies where the int8 check and the judging need them."""
