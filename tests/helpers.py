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
