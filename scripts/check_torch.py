"""Fail an install unless torch is the build asked for: ``check_torch.py cpu|cuda [VERSION]``.

On Linux, PyPI's plain ``torch`` is a CUDA build that drags in several GB of ``nvidia-*``
packages. When the CPU wheel index cannot be reached, pip quietly takes that one instead, and a
"CPU" image or venv grows by gigabytes. The Dockerfiles and the Makefile run this right after
installing torch, so that case stops the build with one ``error:`` line instead.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from importlib import metadata

VARIANTS = ("cpu", "cuda")


def problems(
    variant: str, version: str, cuda: str | None, distributions: Iterable[str], expected: str | None = None
) -> list[str]:
    """What is wrong with torch ``version`` (``torch.version.cuda`` = ``cuda``) for ``variant`` and ``expected``."""
    found: list[str] = []
    if expected is not None and version.split("+")[0] != expected:
        found.append(f"torch {version} is installed, the pin is {expected}")
    # The CUDA build's companions: nvidia-* and the Triton compiler (triton, pytorch-triton*),
    # not NVIDIA's Triton server client (tritonclient), a dev tool of this project.
    gpu_packages = sorted(
        d for d in distributions if d.lower().startswith(("nvidia-", "pytorch-triton")) or d.lower() == "triton"
    )
    if variant == "cpu":
        if not version.endswith("+cpu"):
            found.append(f"torch {version} is not the CPU build (expected a '+cpu' version from the CPU wheel index)")
        if cuda is not None:
            found.append(f"torch {version} is built for CUDA {cuda}")
        if gpu_packages:
            found.append(f"GPU packages installed: {', '.join(gpu_packages)}")
    elif variant == "cuda":
        if cuda is None:
            found.append(f"torch {version} has no CUDA support")
    else:
        found.append(f"unknown torch variant {variant!r} (expected one of {', '.join(VARIANTS)})")
    return found


def main(argv: list[str]) -> int:
    variant = argv[0] if argv else "cpu"
    expected = argv[1] if len(argv) > 1 else None
    try:
        import torch
    except ImportError as exc:
        print(f"error: torch is not importable: {exc}", file=sys.stderr)
        return 1
    names = {d.metadata["Name"] or "" for d in metadata.distributions()}
    found = problems(variant, torch.__version__, torch.version.cuda, names, expected)
    for problem in found:
        print(f"error: {problem}. Is the {variant} wheel index (TORCH_INDEX_URL) reachable?", file=sys.stderr)
    if not found:
        print(f"torch {torch.__version__} ({variant}) ok")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
