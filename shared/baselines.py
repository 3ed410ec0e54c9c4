"""The baseline models shipped in the package, one signed model directory per stream.

A gateway scores with them offline from its first minute, and the cloud's registry takes them
as its first champions, so drift is measured against what the gateways actually run and a
challenger has something to beat. They carry their own public key (``fleet.pub``): the
package is what vouches for them.
"""

from __future__ import annotations

from pathlib import Path

BASELINE_DIR = Path(__file__).resolve().parent / "models" / "baseline"
BASELINE_PUBLIC_KEY = BASELINE_DIR / "fleet.pub"


def baseline_dir(stream: str) -> Path:
    """The shipped baseline of ``stream`` (the directory may be missing for a new stream)."""
    return BASELINE_DIR / stream


def shipped() -> list[str]:
    """The streams the package ships a baseline model for, by name."""
    return sorted(p.name for p in BASELINE_DIR.iterdir() if (p / "manifest.json").is_file())


def is_baseline(model_dir: Path) -> bool:
    """Whether ``model_dir`` lies inside the shipped baselines."""
    return Path(model_dir).resolve().is_relative_to(BASELINE_DIR.resolve())
