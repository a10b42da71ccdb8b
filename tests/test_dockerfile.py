"""Fast tier: the generated Dockerfile and .dockerignore, checked statically (hadolint),
and the one Python version that the pin, the image and the project metadata name."""

from __future__ import annotations

import json
import os
import re
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from helpers import DEFAULT_ANSWERS, DEFAULT_PACKAGE, DEFAULT_PYTHON, TEMPLATE_DIR, find_python, require_executable

pytestmark = pytest.mark.fast

NO_STACK: dict[str, Any] = {
    "use_prometheus": False,
    "use_alertmanager": False,
    "use_grafana": False,
    "use_jaeger": False,
    "use_loki": False,
}
VARIANTS: dict[str, dict[str, Any]] = {
    "default": {},
    "telemetry-off": {**NO_STACK, "use_json_logging": False, "use_metrics": False, "use_tracing": False},
    "py312-proprietary-port": {"python_version": "3.12", "license": "Proprietary", "port": "9123"},
    # Characters that mean something to Dockerfile parsing stay data.
    "hostile-description": {"description": 'Costs $HOME "quoted" \\back\\slash `tick` ${PATH}'},
}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_hadolint_clean(bake_once: Any, variant: str) -> None:
    project = bake_once(**VARIANTS[variant])
    hadolint = require_executable("hadolint")
    result = subprocess.run(
        [hadolint, "--failure-threshold", "style", "Dockerfile"],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_dockerfile_follows_the_answers(bake_once: Any, variant: str) -> None:
    answers = VARIANTS[variant]
    project = bake_once(**answers)
    text = (project / "Dockerfile").read_text()
    python_version = answers.get("python_version", DEFAULT_PYTHON)
    port = answers.get("port", DEFAULT_ANSWERS["port"])

    assert "{{" not in text and "{%" not in text
    assert not text.startswith("# syntax="), "a syntax directive would pull a frontend image"
    assert f"ARG PYTHON_VERSION={python_version}\n" in text
    assert re.search(r"^COPY --from=ghcr\.io/astral-sh/uv:\d+\.\d+\.\d+ /uv /uvx /bin/$", text, re.M)
    assert "uv sync --locked --no-dev --no-install-project" in text
    assert "--mount=type=cache,target=/root/.cache/uv" in text
    assert "UV_COMPILE_BYTECODE=1" in text
    assert f"EXPOSE {port}\n" in text and f"APP_PORT={port}" in text
    assert re.search(r"^USER 10001:10001$", text, re.M)
    assert f'ENTRYPOINT ["python", "-m", "{answers.get("package_name", DEFAULT_PACKAGE)}"]' in text
    assert "curl" not in text.split("HEALTHCHECK", 1)[1].split("\n\n", 1)[0]
    if answers.get("license") == "Proprietary":
        assert "image.licenses" not in text
    description = answers.get("description")
    if description:
        # Inside double quotes, Docker would expand $VAR and eat backslashes.
        assert 'description="Costs \\$HOME \\"quoted\\" \\\\back\\\\slash `tick` \\${PATH}"' in text


def test_dockerignore_is_an_allowlist(bake_once: Any) -> None:
    lines = [
        line.strip()
        for line in (bake_once() / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "*", "everything is excluded first"
    allowed = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    assert allowed == {"pyproject.toml", "uv.lock", "README.md", "LICENSE", "src"}
    assert {"**/.env", "**/__pycache__"} <= set(lines)


def test_the_image_files_go_with_the_dockerfile_toggle(bake_once: Any) -> None:
    project: Path = bake_once(**NO_STACK, use_dockerfile=False, use_kubernetes=False)
    for path in ("Dockerfile", ".dockerignore", "scripts/smoke-image.sh"):
        assert not (project / path).exists(), path


PYTHON_VERSIONS: list[str] = json.loads((TEMPLATE_DIR / "cookiecutter.json").read_text())["python_version"]


@pytest.mark.parametrize("python_version", PYTHON_VERSIONS)
def test_one_python_everywhere(bake_once: Any, python_version: str) -> None:
    """.python-version (what uv sync, uv run, `make run` and the tests use), the image's base,
    requires-python, the linters' target and CI name the chosen Python."""
    project = bake_once(python_version=python_version)
    assert (project / ".python-version").read_text() == f"{python_version}\n"
    dockerfile = (project / "Dockerfile").read_text()
    assert re.findall(r"^ARG PYTHON_VERSION=(\S+)$", dockerfile, re.M) == [python_version]
    bases = re.findall(r"^FROM (\S+)", dockerfile, re.M)
    assert bases == ["python:${PYTHON_VERSION}-slim"] * 2, bases
    pyproject = tomllib.loads((project / "pyproject.toml").read_text())
    assert pyproject["project"]["requires-python"] == f">={python_version}"
    assert pyproject["tool"]["ruff"]["target-version"] == "py" + python_version.replace(".", "")
    assert pyproject["tool"]["mypy"].get("python_version", python_version) == python_version
    ci = yaml.safe_load((project / ".github" / "workflows" / "ci.yml").read_text())
    assert ci["env"]["PYTHON_VERSION"] == python_version


@pytest.mark.parametrize("python_version", PYTHON_VERSIONS)
def test_uv_runs_the_pinned_python(bake_once: Any, python_version: str) -> None:
    """In the new folder, uv picks the interpreter .python-version names among all it can find."""
    project = bake_once(python_version=python_version)
    uv = require_executable("uv")
    others = [str(Path(find_python(v)).parent) for v in PYTHON_VERSIONS if v != python_version]
    env = {k: v for k, v in os.environ.items() if k not in {"VIRTUAL_ENV", "UV_PYTHON", "UV_PROJECT_ENVIRONMENT"}}
    # The other choices come first on PATH and the pinned one last: only the pin makes uv take it.
    path = [*others, env.get("PATH", ""), str(Path(find_python(python_version)).parent)]
    env.update(PATH=os.pathsep.join(path), UV_PYTHON_DOWNLOADS="never")
    found = subprocess.run([uv, "python", "find"], cwd=project, env=env, capture_output=True, text=True, check=False)
    assert found.returncode == 0, found.stderr
    version = subprocess.run(
        [found.stdout.strip(), "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert version == python_version, f"uv picked {found.stdout.strip()} ({version})"
