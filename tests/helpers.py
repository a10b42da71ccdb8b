"""Shared helpers for the template's test tiers.

A tier whose tool is missing skips with the reason on a developer machine and
fails in CI: `.ci/run` sets REQUIRE_ALL_TIERS=1, so a green CI never hides an
untested tier.
"""

from __future__ import annotations

import fcntl
import functools
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

import docker as docker_sdk
import pytest

TEMPLATE_DIR = Path(__file__).resolve().parent.parent
REQUIRE_ALL_TIERS = os.environ.get("REQUIRE_ALL_TIERS") == "1"
# In CI the template is a fresh clone with ../shared beside it.
SHARED_TOOLS = TEMPLATE_DIR.parent / "shared" / "tools"
# Set where a registry is reachable (the template's GitHub workflow): the real
# images are pulled instead of building local stand-ins.
PULL_IMAGES = os.environ.get("PULL_IMAGES") == "1"


def _default_answers() -> dict[str, Any]:
    """cookiecutter.json's defaults as cookiecutter renders them (the slug from the name, ...).

    Tests compare with these, not with "my-service": a fork that changes a default keeps its tests.
    """
    from cookiecutter.prompt import prompt_for_config

    raw = json.loads((TEMPLATE_DIR / "cookiecutter.json").read_text(encoding="utf-8"))
    return dict(prompt_for_config({"cookiecutter": raw}, no_input=True))


DEFAULT_ANSWERS = _default_answers()
DEFAULT_SLUG: str = DEFAULT_ANSWERS["project_slug"]
DEFAULT_PACKAGE: str = DEFAULT_ANSWERS["package_name"]
DEFAULT_PYTHON: str = DEFAULT_ANSWERS["python_version"]


def _uv_image() -> str:
    """The uv image the generated Dockerfile copies its binary from (test_workflow checks the other pins)."""
    dockerfile = (TEMPLATE_DIR / "{{cookiecutter.project_slug}}" / "Dockerfile").read_text(encoding="utf-8")
    match = re.search(r"^COPY --from=(ghcr\.io/astral-sh/uv:\S+) ", dockerfile, re.MULTILINE)
    assert match, "the Dockerfile copies uv from no pinned image"
    return match[1]


UV_IMAGE = _uv_image()


def runbook_queries(project: Path) -> list[str]:
    """The PromQL a runbook without Grafana gives in place of the dashboards' panels (code spans on a job)."""
    runbook = (project / "docs" / "monitoring.md").read_text(encoding="utf-8")
    return [span for span in re.findall(r"`([^`\n]+)`", runbook) if re.search(r'\{job="(?:app|cadvisor)"', span)]


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
    """A (stand-in) image must exist locally, or be pulled when PULL_IMAGES=1."""
    if _image_present(image):
        return
    if PULL_IMAGES:
        pulled = subprocess.run(["docker", "pull", image], capture_output=True, text=True, timeout=600, check=False)
        if pulled.returncode == 0:
            return
        unavailable(f"image {image} could not be pulled: {pulled.stderr.strip()[-500:]}")
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


# ---------------------------------------------------------------- docker (docker and stack tiers)


def _docker_cli() -> str:
    # Debian's client drives BuildKit without buildx; a newer client may not.
    return "/usr/bin/docker" if Path("/usr/bin/docker").exists() else "docker"


DOCKER = _docker_cli()


def docker_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in {"VIRTUAL_ENV", "UV_PROJECT_ENVIRONMENT"}}
    env["DOCKER_BUILDKIT"] = "1"
    env.update(extra)
    return env


@functools.cache
def docker_client() -> docker_sdk.DockerClient:
    """The Docker SDK for Python: containers, their logs, health, users and signals, and images.

    Builds stay with the CLI (`build_app_image`): the SDK's `images.build` drives the engine's
    classic builder, which refuses the Dockerfile's cache mounts ("the --mount option requires
    BuildKit"); BuildKit needs the CLI's session. `docker compose` has no SDK either.
    """
    require_docker()
    return docker_sdk.from_env(timeout=120)


def docker(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [DOCKER, *args], capture_output=True, text=True, timeout=timeout, check=False, env=docker_env()
    )
    if check and result.returncode != 0:
        pytest.fail(f"docker {' '.join(args[:3])} ... failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return result


def lock_project(project: Path, python_version: str) -> None:
    """`uv lock`, as the generated Makefile does: a fresh bake has no uv.lock."""
    if (project / "uv.lock").exists():
        return
    uv = shutil.which("uv")
    if uv is None:
        unavailable("'uv' is not on PATH")
    assert uv is not None
    result = subprocess.run(
        [uv, "lock"],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env=uv_env(find_python(python_version)),
    )
    assert result.returncode == 0, f"uv lock failed:\n{result.stderr[-3000:]}"


def build_standins(file: Path) -> None:
    """Stand-ins for the images a Dockerfile or a resolved compose file names (nothing can be pulled here)."""
    if PULL_IMAGES:
        return  # the real images: `require_image` pulls them, and so do builds of missing bases
    script = SHARED_TOOLS / "standins.sh"
    if not script.exists():
        unavailable(f"{script} is missing: cannot provide base images without a registry")
    # One build at a time across xdist workers: the script shares its rootfs cache.
    with open(Path(tempfile.gettempdir()) / "template-standins.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        result = subprocess.run(
            ["bash", str(script), str(file)],
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
            env=_outside_venv(),
        )
    if result.returncode != 0:
        unavailable(f"stand-in base images could not be built:\n{result.stderr[-2000:]}")


def _outside_venv() -> dict[str, str]:
    """This environment without the test venv: the script's `python3 -m pip` needs the machine's Python."""
    venv = os.environ.get("VIRTUAL_ENV") or sys.prefix
    path = [entry for entry in os.environ.get("PATH", "").split(os.pathsep) if not entry.startswith(venv)]
    env = {k: v for k, v in os.environ.items() if k not in {"VIRTUAL_ENV", "PYTHONHOME", "PYTHONPATH"}}
    env["PATH"] = os.pathsep.join(path)
    return env


def provide_images(*images: str) -> None:
    """These images, as stand-ins where they are missing, whatever names them.

    standins.sh reads the images of `FROM` lines and `image:` keys; one a Dockerfile
    only copies from (`COPY --from=ghcr.io/astral-sh/uv:...`) or a test runs directly
    (promtool, amtool) is listed for it here. A fresh machine has none of them.
    """
    missing = [image for image in images if not _image_present(image)]
    if missing:
        with tempfile.TemporaryDirectory() as folder:
            listing = Path(folder) / "Dockerfile"
            listing.write_text("".join(f"FROM {image}\n" for image in missing))
            build_standins(listing)
    for image in images:
        require_image(image)


def _image_present(image: str) -> bool:
    require_docker()
    result = subprocess.run(["docker", "image", "inspect", image], capture_output=True, timeout=60, check=False)
    return result.returncode == 0


def build_app_image(project: Path, python_version: str, tag: str, build_args: dict[str, str]) -> float:
    """Lock a baked project, provide its base images and build its Dockerfile as is; returns the build time."""
    lock_project(project, python_version)
    build_standins(project / "Dockerfile")
    provide_images(f"python:{python_version}-slim", UV_IMAGE)
    args = [arg for key, value in build_args.items() for arg in ("--build-arg", f"{key}={value}")]
    started = time.monotonic()
    # The CLI with BuildKit, not the SDK: see `docker_client`.
    docker("build", "--pull=false", "-t", tag, *args, str(project), timeout=900)
    return time.monotonic() - started


# Every metric name the generated service exports (the contract the dashboards,
# rules and stack tests may rely on).
APP_METRICS = frozenset(
    {
        "http_server_request_duration_seconds_bucket",
        "http_server_request_duration_seconds_count",
        "http_server_request_duration_seconds_sum",
        "http_server_active_requests",
        "app_build_info",
        "app_event_loop_lag_seconds",
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_virtual_memory_bytes",
        "process_open_fds",
        "process_max_fds",
        "process_start_time_seconds",
        "python_gc_collections_total",
        "python_gc_objects_collected_total",
        "python_gc_objects_uncollectable_total",
        "python_info",
    }
)


def unowned_files(project: Path, manifest: Mapping[str, Any]) -> list[str]:
    """Files that no core pattern and no feature path claims."""
    owned = [p for rule in manifest["features"].values() for p in rule["paths"]]
    core = manifest.get("core", [])
    orphans = []
    for file in project.rglob("*"):
        if not file.is_file():
            continue
        rel = file.relative_to(project).as_posix()
        if rel == "template-manifest.yaml":
            continue
        if any(rel == p or rel.startswith(p.rstrip("/") + "/") for p in owned):
            continue
        if not any(fnmatch(rel, pattern) for pattern in core):
            orphans.append(rel)
    return sorted(orphans)
