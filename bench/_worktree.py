"""Another commit's code beside this checkout's, for a bench's ``--against REV``: a git
worktree of it (this repository's objects; nothing to install: the bench's child process puts
the worktree first on its path)."""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def git(*args: str, cwd: Path = ROOT) -> str:
    out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"git {' '.join(args)}: {out.stderr.strip()}")
    return out.stdout.strip()


def checkout(rev: str, where: Path | None = None) -> Path:
    """A worktree of ``rev`` at ``where`` (default: a new temporary directory)."""
    if where is None:
        where = Path(tempfile.mkdtemp(prefix="fleetsentry-against-"))
        where.rmdir()  # git makes it
    print(f"checking out {rev} ...", file=sys.stderr)
    git("worktree", "add", "--detach", str(where), rev)
    return where


def remove(where: Path) -> None:
    git("worktree", "remove", "--force", str(where))
