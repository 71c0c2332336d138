"""Where an artifact came from: the commit of the training code."""

from __future__ import annotations

import subprocess
from pathlib import Path


def git_commit(where: Path | None = None) -> str | None:
    """Commit of the repository holding the training code, or None outside git."""
    folder = where or Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "-C", str(folder), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None
