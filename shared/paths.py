"""Where fleetsentry keeps a machine's local state when nothing else is configured.

``FLEETSENTRY_HOME``, else ``$XDG_DATA_HOME/fleetsentry`` (``~/.local/share/fleetsentry``):
what `fleetsentry infra up` provisions there (brokers' data, credential files) is also where
the services look for credentials that their configuration does not name.
"""

from __future__ import annotations

import os
from pathlib import Path


def default_home() -> Path:
    env = os.environ.get("FLEETSENTRY_HOME")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "fleetsentry"
