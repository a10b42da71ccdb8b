"""Shape the freshly rendered project to the answers.

1. Delete every path owned by a disabled feature, as declared in
   ``template-manifest.yaml`` (then delete the manifest itself). A declared
   path that does not exist is an error: the manifest must not drift.
2. Write ``.env`` from ``.env.example``, replacing each ``change-me``
   placeholder with a fresh random secret. No network is needed.
3. Complete ``.cruft.json`` (the answers) with where the template came from
   and its commit, so that ``cruft update`` knows what changed since.
4. Lock the dependencies (``uv lock``), so that ``docker compose up --build``
   works in the new folder straight away. Without uv or the package index,
   it says in one line what to run later, and writes no lock; the project
   is complete either way.

Answers arrive as JSON data, never as Python source. If this script fails,
cookiecutter removes the whole project folder.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml  # a dependency of cookiecutter itself

MANIFEST = "template-manifest.yaml"
PLACEHOLDER = "change-me"
# Scripted bakes (the template's tests, hundreds of them) set this to generate
# without resolving the dependencies; the project is then locked by `make` or `uv lock`.
SKIP_LOCK_VARIABLE = "SKIP_UV_LOCK"
# A first lock on a cold cache takes seconds; an unreachable index fails in a few.
LOCK_TIMEOUT_SECONDS = 120


class ManifestError(RuntimeError):
    """The manifest and the rendered files disagree."""


RULE_KEYS = ("when", "when_any", "paths")


def load_manifest(project: Path) -> dict[str, Any]:
    manifest = yaml.safe_load((project / MANIFEST).read_text(encoding="utf-8"))
    if not isinstance(manifest, dict) or not isinstance(manifest.get("features"), dict):
        raise ManifestError(f"{MANIFEST}: expected a mapping with a 'features' mapping")
    for name, rule in manifest["features"].items():
        paths = rule.get("paths") if isinstance(rule, dict) else None
        if not isinstance(paths, list) or not paths or not all(isinstance(p, str) and p for p in paths):
            raise ManifestError(f"{MANIFEST}: feature {name!r} must list the paths it owns")
        # A misspelt condition (`when_all:`) would otherwise leave the feature always on.
        unknown = [str(key) for key in rule if key not in RULE_KEYS]
        if unknown:
            raise ManifestError(
                f"{MANIFEST}: feature {name!r} has unknown keys {', '.join(unknown)} (expected {', '.join(RULE_KEYS)})"
            )
        for key in ("when", "when_any"):
            toggles = rule.get(key, ["-"])
            if not isinstance(toggles, list) or not toggles or not all(isinstance(t, str) and t for t in toggles):
                raise ManifestError(f"{MANIFEST}: feature {name!r}: {key!r} must be a list of toggle names")
    return manifest


def feature_enabled(rule: Mapping[str, Any], answers: Mapping[str, Any]) -> bool:
    """A feature is on when all of `when` and (if given) any of `when_any` hold."""
    for toggle in (*rule.get("when", ()), *rule.get("when_any", ())):
        if toggle not in answers:
            raise ManifestError(f"{MANIFEST}: unknown toggle {toggle!r}")
    when_all = all(answers[t] is True for t in rule.get("when", ()))
    when_any = rule.get("when_any")
    return when_all and (when_any is None or any(answers[t] is True for t in when_any))


def disabled_paths(manifest: Mapping[str, Any], answers: Mapping[str, Any]) -> list[str]:
    paths: list[str] = []
    for rule in manifest["features"].values():
        if not feature_enabled(rule, answers):
            paths.extend(rule["paths"])
    return paths


def check_paths_exist(project: Path, manifest: Mapping[str, Any]) -> None:
    """Every declared path, enabled or not, must be in the rendered template."""
    declared = [p for rule in manifest["features"].values() for p in rule.get("paths", ())]
    missing = [p for p in declared if not (project / p).exists()]
    if missing:
        raise ManifestError(f"{MANIFEST} lists paths the template does not have: {', '.join(missing)}")


def remove_paths(project: Path, paths: Iterable[str]) -> None:
    for target in (project / p for p in paths):
        if not target.exists():  # inside a folder deleted a moment ago
            continue
        if target.is_dir():
            shutil.rmtree(target)
        else:
            target.unlink()


def prune_empty_dirs(project: Path) -> None:
    for directory in sorted((p for p in project.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
        if not any(directory.iterdir()):
            directory.rmdir()


def write_env(project: Path) -> None:
    """Create the git-ignored .env from .env.example with real secrets.

    A project generated again over itself (`cookiecutter -f`) keeps its .env:
    its secrets are already in use (Grafana's stored admin password, ...).
    """
    env = project / ".env"
    if env.exists():
        env.chmod(0o600)
        return
    lines = []
    for line in (project / ".env.example").read_text(encoding="utf-8").splitlines():
        key, sep, value = line.partition("=")
        if sep and not line.lstrip().startswith("#") and value == PLACEHOLDER:
            line = f"{key}={secrets.token_urlsafe(24)}"
        lines.append(line)
    env.write_text("\n".join(lines) + "\n", encoding="utf-8")
    env.chmod(0o600)


def template_origin(answers: Mapping[str, Any]) -> tuple[str, str | None]:
    """The template's location as `cruft update` needs it, and its commit if it is a git checkout.

    A remote template is cloned to an absolute folder. A local one is named as
    typed, relative to the folder cookiecutter was started in, which a hook
    (run inside the new project) knows only from the shell's PWD; a location
    that cannot be found is kept as typed, without a commit.
    """
    template, repo_dir = str(answers["_template"]), str(answers["_repo_dir"])
    repo = Path(repo_dir).expanduser()
    if not repo.is_absolute():
        repo = Path(os.environ.get("PWD", "")) / repo
    if not (repo / "cookiecutter.json").is_file():
        return template, None
    if repo_dir == template:  # a local folder, not a clone of a URL
        template = str(repo.resolve())
    try:
        commit = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=30, check=True
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):  # no git, or not a git checkout
        commit = None
    return template, commit or None


def record_template_origin(project: Path, answers: Mapping[str, Any]) -> None:
    if "_repo_dir" not in answers:  # rendered by cruft, which records the origin itself
        return
    state_file = project / ".cruft.json"
    state = json.loads(state_file.read_text(encoding="utf-8"))
    state["template"], state["commit"] = template_origin(answers)
    state_file.write_text(json.dumps(state, indent=2) + "\n", encoding="utf-8")


def lock_dependencies(project: Path, answers: Mapping[str, Any]) -> None:
    """`uv lock`, whose uv.lock the image installs from (`uv sync --locked`).

    Not when the project already has a lock (it is the project's own), nor when
    cruft renders the template (`cruft update` diffs two fresh renders: their
    locks would patch the project's). When uv fails, whatever it may have
    written goes, and one line says what to run later.
    """
    lock = project / "uv.lock"
    if os.environ.get(SKIP_LOCK_VARIABLE) == "1" or lock.exists() or "_repo_dir" not in answers:
        return
    uv = shutil.which("uv") or os.environ.get("UV")  # `uv run` and `uvx` name their own binary in UV
    if uv is None:
        reason = "uv is not installed"
    else:
        try:
            result = subprocess.run(
                [uv, "lock", "--quiet"],
                cwd=project,
                capture_output=True,
                text=True,
                timeout=LOCK_TIMEOUT_SECONDS,
                check=False,
            )
            first = (result.stderr.strip().splitlines() or [f"exit code {result.returncode}"])[0]
            reason = "" if result.returncode == 0 else f"uv lock: {first.removeprefix('error: ')}"
        except subprocess.TimeoutExpired:
            reason = f"no answer within {LOCK_TIMEOUT_SECONDS} s"
    if reason:
        lock.unlink(missing_ok=True)  # there was none before
        then = "before `docker compose up --build`" if answers.get("use_dockerfile") else "(or any `make` target)"
        print(f"uv.lock not created ({reason}): run `uv lock` in {project.name} {then}.")


def main(raw: str, project: Path) -> int:
    answers = json.loads(raw)
    try:
        manifest = load_manifest(project)
        check_paths_exist(project, manifest)
        remove_paths(project, disabled_paths(manifest, answers))
        (project / MANIFEST).unlink()
        prune_empty_dirs(project)
        write_env(project)
        record_template_origin(project, answers)
        lock_dependencies(project, answers)
    except (ManifestError, OSError, ValueError, yaml.YAMLError) as error:
        print(f"ERROR: {error}", file=sys.stderr)
        return 1
    return 0


def remove_rendered_copy() -> None:
    """Delete the rendered copy of this hook that cookiecutter runs and leaves in the temp folder."""
    script = Path(sys.argv[0]).resolve()
    if script.parent == Path(tempfile.gettempdir()).resolve():
        script.unlink(missing_ok=True)


if __name__ == "__main__":
    remove_rendered_copy()  # cookiecutter never deletes it (one file per hook per bake)
    # The answers as JSON in a single-quoted raw literal: `tojson` escapes every ',
    # so no answer can end the literal (keep the quotes: formatting is skipped).
    sys.exit(main(r'{{ cookiecutter | tojson }}', Path.cwd()))  # fmt: skip
