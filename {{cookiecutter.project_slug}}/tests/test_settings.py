"""Settings from the environment: a bad value stops the start with one line naming it."""

import os
import socket
import subprocess
import sys
import threading
import time

import httpx
import pytest

from {{ cookiecutter.package_name }}.settings import configuration_errors

from conftest import TESTS_DIR, StartServer, header_recorder

# (variable, value, what the error line says after "invalid setting VARIABLE: ")
BAD_VALUES = [
    ("APP_PORT", "abc", "valid integer"),
    # Kubernetes injects APP_PORT=tcp://... for a Service named "app" (enableServiceLinks).
    ("APP_PORT", "tcp://10.96.0.12:{{ cookiecutter.port }}", "valid integer"),
    ("APP_PORT", "70000", "less than or equal to 65535"),
    ("APP_WORKERS", "0", "greater than or equal to 1"),
    ("APP_GRACEFUL_TIMEOUT_SECONDS", "-1", "greater than 0"),
    ("APP_DOWNSTREAM_URL", "https://svc:s3cr3t-pass@example.com:99999/x", "URL"),
    ("APP_DEBUG", "maybe", "valid boolean"),
{%- if cookiecutter.use_json_logging %}
    ("APP_LOG_LEVEL", "verbose", "'INFO'"),
    ("APP_LOG_FORMAT", "xml", "'json' or 'console'"),
{%- endif %}
{%- if cookiecutter.use_metrics %}
    ("APP_METRICS_PORT", "{{ cookiecutter.port }}", "must differ from APP_PORT"),
{%- endif %}
]


@pytest.mark.parametrize(("variable", "value", "says"), BAD_VALUES)
def test_a_bad_value_stops_the_start_with_one_line(variable: str, value: str, says: str) -> None:
    env = {**os.environ, "APP_HOST": "127.0.0.1", variable: value}
    if variable != "APP_PORT":
        env["APP_PORT"] = "{{ cookiecutter.port }}"
    result = subprocess.run(
        [sys.executable, "-m", "{{ cookiecutter.package_name }}"],
        cwd=TESTS_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"invalid setting {variable}: "), line
    assert says in line, line
    if not value.replace(".", "").isdigit():
        assert value not in line, "the value is never repeated: it may be a secret"
    assert result.stdout == ""


def test_nothing_is_wrong_with_the_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith({% if cookiecutter.use_tracing %}("APP_", "OTEL_"){% else %}"APP_"{% endif %}):
            monkeypatch.delenv(name)
    monkeypatch.chdir(TESTS_DIR)  # no .env
    assert configuration_errors() == []
{%- if cookiecutter.use_json_logging %}


def test_the_log_level_ignores_case(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(TESTS_DIR)
    monkeypatch.setenv("APP_LOG_LEVEL", "warning")
    assert configuration_errors() == []
{%- endif %}


def test_web_concurrency_does_not_start_workers_of_its_own(start_server: StartServer) -> None:
    # Platforms and buildpacks set it; APP_WORKERS alone decides.
    server = start_server({"WEB_CONCURRENCY": "2"})
    assert httpx.get(f"{server.url}/api/items/1").status_code == 200
    assert server.stop() == 0


def _ipv6_available() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not _ipv6_available(), reason="no IPv6 on this host")
def test_an_ipv6_host_is_served_by_several_workers(start_server: StartServer) -> None:
    # "::" also takes the IPv4 connections of the fixture's readiness check (dual stack).
    server = start_server({"APP_HOST": "::", "APP_WORKERS": "2"})
    url = f"http://[::1]:{server.port}/api/items/1"
    assert httpx.get(url).status_code == 200
    assert server.stop() == 0


def test_a_fractional_grace_period_is_not_cut_to_zero(start_server: StartServer) -> None:
    with header_recorder(delay=0.6) as (url, seen):
        server = start_server({"APP_GRACEFUL_TIMEOUT_SECONDS": "0.9", "APP_DOWNSTREAM_URL": url})
        result: list[int] = []
        request = threading.Thread(
            target=lambda: result.append(httpx.get(f"{server.url}/api/downstream").status_code)
        )
        request.start()
        deadline = time.monotonic() + 10
        while not seen:  # until the request waits on the downstream service
            assert time.monotonic() < deadline, "the request never reached the downstream service"
            time.sleep(0.01)
        assert server.stop() == 0
        request.join(5)
    assert result == [200], "the request in flight finished within the grace period"
