"""Errors the simulator raises on purpose."""

from shared.errors import ConfigError, FleetsentryError


class SimError(FleetsentryError):
    """Root of the simulator's errors."""


class SimSettingsError(SimError, ConfigError):
    """A simulator setting is out of range; the message names the setting."""


class BufferError_(SimError):
    """The on-disk outbox of unsent events cannot be opened or written."""


class ConnectError(SimError):
    """Not one vehicle could open its MQTT session; the message says why."""
