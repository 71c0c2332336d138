"""Print the third-party requirements of pyproject.toml for some extras: ``requirements.py serve``.

The Dockerfiles install these in a layer of their own, before any project source is copied,
so a code change rebuilds only the small layer that installs the project itself.
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path
from typing import Any

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def requirements(project: dict[str, Any], extras: list[str]) -> list[str]:
    """The base dependencies plus each extra's, self-references (``name[a,b]``) expanded."""
    name = project["name"]
    optional: dict[str, list[str]] = project.get("optional-dependencies", {})
    out: list[str] = list(project.get("dependencies", []))
    seen: set[str] = set()
    pending = list(extras)
    while pending:
        extra = pending.pop(0)
        if extra in seen:
            continue
        if extra not in optional:
            raise SystemExit(f"error: {PYPROJECT.name}: no optional dependency group {extra!r}")
        seen.add(extra)
        for req in optional[extra]:
            self_ref = re.fullmatch(rf"{re.escape(name)}\[([^\]]+)\]", req.replace(" ", ""))
            if self_ref:
                pending.extend(self_ref.group(1).split(","))
            elif req not in out:
                out.append(req)
    return out


def main(argv: list[str]) -> int:
    project = tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))["project"]
    print("\n".join(requirements(project, argv)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
