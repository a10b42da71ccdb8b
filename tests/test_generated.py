"""The generated tier: baked projects in their own venvs, running their own checks.

Four projects get the full treatment (lock, sync, ruff, mypy --strict and
their own pytest suite, which starts real uvicorn processes). Every other
combination of the matrix is type-checked with mypy --strict against one
shared venv that holds every optional dependency.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import pytest

from combinations import ALL_OFF, ALL_ON, combo_id, matrix, without
from helpers import find_python, run, uv_env

pytestmark = pytest.mark.generated

FULL: list[tuple[dict[str, Any], str]] = [
    (ALL_ON, "3.13"),
    (ALL_OFF, "3.13"),
    (without("use_tracing"), "3.12"),
    # An import package named apart from the project (my-service).
    ({**ALL_OFF, "use_json_logging": True, "use_tracing": True, "package_name": "orders_core"}, "3.13"),
]


def uv() -> str:
    path = shutil.which("uv")
    if path is None:
        pytest.fail("uv is not on PATH (the template's own tooling runs through uv)")
    return path


@pytest.mark.parametrize(
    ("toggles", "python_version"),
    FULL,
    ids=[f"{combo_id(t)}-py{v}" + (f"-{t['package_name']}" if "package_name" in t else "") for t, v in FULL],
)
def test_generated_project_passes_its_own_checks(bake: Any, toggles: dict[str, bool], python_version: str) -> None:
    python = find_python(python_version)
    project: Path = bake(**toggles, python_version=python_version)
    env = uv_env(python)
    run([uv(), "lock"], project, env)
    run([uv(), "sync", "--locked"], project, env)
    run([uv(), "run", "--locked", "ruff", "check", "."], project, env)
    run([uv(), "run", "--locked", "ruff", "format", "--check", "."], project, env)
    run([uv(), "run", "--locked", "mypy"], project, env)
    output = run([uv(), "run", "--locked", "pytest", "-q", "-p", "no:cacheprovider"], project, env, timeout=900)
    summary = output.strip().splitlines()[-1]
    assert re.search(r"\d+ passed", summary), output
    assert not re.search(r"failed|skipped|error", summary), f"the generated suite must run everything: {summary}"


@pytest.fixture(scope="session")
def typecheck_venv(bake_once: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A venv with every optional dependency, made from the all-on project."""
    python = find_python("3.13")
    project = bake_once(**ALL_ON)
    venv = tmp_path_factory.mktemp("typecheck") / "venv"
    env = {**uv_env(python), "UV_PROJECT_ENVIRONMENT": str(venv)}
    run([uv(), "sync"], project, env)
    return venv


MYPY_ONLY = [c for c in matrix() if c not in [t for t, _ in FULL]]


@pytest.mark.parametrize("toggles", MYPY_ONLY, ids=[combo_id(c) for c in MYPY_ONLY])
def test_every_combination_type_checks(bake_once: Any, typecheck_venv: Path, toggles: dict[str, bool]) -> None:
    project = bake_once(**toggles)
    run([str(typecheck_venv / "bin" / "mypy"), "--python-executable", str(typecheck_venv / "bin" / "python")], project)
