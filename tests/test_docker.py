"""Docker tier: build the generated image and run it the way production does.

For the default answers and for a bake with every telemetry feature off, the
generated project is locked (`uv lock`, as its Makefile does), built with the
generated Dockerfile as is, and run read-only, without capabilities, as its
non-root user. Base images cannot be pulled here: `../shared/tools/standins.sh`
builds local stand-ins under the official names first.

Containers are reached on their bridge address, not through a published port,
so that a refused connection is told apart from a request lost in flight.

Images are built with the docker CLI (BuildKit, for the Dockerfile's cache
mounts: see `helpers.docker_client`); everything else, running containers,
reading their logs, health, users and files, signalling them and inspecting
images, goes through the Docker SDK for Python.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import http.server
import ipaddress
import json
import re
import shutil
import socketserver
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import docker.errors
import pytest
import requests
from docker.models.containers import Container as SdkContainer

from helpers import (
    DEFAULT_ANSWERS,
    DEFAULT_PACKAGE,
    DEFAULT_PYTHON,
    DEFAULT_SLUG,
    DOCKER,
    build_app_image,
    docker_client,
    require_docker,
)
from helpers import build_standins as _build_standins
from helpers import docker as docker_cli
from helpers import docker_env as _env
from helpers import lock_project as _lock

pytestmark = [pytest.mark.docker, pytest.mark.xdist_group("docker")]

APP_UID = "10001"
# Longer than the service's own graceful timeout, like compose's stop_grace_period.
GRACE_SECONDS = 30.0
# Bytes the image may add on top of its python base image.
MAX_ADDED_BYTES = 200 * 1024 * 1024
SECOND_NS = 1_000_000_000  # the Engine API's durations

TELEMETRY_OFF: dict[str, Any] = {
    "use_json_logging": False,
    "use_metrics": False,
    "use_tracing": False,
    "use_prometheus": False,
    "use_alertmanager": False,
    "use_grafana": False,
    "use_jaeger": False,
    "use_loki": False,
    "use_dockerfile": True,
}
BAKES: dict[str, dict[str, Any]] = {"default": {}, "telemetry-off": TELEMETRY_OFF}


@dataclass
class Image:
    bake: str
    answers: dict[str, Any]
    project: Path
    tag: str
    base: str
    labels: dict[str, str] = field(default_factory=dict)

    @property
    def package(self) -> str:
        return str(self.answers.get("package_name", DEFAULT_PACKAGE))

    @property
    def port(self) -> int:
        return int(self.answers.get("port", DEFAULT_ANSWERS["port"]))

    def on(self, toggle: str) -> bool:
        return bool(self.answers.get(toggle, DEFAULT_ANSWERS[toggle]))


@pytest.fixture(scope="session", params=list(BAKES))
def image(request: pytest.FixtureRequest, bake_once: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Image]:
    """The generated image of one bake, built once per session."""
    require_docker()
    answers = BAKES[request.param]
    # A copy, so that locking it leaves the shared bake as generated.
    project = tmp_path_factory.mktemp(f"image-{request.param}") / "project"
    shutil.copytree(bake_once(**answers), project)
    python_version = str(answers.get("python_version", DEFAULT_PYTHON))
    base = f"python:{python_version}-slim"

    tag = f"tmpl-test-{request.param}-{uuid.uuid4().hex[:8]}:test"
    labels = {
        "VERSION": "0.1.0",
        "GIT_COMMIT": "0123456789abcdef0123456789abcdef01234567",
        "CREATED": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "SOURCE": f"https://example.invalid/acme/{DEFAULT_SLUG}",
    }
    elapsed = build_app_image(project, python_version, tag, labels)
    print(f"[{request.param}] image built in {elapsed:.1f} s")
    try:
        yield Image(request.param, {**answers}, project, tag, base, labels)
    finally:
        _remove_image(tag)


def _remove_image(tag: str) -> None:
    with contextlib.suppress(docker.errors.NotFound):
        docker_client().images.remove(tag, force=True)


def _run_once(tag: str, *command: str, entrypoint: str, read_only: bool = True) -> str:
    """`docker run --rm --entrypoint ...`: the command's stdout; a non-zero exit fails the test.

    Detached, then waited on and read: the SDK's attached `run` follows the log stream,
    which drops a last line without a newline (a JSON document) on this engine.
    """
    container = docker_client().containers.run(tag, list(command), entrypoint=[entrypoint], read_only=read_only,
                                               detach=True)  # fmt: skip
    assert isinstance(container, SdkContainer)
    try:
        code = container.wait(timeout=120)["StatusCode"]
        out, err = container.logs(stdout=True, stderr=False), container.logs(stdout=False, stderr=True)
    finally:
        container.remove(force=True)
    assert isinstance(out, bytes) and isinstance(err, bytes)
    assert code == 0, f"{entrypoint} {' '.join(command)[:200]} exited {code}: {err.decode()[-2000:]}"
    return out.decode()


# ---------------------------------------------------------------- containers


@dataclass
class Container:
    handle: SdkContainer
    ip: str
    port: int

    @property
    def name(self) -> str:
        return str(self.handle.name)

    def url(self, path: str) -> str:
        return f"http://{self.ip}:{self.port}{path}"

    def get(self, path: str, timeout: float = 10.0, headers: dict[str, str] | None = None) -> tuple[int, str]:
        conn = http.client.HTTPConnection(self.ip, self.port, timeout=timeout)
        try:
            conn.request("GET", path, headers=headers or {})
            response = conn.getresponse()
            return response.status, response.read().decode("utf-8", "replace")
        finally:
            conn.close()

    def logs(self) -> tuple[str, str]:
        """stdout and stderr, apart."""
        out = self.handle.logs(stdout=True, stderr=False)
        err = self.handle.logs(stdout=False, stderr=True)
        assert isinstance(out, bytes) and isinstance(err, bytes)  # not streamed
        return out.decode("utf-8", "replace"), err.decode("utf-8", "replace")

    def attrs(self) -> dict[str, Any]:
        """What `docker inspect` shows, as of now."""
        self.handle.reload()
        return dict(self.handle.attrs)

    def exec(self, *command: str) -> tuple[int, str, str]:
        """`docker exec` as the container's user: exit code, stdout, stderr."""
        code, output = self.handle.exec_run(list(command), demux=True)
        assert isinstance(output, tuple), "demux=True gives (stdout, stderr)"
        out, err = output
        return int(code or 0), (out or b"").decode("utf-8", "replace"), (err or b"").decode("utf-8", "replace")

    def stop_with_sigterm(self, timeout: float) -> int | None:
        """SIGTERM, then the exit code; None when the container still runs after `timeout`."""
        self.handle.kill(signal="SIGTERM")
        try:
            return int(self.handle.wait(timeout=timeout)["StatusCode"])
        except requests.exceptions.RequestException:  # the wait timed out
            return None


def _run(image: Image, env: dict[str, str] | None = None, **options: Any) -> Container:
    handle = docker_client().containers.run(
        image.tag,
        detach=True,
        name=f"tmpl-test-{image.bake}-{uuid.uuid4().hex[:8]}",
        # The image's own HEALTHCHECK command (no `test` given), probed more often to keep the test short.
        healthcheck={"interval": SECOND_NS, "start_period": 30 * SECOND_NS},
        read_only=True,
        cap_drop=["ALL"],
        security_opt=["no-new-privileges"],
        environment=env or {},
        **options,
    )
    assert isinstance(handle, SdkContainer)
    handle.reload()
    ip = "".join(network["IPAddress"] for network in handle.attrs["NetworkSettings"]["Networks"].values())
    return Container(handle, ip, image.port)


def _wait_healthy(container: Container, timeout: float = 60.0) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        state = container.attrs().get("State") or {}
        if not state.get("Running"):
            out, err = container.logs()
            pytest.fail(f"container stopped (exit {state.get('ExitCode')}):\n{out[-2000:]}\n{err[-2000:]}")
        status = (state.get("Health") or {}).get("Status")
        if status == "healthy":
            return time.monotonic() - started
        if status == "unhealthy":
            pytest.fail(f"HEALTHCHECK reports unhealthy: {state['Health'].get('Log')}")
        time.sleep(0.5)
    pytest.fail(f"not healthy within {timeout:.0f} s: {container.attrs()['State'].get('Health')}")


@contextlib.contextmanager
def running(image: Image, env: dict[str, str] | None = None, **options: Any) -> Iterator[Container]:
    container = _run(image, env=env, **options)
    try:
        yield container
    finally:
        with contextlib.suppress(docker.errors.NotFound):
            container.handle.remove(force=True)


@pytest.fixture(scope="session")
def service(image: Image) -> Iterator[Container]:
    """One read-only container per image, healthy, with some traffic served."""
    with running(image) as container:
        _wait_healthy(container)
        for item in (1, 2, 3):
            assert container.get(f"/api/items/{item}")[0] == 200
        # Log lines leave the service from a background thread, just after the response.
        deadline = time.monotonic() + 10
        while "/api/items/3" not in "".join(container.logs()) and time.monotonic() < deadline:
            time.sleep(0.2)
        yield container


def _json_lines(text: str) -> list[dict[str, Any]]:
    lines = [line for line in text.splitlines() if line.strip()]
    records = []
    for line in lines:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            pytest.fail(f"stdout line is not JSON: {line[:300]!r}")
        assert isinstance(record, dict), line
        records.append(record)
    return records


# ---------------------------------------------------------------- the image


def test_image_config(image: Image, record_property: Any) -> None:
    built = docker_client().images.get(image.tag)
    config = built.attrs["Config"]
    assert config["User"] == f"{APP_UID}:{APP_UID}"
    assert config["Entrypoint"] == ["python", "-m", image.package], "exec form, so SIGTERM reaches python"
    assert config["Cmd"] in (None, [])
    health = config["Healthcheck"]["Test"]
    assert health[0] == "CMD" and health[1] == "python", health
    assert not any(tool in " ".join(health) for tool in ("curl", "wget")), health
    env = dict(item.split("=", 1) for item in config["Env"])
    assert env["PYTHONUNBUFFERED"] == "1"
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"
    assert env["APP_PORT"] == str(image.port)
    # Set only for a setting the bake has: the commit labels app_build_info, the
    # environment every log line and span.
    if image.on("use_metrics"):
        assert env["APP_GIT_COMMIT"] == image.labels["GIT_COMMIT"]
    else:
        assert "APP_GIT_COMMIT" not in env
    if image.on("use_json_logging") or image.on("use_tracing"):
        assert env["APP_ENVIRONMENT"] == "production"
    else:
        assert "APP_ENVIRONMENT" not in env
    labels = config["Labels"]
    assert labels["org.opencontainers.image.version"] == image.labels["VERSION"]
    assert labels["org.opencontainers.image.created"] == image.labels["CREATED"]
    assert labels["org.opencontainers.image.source"] == image.labels["SOURCE"]
    assert labels["org.opencontainers.image.revision"] == image.labels["GIT_COMMIT"]

    size = int(built.attrs["Size"])
    base_size = int(docker_client().images.get(image.base).attrs["Size"])
    added = size - base_size
    record_property("image_added_bytes", added)
    print(f"[{image.bake}] image adds {added / 1e6:.1f} MB above {image.base} ({size / 1e6:.1f} MB in all)")
    assert 0 < added < MAX_ADDED_BYTES


def test_image_carries_no_secrets_tests_or_build_leftovers(image: Image) -> None:
    """Only the venv and the installed app: no .env, tests, git data, caches, uv or sources."""
    probe = r"""
import hashlib, json, os, sys
skip = ("/proc", "/sys", "/dev")
found = {"names": [], "hashes": {}}
for root, dirs, files in os.walk("/"):
    if root.startswith(skip):
        dirs[:] = []
        continue
    for name in dirs + files:
        path = os.path.join(root, name)
        if name in (".env", ".git", ".venv", ".cache", "uv", "uvx", "uv.lock", ".dockerignore", "Dockerfile") \
                or name.startswith(".env."):
            found["names"].append(path)
        if name.endswith(".py") and name.startswith(("test_", "conftest")) and os.path.isfile(path):
            with open(path, "rb") as f:
                found["hashes"][hashlib.sha256(f.read()).hexdigest()] = path
json.dump(found, sys.stdout)
"""
    found = json.loads(_run_once(image.tag, "-c", probe, entrypoint="python"))
    assert found["names"] == ["/app/.venv"], f"unexpected files in the image: {found['names']}"

    project_tests = {
        hashlib.sha256(path.read_bytes()).hexdigest(): path.name for path in (image.project / "tests").rglob("*.py")
    }
    leaked = {found["hashes"][digest]: name for digest, name in project_tests.items() if digest in found["hashes"]}
    assert not leaked, f"the project's tests are in the image: {leaked}"

    listing = _run_once(
        image.tag, "-c",
        "import json, os, sys, sysconfig;"
        "json.dump({'app': sorted(os.listdir('/app')), 'root': sorted(os.listdir('/root')) "
        "if os.access('/root', os.R_OK) else None, 'site': sysconfig.get_paths()['purelib']}, sys.stdout)",
        entrypoint="python",
    )  # fmt: skip
    layout = json.loads(listing)
    assert layout["app"] == [".venv"], "the runtime stage carries the venv and nothing else"
    assert not layout["root"], f"leftovers in /root: {layout['root']}"

    # Bytecode is compiled deliberately at build time (UV_COMPILE_BYTECODE) for the
    # installed package, since nothing can be written at run time.
    package_dir = Path(layout["site"]) / image.package
    pyc = _run_once(image.tag, "-c", f"import os; print(len(os.listdir({str(package_dir / '__pycache__')!r})))",
                    entrypoint="python", read_only=False)  # fmt: skip
    assert int(pyc) > 0

    # The .env of the bake holds real secrets; none of its values is in the image metadata.
    # (Its other values, a sampler's name say, may well be the image's own defaults.)
    secrets = [
        value
        for name, _, value in (line.partition("=") for line in (image.project / ".env").read_text().splitlines())
        if not name.startswith("#") and re.search(r"PASSWORD|TOKEN|SECRET|KEY", name) and len(value) >= 16
    ]
    built = docker_client().images.get(image.tag)
    history = "\n".join(str(layer.get("CreatedBy", "")) for layer in built.history())
    inspect = json.dumps(built.attrs)
    for secret in secrets:
        assert secret not in history and secret not in inspect


def test_build_context_excludes_secrets_and_clutter(bake_once: Any, tmp_path: Path) -> None:
    """The .dockerignore allowlist (the same for every answer): only what the build needs reaches the builder."""
    require_docker()
    project = tmp_path / "project"
    shutil.copytree(bake_once(), project)
    _lock(project, DEFAULT_PYTHON)  # as the Makefile does before any build
    base = f"python:{DEFAULT_PYTHON}-slim"
    package = project / "src" / DEFAULT_PACKAGE
    for decoy in (
        project / ".git" / "config",
        project / ".venv" / "bin" / "python",
        project / ".env.production",
        project / "secrets" / "id_ed25519",
        project / "server.pem",
        project / ".mypy_cache" / "x.json",
        project / ".pytest_cache" / "README.md",
        package / "__pycache__" / "main.cpython-313.pyc",
        package / ".env",
    ):
        decoy.parent.mkdir(parents=True, exist_ok=True)
        decoy.write_text("decoy\n")
    (project / "Dockerfile.probe").write_text(f"FROM {base}\nCOPY . /context\n")
    _build_standins(project / "Dockerfile.probe")
    tag = f"tmpl-test-context-{uuid.uuid4().hex[:8]}:test"
    try:
        # The CLI's build: what it sends as the context (.dockerignore applied) is under test.
        docker_cli("build", "--pull=false", "-q", "-f", str(project / "Dockerfile.probe"), "-t", tag, str(project))
        listing = _run_once(
            tag, "/context", "-mindepth", "1", "-not", "-type", "d", entrypoint="find", read_only=False
        ).split()
    finally:
        _remove_image(tag)
    files = {Path(path).relative_to("/context").as_posix() for path in listing}
    top = {name.split("/")[0] for name in files}
    assert top <= {"pyproject.toml", "uv.lock", "README.md", "LICENSE", "src", "Dockerfile.probe"}, sorted(files)
    assert {"pyproject.toml", "uv.lock", "README.md"} <= top
    assert not [name for name in files if "__pycache__" in name or name.endswith(".env")], sorted(files)


def test_label_values_stay_data(bake_once: Any, tmp_path: Path) -> None:
    """Answers with $, quotes, backslashes and backticks reach the labels unchanged."""
    require_docker()
    description = 'Costs $HOME "quoted" \\back\\slash `tick` ${PATH}'
    text = (bake_once(description=description) / "Dockerfile").read_text()
    base = re.search(r"^ARG PYTHON_VERSION=(\S+)$", text, re.M)
    assert base is not None
    # The metadata block of the generated Dockerfile, on top of its base image.
    probe = tmp_path / "Dockerfile"
    probe.write_text(f"FROM python:{base.group(1)}-slim\n" + text[text.index("ARG VERSION=") :])
    _build_standins(probe)
    tag = f"tmpl-test-labels-{uuid.uuid4().hex[:8]}:test"
    try:
        docker_cli("build", "--pull=false", "-q", "-t", tag, str(tmp_path))
        labels = docker_client().images.get(tag).labels
    finally:
        _remove_image(tag)
    assert labels["org.opencontainers.image.description"] == description


# ---------------------------------------------------------------- the running service


def test_healthcheck_reaches_healthy_and_routes_answer(service: Container) -> None:
    assert service.attrs()["State"]["Health"]["Status"] == "healthy"
    status, body = service.get("/health")
    assert status == 200 and json.loads(body) == {"status": "ok"}
    status, body = service.get("/api/items/1")
    assert status == 200, body
    assert isinstance(json.loads(body), dict)
    # The image serves no API docs (their pages load scripts from a CDN): APP_API_DOCS=false.
    assert [service.get(path)[0] for path in ("/docs", "/redoc", "/openapi.json")] == [404, 404, 404]


def _exec_ok(container: Container, *command: str) -> str:
    code, out, err = container.exec(*command)
    assert code == 0, f"{' '.join(command)} failed ({code}): {err}"
    return out


def test_runs_as_the_non_root_uid(image: Image, service: Container) -> None:
    assert _exec_ok(service, "id", "-u").strip() == APP_UID
    status = _exec_ok(service, "cat", "/proc/1/status")
    uids = next(line.split()[1:] for line in status.splitlines() if line.startswith("Uid:"))
    assert set(uids) == {APP_UID}, f"PID 1 runs with uids {uids}"
    cmdline = _exec_ok(service, "cat", "/proc/1/cmdline").split("\0")
    assert "python" in Path(cmdline[0]).name and cmdline[1:3] == ["-m", image.package], cmdline


def test_runs_the_pinned_python(image: Image, service: Container) -> None:
    """The image's interpreter is the one .python-version pins for uv sync, make run and the tests."""
    pinned = (image.project / ".python-version").read_text().strip()
    version = _exec_ok(service, "python", "-c", "import sys; print('%d.%d' % sys.version_info[:2])").strip()
    assert version == pinned


def test_read_only_root_filesystem(service: Container) -> None:
    assert service.attrs()["HostConfig"]["ReadonlyRootfs"] is True
    for path in ("/app/probe", "/tmp/probe"):
        code, out, err = service.exec("touch", path)
        assert code != 0 and "Read-only file system" in err, (code, out, err)


def test_stdout_carries_json_logs(image: Image, service: Container) -> None:
    stdout, stderr = service.logs()
    if not image.on("use_json_logging"):
        assert stdout or stderr, "the service logs something even without JSON logging"
        return
    records = _json_lines(stdout)
    assert records, "no log lines on stdout"
    for record in records:
        assert {"timestamp", "level", "message", "logger"} <= record.keys(), record
        datetime.fromisoformat(record["timestamp"].replace("Z", "+00:00"))
    access = [r for r in records if r.get("logger") == "access" and str(r.get("path", "")).startswith("/api/items/")]
    assert len(access) >= 3, f"access lines for /api/items: {access}"
    assert {r.get("status") for r in access} == {200}
    assert all(r.get("route") == "/api/items/{item_id}" for r in access), access


def test_metrics_endpoint(image: Image, service: Container) -> None:
    status, body = service.get("/metrics")
    if not image.on("use_metrics"):
        assert status == 404
        return
    from prometheus_client.parser import text_string_to_metric_families

    assert status == 200, body[:500]
    families = {family.name: family for family in text_string_to_metric_families(body)}
    assert "http_server_request_duration_seconds" in families, sorted(families)
    counts = [
        sample
        for sample in families["http_server_request_duration_seconds"].samples
        if sample.name.endswith("_count") and sample.labels.get("http_route") == "/api/items/{item_id}"
    ]
    assert counts and sum(sample.value for sample in counts) >= 3, counts
    assert "app_build_info" in families


def test_multi_worker_mode_on_a_read_only_root(image: Image) -> None:
    """APP_WORKERS=2 needs only a tmpfs for the multiprocess metrics directory."""
    with running(image, env={"APP_WORKERS": "2"}, tmpfs={"/tmp": "rw,noexec,nosuid,size=64m"}) as container:
        _wait_healthy(container)
        for item in range(1, 21):
            assert container.get(f"/api/items/{item}")[0] == 200
        if image.on("use_metrics"):
            from prometheus_client.parser import text_string_to_metric_families

            # A worker records a request just after its response: the other may answer
            # the scrape before that, so read until the total is in.
            deadline = time.monotonic() + 5
            while True:
                status, body = container.get("/metrics")
                assert status == 200
                total = sum(
                    sample.value
                    for family in text_string_to_metric_families(body)
                    if family.name == "http_server_request_duration_seconds"
                    for sample in family.samples
                    if sample.name.endswith("_count") and sample.labels.get("http_route") == "/api/items/{item_id}"
                )
                if total >= 20 or time.monotonic() > deadline:
                    break
                time.sleep(0.1)
            assert total == 20, f"the workers' counts do not add up: {total}"
        code = container.stop_with_sigterm(timeout=GRACE_SECONDS)
        assert code == 0, container.logs()


# ---------------------------------------------------------------- SIGTERM under load


class _SlowDownstream(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    delay = 2.0

    def __init__(self, address: tuple[str, int]) -> None:
        self.arrived = 0
        self.lock = threading.Lock()
        super().__init__(address, _SlowHandler)


class _SlowHandler(http.server.BaseHTTPRequestHandler):
    server: _SlowDownstream

    def do_GET(self) -> None:
        with self.server.lock:
            self.server.arrived += 1
        time.sleep(self.server.delay)
        body = b'{"slow": true}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def _bridge_gateway() -> str:
    config = docker_client().networks.get("bridge").attrs["IPAM"]["Config"][0]
    return config.get("Gateway") or str(next(ipaddress.ip_network(config["Subnet"]).hosts()))


@dataclass
class _Tally:
    ok: int = 0
    not_connected: int = 0  # refused or unreachable: the server no longer listened
    closed_unread: int = 0  # accepted by the kernel, closed before any byte of a response
    lost: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, outcome: str, detail: str = "") -> None:
        with self.lock:
            if outcome == "lost":
                self.lost.append(detail)
            else:
                setattr(self, outcome, getattr(self, outcome) + 1)


def _request(container: Container, path: str, tally: _Tally, timeout: float) -> None:
    conn = http.client.HTTPConnection(container.ip, container.port, timeout=1.0)
    try:
        try:
            conn.connect()
        except OSError:
            tally.add("not_connected")
            time.sleep(0.05)
            return
        assert conn.sock is not None
        conn.sock.settimeout(timeout)
        try:
            conn.request("GET", path, headers={"Connection": "close"})
            response = conn.getresponse()
        except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
            tally.add("closed_unread")
            return
        except OSError as error:
            tally.add("lost", f"{path}: {error!r}")
            return
        try:
            response.read()
        except (OSError, http.client.HTTPException) as error:
            tally.add("lost", f"{path}: truncated response: {error!r}")
            return
        if response.status == 200:
            tally.add("ok")
        else:
            tally.add("lost", f"{path}: HTTP {response.status}")
    finally:
        conn.close()


def test_sigterm_during_requests_exits_zero_and_loses_none(image: Image) -> None:
    """Slow requests in flight and a burst of fast ones when SIGTERM arrives.

    Every slow request (proven in flight: it reached the downstream) must get
    its 200; every fast request must get a 200 or find the listener closed;
    the container must exit 0 within the grace period. With JSON logging, each
    request the app answered has its access line on stdout (logs flushed) and
    the client saw exactly as many 200s as there are access lines.
    """
    gateway = _bridge_gateway()
    downstream = _SlowDownstream((gateway, 0))
    server_thread = threading.Thread(target=downstream.serve_forever, daemon=True)
    server_thread.start()
    slow_count = 6
    url = f"http://{gateway}:{downstream.server_address[1]}/slow"
    try:
        with running(image, env={"APP_DOWNSTREAM_URL": url}) as container:
            _wait_healthy(container)
            slow, fast = _Tally(), _Tally()
            stop = threading.Event()

            def burst(worker: int) -> None:
                item = worker * 100_000
                while not stop.is_set():
                    item += 1
                    _request(container, f"/api/items/{item}", fast, timeout=10.0)

            with ThreadPoolExecutor(max_workers=slow_count + 4) as pool:
                slow_jobs = [pool.submit(_request, container, "/api/downstream", slow, 15.0) for _ in range(slow_count)]
                burst_jobs = [pool.submit(burst, worker) for worker in range(4)]
                deadline = time.monotonic() + 10
                while downstream.arrived < slow_count and time.monotonic() < deadline:
                    time.sleep(0.05)
                assert downstream.arrived == slow_count, "the slow requests never reached the downstream"

                sent = time.monotonic()
                code = container.stop_with_sigterm(timeout=GRACE_SECONDS + 5)
                elapsed = time.monotonic() - sent
                stop.set()
                for job in (*slow_jobs, *burst_jobs):
                    job.result(timeout=30)

            stdout, stderr = container.logs()
            context = f"slow={slow}, fast={fast}\nstdout tail:\n{stdout[-3000:]}\nstderr tail:\n{stderr[-3000:]}"
            assert code == 0, f"exit code {code!r} after SIGTERM\n{context}"
            assert elapsed < GRACE_SECONDS, f"took {elapsed:.1f} s to stop\n{context}"
            assert slow.ok == slow_count, f"in-flight requests lost\n{context}"
            assert not fast.lost, f"requests lost\n{context}"
            # Only the connection each client thread had open when the listener closed.
            assert fast.closed_unread <= 4, f"connections closed without a response\n{context}"
            assert fast.ok > 0, context
            print(f"[{image.bake}] SIGTERM -> exit 0 in {elapsed:.1f} s; slow={slow.ok} ok, fast={fast}")

            if image.on("use_json_logging"):
                records = _json_lines(stdout)
                access = [r for r in records if r.get("logger") == "access"]
                slow_logged = [r for r in access if r.get("path") == "/api/downstream"]
                fast_logged = [r for r in access if str(r.get("path", "")).startswith("/api/items/")]
                assert len(slow_logged) == slow_count, f"access lines of in-flight requests missing\n{context}"
                assert len(fast_logged) == fast.ok, (
                    f"{len(fast_logged)} requests answered by the app, {fast.ok} received\n{context}"
                )
    finally:
        downstream.shutdown()
        downstream.server_close()


# ---------------------------------------------------------------- the project's own smoke script


def test_shipped_smoke_script_passes(image: Image) -> None:
    """scripts/smoke-image.sh, which the generated CI runs, passes against the image."""
    script = image.project / "scripts" / "smoke-image.sh"
    assert script.exists()
    result = subprocess.run(
        ["bash", str(script), image.tag],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
        env={**_env(), "DOCKER": DOCKER},
    )
    print(result.stdout[-2000:])
    assert result.returncode == 0, f"smoke script failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
