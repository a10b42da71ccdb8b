"""Docker tier: a new user's first run, as both READMEs give it.

`cookiecutter`, then in the new folder `docker compose build` and `docker compose
up`, with no other command between: the post-gen hook's `uv lock` (SKIP_UV_LOCK
unset, as for a user) is what the image installs from. A lock that is missing
or out of date stops the build with uv's message saying to run `uv lock`.

Each bake is the default one under a name of its own (its compose project and
image tag), so that runs never collide. Only what exists on the test machines
starts: the app and the `prometheus` and `alertmanager` profiles
(COMPOSE_PROFILES in the environment, which compose takes over .env's), with
every published port made ephemeral by a test-only compose file (COMPOSE_FILE).
The base images are provided first (stand-ins where no registry is reachable),
as a user's Docker would pull them. Compose is a command (the SDK has no
compose); the containers it started are read through the Docker SDK.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import shutil
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker.errors
import pytest
import yaml

from helpers import (
    DEFAULT_ANSWERS,
    DEFAULT_PYTHON,
    UV_IMAGE,
    docker_client,
    docker_env,
    find_python,
    provide_images,
    require_docker,
    unavailable,
)

pytestmark = [pytest.mark.docker, pytest.mark.xdist_group("docker")]

PROFILES = ("prometheus", "alertmanager")
# Every published port of what runs here, ephemeral on 127.0.0.1.
PORTS = """\
services:
  app:
    ports: !override
      - "127.0.0.1::{port}"
  prometheus:
    ports: !override
      - "127.0.0.1::9090"
  alertmanager:
    ports: !override
      - "127.0.0.1::9093"
"""


@dataclass
class NewProject:
    path: Path
    slug: str
    env: dict[str, str]

    def compose(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["docker", "compose", *args],
            cwd=self.path,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def tear_down(self) -> None:
        self.compose("down", "--volumes", "--remove-orphans", "--timeout", "20", timeout=180)
        with contextlib.suppress(docker.errors.NotFound):
            docker_client().images.remove(f"{self.slug}:local", force=True)


def new_project(bake: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, *, hook_locks: bool) -> NewProject:
    """A default bake as a user gets it, and the images its compose file names for what runs here."""
    require_docker()
    if hook_locks:
        monkeypatch.delenv("SKIP_UV_LOCK")
        if shutil.which("uv") is None and "UV" not in os.environ:
            unavailable("'uv' is not on PATH: the post-gen hook cannot lock")
        # The interpreter .python-version names, where uv looks (it may not download one here).
        interpreter = Path(find_python(DEFAULT_PYTHON)).parent
        monkeypatch.setenv("PATH", os.pathsep.join([os.environ.get("PATH", ""), str(interpreter)]))
    slug = f"first-run-{uuid.uuid4().hex[:8]}"
    path: Path = bake(project_slug=slug)
    images = yaml.safe_load((path / "compose.yaml").read_text())["x-images"]
    provide_images(f"python:{DEFAULT_PYTHON}-slim", UV_IMAGE, *(images[profile] for profile in PROFILES))
    ports = tmp_path / "ports.yaml"
    ports.write_text(PORTS.format(port=DEFAULT_ANSWERS["port"]))
    env = docker_env(
        COMPOSE_PROFILES=",".join(PROFILES),
        COMPOSE_FILE=os.pathsep.join(["compose.yaml", str(ports)]),
        BUILDKIT_PROGRESS="plain",  # the failing step's output in full, not a terminal's summary
    )
    return NewProject(path, slug, env)


def test_compose_up_straight_after_generation(bake: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    project = new_project(bake, monkeypatch, tmp_path, hook_locks=True)
    assert (project.path / "uv.lock").is_file(), "the post-gen hook made no uv.lock"
    try:
        built = project.compose("build", timeout=900)
        assert built.returncode == 0, f"docker compose build failed:\n{built.stdout[-3000:]}\n{built.stderr[-3000:]}"
        up = project.compose("up", "--detach", "--wait", "--wait-timeout", "120", timeout=300)
        logs = "" if up.returncode == 0 else project.compose("logs", "--no-color", "--tail", "40").stdout
        assert up.returncode == 0, f"docker compose up failed:\n{up.stderr[-3000:]}\n{logs[-4000:]}"

        containers = docker_client().containers.list(
            all=True, filters={"label": f"com.docker.compose.project={project.slug}"}
        )
        states = {
            c.labels["com.docker.compose.service"]: (c.attrs["State"]["Status"], c.attrs["State"]["Health"]["Status"])
            for c in containers
        }
        assert states == dict.fromkeys(("app", *PROFILES), ("running", "healthy")), states
        (app,) = [c for c in containers if c.labels["com.docker.compose.service"] == "app"]
        assert app.image is not None and f"{project.slug}:local" in app.image.tags, "not the image compose built"
        port = int(DEFAULT_ANSWERS["port"])
        bindings = app.ports.get(f"{port}/tcp")
        assert bindings, f"port {port} is not published: {app.ports}"
        published = bindings[0]
        connection = http.client.HTTPConnection(published["HostIp"], int(published["HostPort"]), timeout=10)
        try:
            connection.request("GET", "/health")
            response = connection.getresponse()
            assert response.status == 200 and json.loads(response.read()) == {"status": "ok"}
        finally:
            connection.close()
    finally:
        project.tear_down()


@pytest.mark.parametrize("lock", ["stale", "missing"])
def test_a_stale_or_missing_lock_stops_the_build_saying_to_run_uv_lock(
    bake: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, lock: str
) -> None:
    """The image installs what uv.lock pins (`uv sync --locked`) or nothing."""
    project = new_project(bake, monkeypatch, tmp_path, hook_locks=lock == "stale")
    pyproject = project.path / "pyproject.toml"
    if lock == "stale":
        assert (project.path / "uv.lock").is_file(), "the post-gen hook made no uv.lock"
        text = pyproject.read_text()
        pyproject.write_text(text.replace("dependencies = [\n", 'dependencies = [\n    "idna>=3",\n', 1))
        assert pyproject.read_text() != text, "pyproject.toml has no dependencies list to add to"
    else:
        assert not (project.path / "uv.lock").exists()
    try:
        built = project.compose("build", timeout=600)
    finally:
        project.tear_down()
    output = built.stdout + built.stderr
    assert built.returncode != 0, output[-3000:]
    assert "run `uv lock`" in output, output[-3000:]
