"""A generated project takes later template changes with `cruft update`."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from helpers import TEMPLATE_DIR, require_executable, run

pytestmark = pytest.mark.fast

GIT = ["git", "-c", "user.name=test", "-c", "user.email=test@example.com"]


def commit_all(repo: Path, message: str) -> None:
    run([*GIT, "add", "-A"], repo)
    run([*GIT, "commit", "-q", "-m", message], repo)


def test_cruft_update_brings_template_changes_in(tmp_path: Path) -> None:
    require_executable("git")
    cruft = shutil.which("cruft")
    assert cruft is not None, "cruft is a dev dependency of the template"
    template = tmp_path / "template"
    shutil.copytree(
        TEMPLATE_DIR,
        template,
        ignore=shutil.ignore_patterns(".git", ".venv", "__pycache__", ".*_cache", "results"),
    )
    run(["git", "init", "-q", "-b", "main"], template)
    commit_all(template, "template v1")

    run([cruft, "create", "--no-input", f"file://{template}"], tmp_path)
    project = tmp_path / "my-service"
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
