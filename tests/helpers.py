"""Shared helpers for the template's test tiers.

A tier whose tool is missing skips with the reason on a developer machine and
fails in CI: `.ci/run` sets REQUIRE_ALL_TIERS=1, so a green CI never hides an
untested tier.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

TEMPLATE_DIR = Path(__file__).resolve().parent.parent
REQUIRE_ALL_TIERS = os.environ.get("REQUIRE_ALL_TIERS") == "1"


def unavailable(reason: str) -> None:
    """Skip the calling test, or fail it when every tier is required."""
    if REQUIRE_ALL_TIERS:
        pytest.fail(f"required tool unavailable (REQUIRE_ALL_TIERS=1): {reason}")
    pytest.skip(reason)


def require_executable(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        unavailable(f"'{name}' is not on PATH")
    assert path is not None
    return path


def require_docker() -> None:
    """Docker engine and Compose v2 must answer."""
    require_executable("docker")
    for cmd in (["docker", "info"], ["docker", "compose", "version"]):
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
        if result.returncode != 0:
            unavailable(f"'{' '.join(cmd)}' failed: {result.stderr.strip()[:200]}")


def require_image(image: str) -> None:
    """A (stand-in) image must exist locally; nothing can be pulled here."""
    require_docker()
    result = subprocess.run(
        ["docker", "image", "inspect", image], capture_output=True, text=True, timeout=60, check=False
    )
    if result.returncode != 0:
        unavailable(f"image {image} is not present (build stand-ins with ../shared/tools/standins.sh)")


def find_python(version: str) -> str:
    """An interpreter for `version` (uv may not download one here): PATH, then pyenv."""
    candidates = [shutil.which(f"python{version}")]
    candidates += sorted(str(p) for p in Path.home().glob(f".pyenv/versions/{version}*/bin/python{version}"))
    for candidate in candidates:
        if candidate is None:
            continue
        probe = subprocess.run(
            [candidate, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
            capture_output=True,
            text=True,
            check=False,
        )
        if probe.returncode == 0 and probe.stdout.strip() == version:
            return candidate
    unavailable(f"no Python {version} interpreter found (PATH or ~/.pyenv)")
    raise AssertionError("unreachable")


def uv_env(python: str) -> dict[str, str]:
    """Environment for uv in a baked project: a given interpreter, no downloads."""
    env = {k: v for k, v in os.environ.items() if k not in {"VIRTUAL_ENV", "UV_PROJECT_ENVIRONMENT"}}
    env.update(UV_PYTHON=python, UV_PYTHON_DOWNLOADS="never", UV_NO_PROGRESS="1")
    return env


def run(cmd: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: float = 600) -> str:
    """Run a command, failing the test with its output if it fails."""
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    if result.returncode != 0:
        pytest.fail(f"{' '.join(cmd)} failed ({result.returncode}) in {cwd}:\n{result.stdout}\n{result.stderr}")
    return result.stdout + result.stderr
