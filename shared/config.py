"""Typed, frozen configuration loaded once from TOML; errors name the setting.

Each side declares its config as msgspec Structs (frozen, with defaults that work on one
machine) and calls :func:`load`. Only settings listed in ``env`` may come from the
environment, so what a process reads from its environment is explicit.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import msgspec

from shared.errors import ConfigError

T = TypeVar("T")


class Secret(str):
    """A string that never prints itself: ``repr``, ``str()`` in f-strings and logs hide it.

    Use :meth:`reveal` where the value is really needed.
    """

    def __repr__(self) -> str:
        return "Secret('********')"

    def __str__(self) -> str:
        return "********"

    def __format__(self, spec: str) -> str:
        return "********"

    def reveal(self) -> str:
        return str.__str__(self)


def _dec_hook(kind: type, obj: Any) -> Any:
    if kind is Secret and isinstance(obj, str):
        return Secret(obj)
    if kind is Path and isinstance(obj, str):
        return Path(obj).expanduser()
    raise NotImplementedError


_PATH = re.compile(r" - at `\$\.?(.*)`$")


def convert(data: Mapping[str, Any], kind: type[T], source: str = "config") -> T:
    """Build a typed config object from a mapping or raise ConfigError naming the setting."""
    try:
        return msgspec.convert(dict(data), kind, dec_hook=_dec_hook, strict=True)
    except msgspec.ValidationError as exc:
        text = str(exc)
        match = _PATH.search(text)
        setting = None
        if match:
            setting = match.group(1).replace("[", ".").replace("]", "") or None
            text = text[: match.start()]
        if text.startswith("Object contains unknown field"):
            unknown = text.split("`")[1]
            setting = f"{setting}.{unknown}" if setting else unknown
            text = "unknown setting (check the spelling against the documented settings)"
        raise ConfigError(f"{text} in {source}", setting=setting) from None


def load(path: str | Path | None, kind: type[T], env: Mapping[str, str] | None = None) -> T:
    """Load ``kind`` from a TOML file (or defaults when ``path`` is None).

    ``env`` maps dotted setting names to environment variables allowed to override them,
    e.g. ``{"kafka.bootstrap": "FLEETSENTRY_KAFKA_BOOTSTRAP"}``.
    """
    data: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        source = str(path)
        try:
            data = tomllib.loads(Path(path).read_text())
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path} is not valid TOML: {exc}") from None
    for dotted, var in (env or {}).items():
        if var in os.environ:
            _set_dotted(data, dotted, _env_value(os.environ[var]))
            source += f" (+ ${var})"
    return convert(data, kind, source)


def _env_value(raw: str) -> Any:
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def _set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, last = dotted.split(".")
    node = data
    for part in parents:
        node = node.setdefault(part, {})
    node[last] = value
