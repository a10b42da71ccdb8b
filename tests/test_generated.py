"""The generated tier: baked projects in their own venvs, running their own checks.

Four projects get the full treatment (lock, sync, ruff, mypy --strict and
their own pytest suite, which starts real uvicorn processes). Every other
combination of the matrix is type-checked with mypy --strict against one
shared venv that holds every optional dependency.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from combinations import ALL_OFF, ALL_ON, combo_id, matrix, without
from helpers import DEFAULT_PACKAGE, find_python, run, uv_env

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


def _load_receiver(project: Path) -> Any:
    """The baked project's own OTLP/HTTP receiver (tests/otlp_receiver.py), which decodes spans."""
    spec = importlib.util.spec_from_file_location("baked_otlp_receiver", project / "tests" / "otlp_receiver.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.OtlpReceiver


def test_opentelemetry_instrument_with_the_registrys_instrumentations(bake: Any) -> None:
    """What the distro's docs tell a user to do: bootstrap the instrumentations, run the service under them.

    `opentelemetry-bootstrap -a requirements` names an instrumentation for each library in the
    venv (FastAPI, Starlette, ASGI among them); each is installed from the registry where it
    has that version. The service must still record exactly one server span per request.
    """
    python = find_python("3.13")
    project: Path = bake(python_version="3.13")
    env = uv_env(python)
    run([uv(), "lock"], project, env)
    run([uv(), "sync", "--locked", "--no-dev"], project, env)
    bin_dir = project / ".venv" / "bin"
    bootstrap = [str(bin_dir / "opentelemetry-bootstrap"), "-a", "requirements"]
    wanted = subprocess.run(bootstrap, cwd=project, capture_output=True, text=True, check=True).stdout.split()
    installed = []
    for requirement in dict.fromkeys(wanted):
        install = [uv(), "pip", "install", "--python", str(bin_dir / "python"), requirement]
        if subprocess.run(install, cwd=project, env=env, capture_output=True, check=False).returncode == 0:
            installed.append(requirement.split("==")[0])  # else not published at that version
    listed = run([uv(), "pip", "list", "--python", str(bin_dir / "python"), "--format", "json"], project, env)
    present = {package["name"] for package in json.loads(listed[listed.index("[") : listed.rindex("]") + 1])}
    doubling = {"opentelemetry-instrumentation-fastapi", "opentelemetry-instrumentation-asgi"}
    assert doubling <= present, f"installed from the registry: {installed}"

    receiver_class = _load_receiver(project)
    port = free_port()
    with receiver_class() as receiver:
        server_env = {
            **os.environ,
            "APP_PORT": str(port),
            "APP_ENVIRONMENT": "test",
            "OTEL_PYTHON_DISTRO": DEFAULT_PACKAGE,
            "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
            "OTEL_BSP_SCHEDULE_DELAY": "50",
        }
        server = subprocess.Popen(
            [str(bin_dir / "opentelemetry-instrument"), str(bin_dir / "python"), "-m", DEFAULT_PACKAGE],
            cwd=project / "tests",  # no .env
            env=server_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            base = f"http://127.0.0.1:{port}"
            wait_until_serving(f"{base}/health", server)
            requests = 20
            with httpx.Client(base_url=base) as client:
                for i in range(requests):
                    assert client.get(f"/api/items/{i + 1}").status_code == 200
                for path in ("/health", "/health/ready", "/metrics"):
                    assert client.get(path).status_code == 200
            server.send_signal(signal.SIGTERM)
            output, _ = server.communicate(timeout=30)
        finally:
            if server.poll() is None:
                server.kill()
                server.wait()
        assert server.returncode == 0, output
        spans = receiver.snapshot()
    server_spans = [span for span in spans if span.kind == 2]  # SPAN_KIND_SERVER
    assert len(server_spans) == requests, [span.name for span in spans]
    assert len(spans) == requests, f"no ASGI send spans, no second server span: {[s.name for s in spans]}"
    assert {span.attributes["http.route"] for span in server_spans} == {"/api/items/{item_id}"}


def wait_until_serving(url: str, process: subprocess.Popen[str], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()[0]
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.HTTPError:
            time.sleep(0.2)
    raise AssertionError(f"{url} never answered")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port
