"""The gateway's models directory, as the agent keeps it and the scorer reads it.

::

    <models_dir>/
      telemetry -> versions/telemetry/<version>     the ACTIVE model (a relative symlink)
      versions/telemetry/<version>/                  every installed version (verified copies)
      agent-state.json                               active/previous/refused versions and the
                                                     highest release accepted, per stream

The scorer loads ``<models_dir>/<stream>`` (falling back to the shipped baseline when it does
not exist) and, between two transactions, reloads when that path resolves somewhere new. The
agent switches models by replacing the symlink with ``rename(2)``, which is atomic: the scorer
sees the old target or the new one, never a half-written directory.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

from edge.agent.errors import AgentError

STATE_FILE = "agent-state.json"
VERSIONS_DIR = "versions"


def safe_name(version: str) -> str:
    """A version as one path component (no separators, no leading dot)."""
    cleaned = "".join(c if c.isalnum() or c in "-_.+" else "_" for c in version).lstrip(".")
    if not cleaned:
        raise AgentError(f"model version {version!r} cannot name a directory")
    return cleaned[:200]


class ModelStore:
    """Constructing it does no I/O; ``start()`` creates the directory and reads the state."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root).expanduser()
        self._state: dict[str, Any] = {"streams": {}}

    def start(self) -> ModelStore:
        (self.root / VERSIONS_DIR).mkdir(parents=True, exist_ok=True)
        path = self.root / STATE_FILE
        if path.exists():
            try:
                self._state = json.loads(path.read_text())
            except ValueError as exc:
                raise AgentError(
                    f"{path} is not valid JSON ({exc}); move it away to reset "
                    f"the agent's memory of refused models"
                ) from None
        return self

    # --- state -------------------------------------------------------------------------------

    def stream_state(self, stream: str) -> dict[str, Any]:
        streams: dict[str, Any] = self._state.setdefault("streams", {})
        return streams.setdefault(stream, {"active": None, "previous": None, "refused": {}})

    def _save(self) -> None:
        path = self.root / STATE_FILE
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}")
        tmp.write_text(json.dumps(self._state, indent=2, sort_keys=True))
        os.replace(tmp, path)

    def refuse(self, stream: str, version: str, reason: str) -> None:
        """Remember a version that was rolled back, so a redelivery does not reinstall it."""
        self.stream_state(stream)["refused"][version] = {"reason": reason, "ts": time.time()}
        self._save()

    def accepted_release(self, stream: str) -> int:
        """The highest release number accepted for ``stream`` (0: none yet)."""
        return int(self.stream_state(stream).get("release", 0))

    def accept_release(self, stream: str, number: int) -> None:
        """Remember release ``number``: nothing lower or equal is taken for ``stream`` again."""
        st = self.stream_state(stream)
        if number > int(st.get("release", 0)):
            st["release"] = number
            self._save()

    def refused(self, stream: str, version: str) -> str | None:
        entry = self.stream_state(stream)["refused"].get(version)
        return None if entry is None else str(entry["reason"])

    # --- directories -------------------------------------------------------------------------

    def link(self, stream: str) -> Path:
        return self.root / stream

    def active_dir(self, stream: str) -> Path | None:
        """The directory the scorer serves for ``stream`` (None: the shipped baseline)."""
        link = self.link(stream)
        return link.resolve() if link.is_dir() else None

    def active_version(self, stream: str) -> str | None:
        active = self.stream_state(stream).get("active")
        return None if active is None else str(active)

    def staging_dir(self, stream: str) -> Path:
        """A fresh, unused directory to unpack a received model into."""
        return self.root / VERSIONS_DIR / stream / f".incoming-{uuid.uuid4().hex[:12]}"

    def install(self, staged: Path, stream: str, version: str) -> Path:
        """Move a verified staging directory to ``versions/<stream>/<version>``."""
        dest = self.root / VERSIONS_DIR / stream / safe_name(version)
        dest.parent.mkdir(parents=True, exist_ok=True)
        if dest.exists():
            shutil.rmtree(dest)  # a version re-sent after a rollback: the new copy is verified
        staged.rename(dest)
        return dest

    def activate(self, stream: str, target: Path | None, version: str | None) -> Path | None:
        """Point the scorer at ``target`` (None: back to the baseline); returns the old target."""
        link = self.link(stream)
        old = self.active_dir(stream)
        if link.exists() and not link.is_symlink():
            self._adopt(stream, link)
        if target is None:
            if link.is_symlink():
                link.unlink()
        else:
            rel = os.path.relpath(target, self.root)
            tmp = self.root / f".{stream}.{uuid.uuid4().hex[:8]}"
            os.symlink(rel, tmp)
            os.replace(tmp, link)  # atomic: the scorer resolves the old or the new target
        st = self.stream_state(stream)
        st["previous"] = {"version": st.get("active"), "path": str(old) if old else None}
        st["active"] = version
        st["activated_ts"] = time.time()
        self._save()
        return old

    def _adopt(self, stream: str, directory: Path) -> None:
        """An operator put a plain directory where the symlink goes: keep it as a version."""
        dest = self.root / VERSIONS_DIR / stream / f"adopted-{uuid.uuid4().hex[:8]}"
        directory.rename(dest)
        os.symlink(os.path.relpath(dest, self.root), directory)

    def previous(self, stream: str) -> tuple[str | None, Path | None]:
        prev = self.stream_state(stream).get("previous") or {}
        path = prev.get("path")
        return prev.get("version"), (Path(path) if path else None)

    def prune(self, stream: str, keep: int) -> list[Path]:
        """Delete old versions beyond the newest ``keep`` (never the active or previous one)."""
        base = self.root / VERSIONS_DIR / stream
        if not base.is_dir():
            return []
        protected = {p for p in (self.active_dir(stream), self.previous(stream)[1]) if p}
        dirs = sorted(
            (d for d in base.iterdir() if d.is_dir()), key=lambda d: d.stat().st_mtime, reverse=True
        )
        removed = []
        for d in dirs[keep:]:
            if d.resolve() not in protected:
                shutil.rmtree(d, ignore_errors=True)
                removed.append(d)
        return removed
