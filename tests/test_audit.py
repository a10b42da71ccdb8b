"""Generated tier: the dependency audit a baked project's CI runs (`make audit`).

The command is taken from the baked Makefile (`make -n audit`), which the
generated workflow's audit job calls, and run for real on the baked default
project's lock, against `osv_service.py`, a local stand-in of the OSV API (the
real one is out of reach here; the template's GitHub workflow audits against
it). So these tests show what the audit asks about, and that an advisory, an
out-of-date lock or an unreachable database fail the build.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from helpers import DEFAULT_PYTHON, find_python, lock_project, require_executable, run, uv_env
from osv_service import OsvService, advisory

pytestmark = pytest.mark.generated

PYTHON_VERSION = DEFAULT_PYTHON


@pytest.fixture(scope="module")
def project(bake_once: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the default bake, locked as `make` would lock it."""
    project = tmp_path_factory.mktemp("audit") / "project"
    shutil.copytree(bake_once(), project)
    lock_project(project, PYTHON_VERSION)
    return project


def audit_env() -> dict[str, str]:
    python = find_python(PYTHON_VERSION)
    env = uv_env(python)
    # Like `uv sync`, `uv audit` needs an interpreter for requires-python; it searches PATH, where
    # a pyenv shim that cannot run 3.13 makes it fail, so the one found goes first.
    env["PATH"] = f"{Path(python).parent}{os.pathsep}{env['PATH']}"
    return env


def audit_command(project: Path) -> list[str]:
    """The command `make audit` runs, as make prints it."""
    make = require_executable("make")
    printed = run([make, "--no-print-directory", "-n", "audit"], project).strip().splitlines()
    assert len(printed) == 1, printed
    command = shlex.split(printed[0])
    assert command[:2] == ["uv", "audit"] and "--locked" in command and "--no-dev" in command
    return command


def run_audit(project: Path, service_url: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*audit_command(project), "--service-url", service_url],
        cwd=project,
        env=audit_env(),
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


def runtime_packages(project: Path) -> dict[str, str]:
    """What the image installs: the lock's runtime dependencies, for every platform, by name."""
    exported = run(
        ["uv", "export", "--locked", "--no-dev", "--no-emit-project", "--no-hashes", "--format", "requirements-txt"],
        project,
        audit_env(),
    )
    pins = dict(re.findall(r"^([A-Za-z0-9._-]+)==([^\s;]+)", exported, re.M))
    assert "fastapi" in pins and "starlette" in pins, exported
    return pins


def test_a_clean_lock_passes_and_every_runtime_dependency_is_asked_about(project: Path) -> None:
    service = OsvService({})
    with service.serve() as url:
        result = run_audit(project, url)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "Found no known vulnerabilities" in output
    assert {ecosystem for ecosystem, _, _ in service.queried} == {"PyPI"}
    pins = runtime_packages(project)
    assert {name: version for _, name, version in service.queried} == pins
    assert len(service.queried) == len(pins), "each package once"


def test_an_advisory_for_a_locked_version_fails_the_build(project: Path) -> None:
    pins = runtime_packages(project)
    dev_only = "pytest"
    assert dev_only not in pins
    dev_version = re.search(r'\[\[package\]\]\nname = "pytest"\nversion = "([^"]+)"', (project / "uv.lock").read_text())
    assert dev_version, "pytest is in the lock (dev group)"
    service = OsvService(
        {
            ("starlette", pins["starlette"]): [
                advisory("GHSA-test-star-0001", "starlette", "999.0", "Request smuggling in a test advisory")
            ],
            # The image does not ship dev tools: an advisory for one must not fail the image's audit.
            (dev_only, dev_version.group(1)): [advisory("GHSA-test-devt-0001", dev_only, "999.0", "dev only")],
        }
    )
    with service.serve() as url:
        result = run_audit(project, url)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert f"starlette {pins['starlette']} has 1 known vulnerability" in output
    assert "GHSA-test-star-0001" in output and "Fixed in: 999.0" in output
    assert "GHSA-test-devt-0001" not in output and service.fetched == ["GHSA-test-star-0001"]


def test_an_unreachable_database_fails_the_build(project: Path) -> None:
    with OsvService({}).serve() as url:
        pass  # the port is closed again: connections are refused
    result = run_audit(project, url)
    assert result.returncode != 0, result.stdout
    assert "Connection refused" in result.stderr


def test_an_out_of_date_lock_fails_instead_of_being_audited(project: Path, tmp_path: Path) -> None:
    stale = tmp_path / "stale"
    shutil.copytree(project, stale, ignore=shutil.ignore_patterns(".venv"))
    pyproject = stale / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace("dependencies = [\n", 'dependencies = [\n    "six",\n', 1))
    service = OsvService({})
    with service.serve() as url:
        result = run_audit(stale, url)
    assert result.returncode != 0, result.stdout
    assert "needs to be updated" in result.stderr
    assert service.queried == [], "nothing is audited from a lock that does not match pyproject.toml"
