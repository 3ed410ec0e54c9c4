"""The root of every error fleetsentry raises on purpose."""


class FleetsentryError(Exception):
    """Base class: catch this to handle any error of ours, and only ours."""


class ContractError(FleetsentryError):
    """A message does not match its contract. ``field`` names the offending path."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class ConfigError(FleetsentryError):
    """A configuration file or value is wrong. ``setting`` names it (dotted path)."""

    def __init__(self, message: str, setting: str | None = None) -> None:
        super().__init__(f"{setting}: {message}" if setting else message)
        self.setting = setting


class MissingExtraError(FleetsentryError, ImportError):
    """An optional dependency is not installed; the message carries the pip line that fixes it."""

    def __init__(self, module: str, extra: str) -> None:
        super().__init__(
            f"{module} is not installed. Install it with: pip install 'fleetsentry[{extra}]'"
        )
        self.module = module
        self.extra = extra
