"""scripts/check_torch.py and scripts/requirements.py, which the Makefile and both Dockerfiles run."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from scripts.check_torch import problems
from scripts.requirements import requirements

ROOT = Path(__file__).resolve().parents[2]


def test_cpu_build_passes() -> None:
    assert problems("cpu", "2.13.0+cpu", None, ["numpy", "torch"], expected="2.13.0") == []


@pytest.mark.parametrize(
    "version, cuda, dists, complaint",
    [
        ("2.13.0", "12.8", ["nvidia-cublas-cu12", "triton"], "not the CPU build"),  # PyPI's Linux default
        ("2.13.0+cu128", "12.8", [], "built for CUDA"),
        ("2.13.0+cpu", None, ["nvidia-nccl-cu12"], "GPU packages installed: nvidia-nccl-cu12"),
        ("2.12.1+cpu", None, [], "the pin is 2.13.0"),
    ],
)
def test_anything_but_the_pinned_cpu_build_fails(version: str, cuda: str | None, dists: list[str], complaint: str):
    found = problems("cpu", version, cuda, dists, expected="2.13.0")
    assert any(complaint in p for p in found), found


def test_cuda_variant_needs_cuda() -> None:
    assert problems("cuda", "2.13.0+cu128", "12.8", ["nvidia-cublas-cu12"]) == []
    assert problems("cuda", "2.13.0+cpu", None, []) == ["torch 2.13.0+cpu has no CUDA support"]
    assert "unknown torch variant" in problems("rocm", "2.13.0", None, [])[0]


def test_check_torch_on_this_venv_exit_status() -> None:
    """This venv has the CPU build: `cpu` passes, `cuda` fails with an error line."""
    script = str(ROOT / "scripts" / "check_torch.py")
    pin = next(
        line.split("==")[1]
        for line in (ROOT / "constraints.txt").read_text().splitlines()
        if line.startswith("torch==")
    )
    ok = subprocess.run([sys.executable, script, "cpu", pin], capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    bad = subprocess.run([sys.executable, script, "cuda"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1 and bad.stderr.startswith("error: ")


def test_requirements_expand_extras_and_self_references() -> None:
    project = {
        "name": "demo",
        "dependencies": ["torch==2.13.0"],
        "optional-dependencies": {"a": ["x>=1"], "b": ["y; sys_platform != 'win32'"], "dev": ["demo[a,b]", "z"]},
    }
    assert requirements(project, ["a"]) == ["torch==2.13.0", "x>=1"]
    assert requirements(project, ["dev"]) == ["torch==2.13.0", "z", "x>=1", "y; sys_platform != 'win32'"]
    with pytest.raises(SystemExit, match="no optional dependency group 'nope'"):
        requirements(project, ["nope"])


def test_serve_requirements_leave_out_training_and_dev_tools() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = {
        r.split(";")[0].split("[")[0].split(">")[0].split("=")[0].strip().lower()
        for r in requirements(project, ["serve"])
    }
    assert {"torch", "fastapi", "uvicorn", "fastapi-swagger"} <= names
    assert not names & {"scikit-learn", "nltk", "matplotlib", "pytest", "watchfiles", "websockets"}
