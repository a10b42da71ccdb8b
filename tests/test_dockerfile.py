"""Fast tier: the generated Dockerfile and .dockerignore, checked statically (hadolint)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from helpers import DEFAULT_ANSWERS, DEFAULT_PACKAGE, DEFAULT_PYTHON, require_executable

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
