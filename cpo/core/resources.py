"""Where shipped files live: inside the wheel (`cpo/_bundled/`) or at the repository top (editable install)."""

from __future__ import annotations

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent.parent  # cpo/


def bundled(name: str) -> Path:
    """Path of a shipped top-level folder such as `prompts` or `data`."""
    inside = PACKAGE_DIR / "_bundled" / name
    if inside.is_dir():
        return inside
    return PACKAGE_DIR.parent / name
