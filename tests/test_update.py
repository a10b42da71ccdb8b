"""A generated project takes later template changes with `cruft update`."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from helpers import DEFAULT_SLUG, TEMPLATE_DIR, require_executable, run

pytestmark = pytest.mark.fast

GIT = ["git", "-c", "user.name=test", "-c", "user.email=test@example.com"]


def commit_all(repo: Path, message: str) -> None:
    run([*GIT, "add", "-A"], repo)
    run([*GIT, "commit", "-q", "-m", message], repo)


@pytest.mark.parametrize("generator", ["cookiecutter", "cruft"])
def test_cruft_update_brings_template_changes_in(tmp_path: Path, generator: str) -> None:
    """Made with plain cookiecutter (as the README says, from a relative path) or with
    `cruft create`, a project takes the template's next commit with `cruft update`."""
    require_executable("git")
    cruft = shutil.which("cruft")
    cookiecutter = shutil.which("cookiecutter")
    assert cruft is not None and cookiecutter is not None, "both are dev dependencies of the template"
    template = tmp_path / "template"
    shutil.copytree(
        TEMPLATE_DIR,
        template,
        ignore=shutil.ignore_patterns(".git", ".venv", "__pycache__", ".*_cache", "results"),
    )
    run(["git", "init", "-q", "-b", "main"], template)
    commit_all(template, "template v1")
    first_commit = run(["git", "rev-parse", "HEAD"], template).strip()

    if generator == "cookiecutter":
        # As from a shell in tmp_path: the hook finds a relative template through PWD.
        subprocess.run(
            [cookiecutter, "--no-input", "template"],
            cwd=tmp_path,
            env={**os.environ, "PWD": str(tmp_path)},
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
        state = json.loads((tmp_path / DEFAULT_SLUG / ".cruft.json").read_text())
        assert (state["template"], state["commit"]) == (str(template), first_commit)
    else:
        run([cruft, "create", "--no-input", f"file://{template}"], tmp_path)
    project = tmp_path / DEFAULT_SLUG
    run(["git", "init", "-q", "-b", "main"], project)
    commit_all(project, "generated")
    secrets_before = (project / ".env").read_text()

    readme = template / "{{cookiecutter.project_slug}}" / "README.md"
    readme.write_text(readme.read_text().replace("## Test and check", "## Test and check it"))
    commit_all(template, "template v2")

    run([cruft, "update", "--skip-apply-ask", "--allow-untracked-files"], project)
    assert "## Test and check it" in (project / "README.md").read_text()
    assert (project / ".env").read_text() == secrets_before, "secrets are per checkout"
    assert not list(project.rglob("*.rej")), "the update applied cleanly"
    status = subprocess.run(["git", "status", "--short"], cwd=project, capture_output=True, text=True, check=True)
    assert {line[3:] for line in status.stdout.splitlines()} == {".cruft.json", "README.md"}


def test_an_unknown_template_location_is_kept_as_typed(tmp_path: Path) -> None:
    """Without a PWD to resolve a relative path by, .cruft.json keeps it and records no commit."""
    cookiecutter = shutil.which("cookiecutter")
    assert cookiecutter is not None
    env = {key: value for key, value in os.environ.items() if key != "PWD"}
    subprocess.run(
        [cookiecutter, "--no-input", "-o", str(tmp_path), os.path.relpath(TEMPLATE_DIR, tmp_path)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    state = json.loads((tmp_path / DEFAULT_SLUG / ".cruft.json").read_text())
    assert state["template"] == os.path.relpath(TEMPLATE_DIR, tmp_path)
    assert state["commit"] is None
