"""Fast tier: the generated project's GitHub Actions workflow, checked statically."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from helpers import TEMPLATE_DIR, UV_IMAGE, require_executable

pytestmark = pytest.mark.fast

WORKFLOW = Path(".github/workflows/ci.yml")
DEPENDABOT = Path(".github/dependabot.yml")
NO_STACK: dict[str, Any] = {
    "use_prometheus": False,
    "use_alertmanager": False,
    "use_grafana": False,
    "use_jaeger": False,
    "use_loki": False,
}
VARIANTS: dict[str, dict[str, Any]] = {
    "default": {},
    "no-dockerfile": {**NO_STACK, "use_dockerfile": False, "use_kubernetes": False},
    "telemetry-off": {
        **NO_STACK,
        "use_json_logging": False,
        "use_metrics": False,
        "use_tracing": False,
        "python_version": "3.12",
    },
}
PINNED = re.compile(r"^[\w.-]+/[\w.-]+@[0-9a-f]{40} # v\d+\.\d+\.\d+$")


def _load(project: Path) -> dict[Any, Any]:
    workflow = yaml.safe_load((project / WORKFLOW).read_text())
    assert isinstance(workflow, dict)
    return workflow


def _assert_schema(schema: str, path: Path) -> None:
    """check-jsonschema with one of its vendored schemas (GitHub's, Dependabot's)."""
    check = require_executable("check-jsonschema")
    result = subprocess.run(
        [check, "--builtin-schema", schema, str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def _steps(workflow: dict[Any, Any]) -> list[dict[str, Any]]:
    return [step for job in workflow["jobs"].values() for step in job["steps"]]


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_workflow_matches_the_github_schema(bake_once: Any, variant: str) -> None:
    project = bake_once(**VARIANTS[variant])
    _assert_schema("vendor.github-workflows", project / WORKFLOW)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_workflow_jobs_follow_the_answers(bake_once: Any, variant: str) -> None:
    answers = VARIANTS[variant]
    project = bake_once(**answers)
    workflow = _load(project)
    text = (project / WORKFLOW).read_text()

    assert workflow["permissions"] == {"contents": "read"}
    assert workflow["env"]["PYTHON_VERSION"] == answers.get("python_version", "3.13")
    jobs = workflow["jobs"]
    expected = {"lint", "test", "audit"} | ({"image"} if answers.get("use_dockerfile", True) else set())
    if answers.get("use_prometheus", True) or answers.get("use_alertmanager", True):
        expected.add("stack")
    if answers.get("use_kubernetes", True):
        expected.add("kubernetes")
    assert set(jobs) == expected

    runs = {job: "\n".join(step.get("run", "") for step in jobs[job]["steps"]) for job in jobs}
    assert "uv lock --check" in runs["lint"] and "uv sync --locked" in runs["lint"]
    assert "make lint" in runs["lint"] and "make typecheck" in runs["lint"]
    assert "make test" in runs["test"]
    assert runs["audit"].strip() == "make audit", "the audit is the Makefile's (tests/test_audit.py runs it)"
    if "stack" in jobs:
        assert runs["stack"].strip() == "make check-stack", "tests/test_stack_static.py runs it"
    if "kubernetes" in jobs:
        assert runs["kubernetes"].strip() == "make k8s-validate", "tests/test_kubernetes.py runs it"
    else:
        assert "kubectl" not in text and "kubernetes" not in text.lower()
    if "image" in jobs:
        assert "docker build" in runs["image"] and "hadolint Dockerfile" in runs["image"]
        assert 'scripts/smoke-image.sh "$IMAGE"' in runs["image"]
        smoke = project / "scripts" / "smoke-image.sh"
        assert smoke.stat().st_mode & 0o111, "the smoke script must be executable"
        assert subprocess.run(["bash", "-n", str(smoke)], check=False).returncode == 0
    else:
        assert "smoke-image" not in text and "docker" not in text.lower()
        assert not (project / "scripts" / "smoke-image.sh").exists()

    for job in jobs.values():
        assert job.get("timeout-minutes"), "every job has a timeout"
        checkout = job["steps"][0]
        assert checkout["uses"].startswith("actions/checkout@")
        assert checkout["with"]["persist-credentials"] is False


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_workflow_pins_actions_and_keeps_expressions_out_of_scripts(bake_once: Any, variant: str) -> None:
    project = bake_once(**VARIANTS[variant])
    workflow = _load(project)
    lines = (project / WORKFLOW).read_text().splitlines()
    uses_lines = [line.split("uses:", 1)[1].strip() for line in lines if line.strip().startswith(("uses:", "- uses:"))]
    assert uses_lines, "the workflow uses actions"
    for action in uses_lines:
        assert PINNED.match(action), f"not pinned to a commit SHA with its version: {action}"
    for step in _steps(workflow):
        # Untrusted context values reach scripts through env, never by template expansion.
        assert "${{" not in step.get("run", ""), step


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_workflow_has_no_blank_line_debris(bake_once: Any, variant: str) -> None:
    text = (bake_once(**VARIANTS[variant]) / WORKFLOW).read_text()
    assert text.endswith("\n") and not text.endswith("\n\n")
    assert "\n\n\n" not in text
    assert not [line for line in text.splitlines() if line != line.rstrip()], "trailing whitespace"


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_dependabot_updates_the_lock_and_the_pinned_actions(bake_once: Any, variant: str) -> None:
    answers = VARIANTS[variant]
    config_path = bake_once(**answers) / DEPENDABOT
    _assert_schema("vendor.dependabot", config_path)
    text = config_path.read_text()
    assert text.endswith("\n") and "\n\n\n" not in text
    updates = {entry["package-ecosystem"]: entry for entry in yaml.safe_load(text)["updates"]}
    assert set(updates) == {"uv", "github-actions"}
    assert all(entry["directory"] == "/" for entry in updates.values())
    groups = updates["uv"].get("groups", {})
    if answers.get("use_tracing", True):
        # The SDK and the instrumentations pin each other: one pull request moves them all.
        assert groups == {"opentelemetry": {"patterns": ["opentelemetry-*"]}}
    else:
        assert not groups


def test_no_workflow_without_github_actions(bake_once: Any) -> None:
    project = bake_once(use_github_actions=False)
    assert not (project / ".github").exists()
    assert (project / "Dockerfile").exists()


# --- the template's own workflow -----------------------------------------------------------

TEMPLATE_WORKFLOW = TEMPLATE_DIR / ".github" / "workflows" / "ci.yml"


def test_template_workflow_matches_the_github_schema() -> None:
    _assert_schema("vendor.github-workflows", TEMPLATE_WORKFLOW)


def test_template_dependabot_matches_the_schema() -> None:
    config_path = TEMPLATE_DIR / DEPENDABOT
    _assert_schema("vendor.dependabot", config_path)
    ecosystems = {entry["package-ecosystem"] for entry in yaml.safe_load(config_path.read_text())["updates"]}
    assert ecosystems == {"uv", "github-actions"}


def test_template_workflow_runs_the_readme_tests_and_audits_a_default_bake(bake_once: Any) -> None:
    workflow = yaml.safe_load(TEMPLATE_WORKFLOW.read_text())
    text = TEMPLATE_WORKFLOW.read_text()
    jobs = workflow["jobs"]
    assert set(jobs) == {"test", "audit"}
    assert workflow["permissions"] == {"contents": "read"}

    readme = (TEMPLATE_DIR / "README.md").read_text()
    test_command = re.search(r"<!-- test-command -->.*?^(uv .+?)$.*?<!-- /test-command -->", readme, re.S | re.M)
    assert test_command, "README.md gives its test command between the markers"
    pytest_step = next(step for step in jobs["test"]["steps"] if step.get("run") == test_command.group(1))
    assert pytest_step["env"] == {"REQUIRE_ALL_TIERS": "1", "PULL_IMAGES": "1"}, "nothing may skip there either"

    audit = "\n".join(step.get("run", "") for step in jobs["audit"]["steps"])
    default_slug = bake_once().name
    assert "cookiecutter --no-input" in audit
    assert f'uv lock --directory "$RUNNER_TEMP/bake/{default_slug}"' in audit
    assert f'make --directory "$RUNNER_TEMP/bake/{default_slug}" audit' in audit
    assert any(entry.get("cron") for entry in workflow[True]["schedule"]), "new advisories are caught weekly"

    ci_run = (TEMPLATE_DIR / ".ci" / "run").read_text()
    uv_pin = re.search(r'"uv==([\d.]+)"', ci_run)
    assert uv_pin and workflow["env"]["UV_VERSION"] == uv_pin.group(1), "one uv version for both CIs"

    for job in jobs.values():
        assert job.get("timeout-minutes")
        assert job["steps"][0]["with"]["persist-credentials"] is False
    for line in text.splitlines():
        if line.strip().startswith(("uses:", "- uses:")):
            assert PINNED.match(line.split("uses:", 1)[1].strip()), line
    for step in _steps(workflow):
        assert "${{" not in step.get("run", ""), step


def test_uv_is_pinned_to_one_version_everywhere() -> None:
    """The image's uv, both workflows', the CI script's and the build backend's range agree."""
    version = UV_IMAGE.rpartition(":")[2]
    project = TEMPLATE_DIR / "{{cookiecutter.project_slug}}"
    sources = {
        ".github/workflows/ci.yml": (TEMPLATE_DIR / WORKFLOW, r'UV_VERSION: "([^"]+)"'),
        "the project's ci.yml": (project / WORKFLOW, r'UV_VERSION: "([^"]+)"'),
        ".ci/run": (TEMPLATE_DIR / ".ci/run", r'"uv==([^"]+)"'),
        "the project's pyproject.toml": (project / "pyproject.toml", r'"uv_build>=([^,]+),'),
    }
    pins = {name: re.search(pattern, path.read_text(encoding="utf-8")) for name, (path, pattern) in sources.items()}
    assert {name: match and match[1] for name, match in pins.items()} == dict.fromkeys(pins, version)
    upper = re.search(r'"uv_build>=[^,]+,<([^"]+)"', (project / "pyproject.toml").read_text(encoding="utf-8"))
    assert upper, "the build backend's range has an upper bound"
    as_tuple = [tuple(int(part) for part in v.split(".")) for v in (version, upper[1])]
    assert as_tuple[0] < as_tuple[1], f"uv {version} is outside the build backend's range (<{upper[1]})"
