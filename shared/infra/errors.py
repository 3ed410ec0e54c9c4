from shared.errors import FleetsentryError


class InfraError(FleetsentryError):
    """Provisioning failed; the message says what to do next."""


class PrerequisiteError(InfraError):
    """A tool the brokers need (java, mvn, mosquitto) is missing or unusable."""


class PortInUseError(InfraError):
    """A configured port is taken by another process."""

    def __init__(self, setting: str, host: str, port: int) -> None:
        super().__init__(
            f"port {port} on {host} ({setting}) is already in use by another process; "
            f"stop that process or choose another port with --{setting.replace('_', '-')} "
            f"or the [infra] section of the config"
        )
        self.setting = setting
        self.port = port


class ServiceStartError(InfraError):
    """A broker process exited or did not become healthy in time."""
