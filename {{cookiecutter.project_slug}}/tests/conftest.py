"""Fixtures: an in-process client, and the real server in a subprocess."""

import contextlib
import os
import random
{%- if cookiecutter.use_metrics %}
import shutil
{%- endif %}
import signal
import socket
import subprocess
import sys
{%- if cookiecutter.use_metrics %}
import tempfile
{%- endif %}
import threading
import time
from collections.abc import Iterator, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Protocol

import httpx
import pytest
from fastapi.testclient import TestClient
from pydantic_settings import SettingsConfigDict

from {{ cookiecutter.package_name }}.main import create_app
from {{ cookiecutter.package_name }}.settings import Settings

# Servers run from here: no .env, so they read only the environment a test gives them.
TESTS_DIR = Path(__file__).resolve().parent
{%- if cookiecutter.use_tracing %}
# In-process apps export no spans; tests that check spans start a server with a receiver.
os.environ["OTEL_SDK_DISABLED"] = "true"
{%- endif %}


class IsolatedSettings(Settings):
    """The settings without the developer's .env: a local APP_DEBUG=true changes no test."""

    model_config = SettingsConfigDict(**{**Settings.model_config, "env_file": None})


@pytest.fixture
def settings() -> Settings:
{%- if cookiecutter.use_json_logging %}
    return IsolatedSettings(environment="test", log_format="console")
{%- elif cookiecutter.use_tracing %}
    return IsolatedSettings(environment="test")
{%- else %}
    return IsolatedSettings()
{%- endif %}


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings), raise_server_exceptions=False) as test_client:
        yield test_client


def _ephemeral_ports() -> tuple[int, int]:
    """The range outgoing connections take their local port from (Linux; IANA's elsewhere)."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 49152, 65535


def free_port() -> int:
    """A free port for a server about to start, outside the ephemeral range.

    The server binds it a second later; a port the kernel hands out for
    bind(0) may meanwhile become the local end of any client connection
    (the tests make thousands), and the server would fail to start.
    """
    low, _ = _ephemeral_ports()
    candidates = range(20_000, low) if low > 21_000 else range(0)
    for _ in range(100 if candidates else 0):
        port = random.choice(candidates)  # noqa: S311 - a port, not a secret
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue  # taken: try another
            return port
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        any_port: int = sock.getsockname()[1]
        return any_port


def read_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends on `sock` until it closes the connection."""
    reply = b""
    while chunk := sock.recv(65536):
        reply += chunk
    return reply


@contextlib.contextmanager
def header_recorder(delay: float = 0.0) -> Iterator[tuple[str, list[dict[str, str]]]]:
    """A downstream service on loopback: records each request's headers, answers 200 `delay` s later."""
    seen: list[dict[str, str]] = []

    class Record(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append({name.lower(): value for name, value in self.headers.items()})
            time.sleep(delay)
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, format: str, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Record)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/", seen
    finally:
        httpd.shutdown()
        httpd.server_close()


# The service as a developer extends it (extended_app.py), served by the uvicorn command.
EXTENDED_APP = [
    "uvicorn",
    "extended_app:create",
    "--factory",
    "--app-dir",
    ".",
    "--host",
    "127.0.0.1",
    "--port",
    "{port}",
]


class Server:
    """`python -m {{ cookiecutter.package_name }}` on a free port, its stdout collected line by line.

    `launcher` goes before the interpreter (a command that wraps the service).
    """

    def __init__(
        self,
        env: dict[str, str],
        *,
        module: list[str] | None = None,
        read_output: bool = True,
        launcher: Sequence[str] = (),
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
{%- if cookiecutter.use_metrics %}
        # Several workers keep their samples in files: in a folder of this server's own,
        # not the shared default under /tmp.
        self.multiproc_dir = tempfile.mkdtemp(prefix="metrics-")
        if env.get("APP_WORKERS", "1") != "1":
            env = {"PROMETHEUS_MULTIPROC_DIR": self.multiproc_dir, **env}
{%- endif %}
        full_env = {
            **os.environ,
            "APP_HOST": "127.0.0.1",
            "APP_PORT": str(self.port),
{%- if cookiecutter.use_json_logging or cookiecutter.use_tracing %}
            "APP_ENVIRONMENT": "test",
{%- endif %}
{%- if cookiecutter.use_tracing %}
            "OTEL_SDK_DISABLED": "true",
{%- endif %}
            **env,
        }
        self.process = subprocess.Popen(
            [
                *launcher,
                sys.executable,
                "-m",
                *(arg.format(port=self.port) for arg in module or ["{{ cookiecutter.package_name }}"]),
            ],
            cwd=TESTS_DIR,
            env=full_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,  # its own process group: see `start_server`
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        if read_output:
            self._reader.start()

    def start_reading(self) -> None:
        """Begin collecting stdout (for a server started with read_output=False)."""
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))

    def wait_ready(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError("server exited:\n" + "\n".join(self.lines))
            try:
                httpx.get(f"{self.url}/health", timeout=1)  # any answer: it is listening
                return
            except httpx.HTTPError:
                time.sleep(0.1)
        raise TimeoutError("server did not become ready:\n" + "\n".join(self.lines))

    def stop(self, timeout: float = 20.0) -> int:
        if self.process.poll() is None:
            self.process.terminate()
        code = self.process.wait(timeout)
        if self._reader.is_alive():
            self._reader.join(timeout=5)
        return code


def wait_for_workers(server: Server, n: int) -> None:
    """Until n workers have finished starting (forked is not enough: they may still import)."""
    deadline = time.monotonic() + 20
    while sum("Application startup complete" in line for line in server.lines) < n:
        assert time.monotonic() < deadline, "\n".join(server.lines)
        time.sleep(0.1)


class StartServer(Protocol):
    def __call__(
        self,
        env: dict[str, str] | None = None,
        *,
        module: list[str] | None = None,
        read_output: bool = True,
        launcher: Sequence[str] = (),
    ) -> Server: ...


@pytest.fixture
def start_server() -> Iterator[StartServer]:
    """start_server(env) -> a ready Server; killed, workers and all, at the end of the test."""
    servers: list[Server] = []

    def start(
        env: dict[str, str] | None = None,
        *,
        module: list[str] | None = None,
        read_output: bool = True,
        launcher: Sequence[str] = (),
    ) -> Server:
        server = Server(env or {}, module=module, read_output=read_output, launcher=launcher)
        servers.append(server)
        server.wait_ready()
        return server

    yield start
    for server in servers:
        # Only while the master runs: once reaped, its pid (the group's id) may be another's.
        if server.process.poll() is None:
            # The whole group: with APP_WORKERS > 1, uvicorn's workers outlive a killed parent.
            os.killpg(server.process.pid, signal.SIGKILL)
            server.process.wait(10)
{%- if cookiecutter.use_metrics %}
        shutil.rmtree(server.multiproc_dir, ignore_errors=True)
{%- endif %}
