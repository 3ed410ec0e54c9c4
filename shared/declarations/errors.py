"""Errors of stream declarations: each names the file and the key path that is wrong."""

from __future__ import annotations

from shared.errors import ConfigError


class DeclarationError(ConfigError):
    """A stream declaration is wrong: ``file`` names it, ``setting`` the key path within it.

    >>> str(DeclarationError("reefer.toml", "fields.t.type", "expected 'float'"))
    "reefer.toml: fields.t.type: expected 'float'"
    """

    def __init__(self, file: str, key: str, message: str) -> None:
        super().__init__(message, setting=key or None)
        self.file = file
        self.args = (f"{file}: {self.args[0]}",)
