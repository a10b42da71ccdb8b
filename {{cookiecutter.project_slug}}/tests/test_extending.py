{%- set request_signals = cookiecutter.use_json_logging or cookiecutter.use_metrics or cookiecutter.use_tracing -%}
"""What a developer adds keeps its telemetry: background tasks, failures, mounted apps.

The service runs as extended_app.py extends it, under real uvicorn.
"""

{% if cookiecutter.use_json_logging -%}
import json
{% endif -%}
import signal
import socket
import time
{%- if cookiecutter.use_tracing %}
from collections.abc import Iterator
{%- endif %}
from dataclasses import dataclass

import httpx
import pytest
{%- if cookiecutter.use_metrics %}
from prometheus_client.parser import text_string_to_metric_families
{%- endif %}

from conftest import EXTENDED_APP, Server, StartServer, read_until_closed
{%- if cookiecutter.use_tracing %}
from otlp_receiver import OtlpReceiver
{%- endif %}
{% if cookiecutter.use_json_logging %}
ENV = {"APP_LOG_FORMAT": "json"}
{%- else %}
ENV: dict[str, str] = {}
{%- endif %}
{%- if cookiecutter.use_tracing %}
SERVER_KIND = 2  # opentelemetry.proto.trace.v1.Span.SPAN_KIND_SERVER
{%- endif %}


@dataclass
class Extended:
    server: Server
{%- if cookiecutter.use_tracing %}
    receiver: OtlpReceiver
{%- endif %}
{%- if cookiecutter.use_tracing %}


@pytest.fixture
def extended(start_server: StartServer) -> Iterator[Extended]:
    with OtlpReceiver() as receiver:
        env = {
            **ENV,
            "OTEL_SDK_DISABLED": "false",
            "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
            "OTEL_BSP_SCHEDULE_DELAY": "50",
        }
        yield Extended(start_server(env, module=EXTENDED_APP), receiver)
{%- else %}


@pytest.fixture
def extended(start_server: StartServer) -> Extended:
    return Extended(start_server(ENV, module=EXTENDED_APP))
{%- endif %}


def stop(server: Server) -> None:
    """Stop the server: its lifespan's shutdown flushes what it buffered."""
    # The uvicorn command re-raises SIGTERM once it has shut down.
    assert server.stop() in (0, -signal.SIGTERM)
{%- if cookiecutter.use_json_logging %}


def records(lines: list[str]) -> list[dict[str, object]]:
    return [json.loads(line) for line in lines]
{%- endif %}


def test_an_unhandled_error_tells_the_client_to_close_the_connection(
    start_server: StartServer,
) -> None:
    # The server closes the connection after an exception; a client that reused it would fail.
    server = start_server()
    with httpx.Client(base_url=server.url) as client:
        for _ in range(5):
            failed = client.get("/api/fail")
            assert failed.status_code == 500
            assert failed.headers["connection"] == "close"
            assert client.get("/api/items/1").status_code == 200


def test_a_failing_background_task_is_logged_and_keeps_the_connection(
    extended: Extended,
) -> None:
    server = extended.server
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(
            b"GET /api/notify HTTP/1.1\r\nHost: localhost\r\nX-Request-ID: notify-1\r\n\r\n"
        )
        first = b""
        while not first.endswith(b'"queued"}'):
            chunk = sock.recv(65536)
            assert chunk, f"closed before the response: {first!r}"
            first += chunk
        assert first.startswith(b"HTTP/1.1 200 "), first
        time.sleep(0.5)  # the task fails 0.2 s after the response
        # The client reuses its connection, as a pooling client or a proxy does.
        try:
            sock.sendall(
                b"GET /api/items/1 HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
            )
            second = read_until_closed(sock)
        except ConnectionError as error:
            second = repr(error).encode()
    assert second.startswith(b"HTTP/1.1 200 "), f"the connection was closed: {second!r}"
    stop(server)
    output = "\n".join(server.lines)
    assert "Exception in ASGI application" not in output
{%- if cookiecutter.use_json_logging %}
    (failure,) = [
        r for r in records(server.lines) if r["message"] == "Exception after the response was sent"
    ]
    assert failure["level"] == "ERROR"
    assert failure["exception_type"] == "RuntimeError"
    assert failure["request_id"] == "notify-1"
{%- if cookiecutter.use_tracing %}
    assert "trace_id" in failure
{%- endif %}
{%- else %}
    assert output.count("Exception after the response was sent") == 1, output
    assert "RuntimeError: the background task failed" in output
{%- endif %}
{%- if request_signals %}


def test_background_tasks_are_not_part_of_the_request_duration(extended: Extended) -> None:
    server = extended.server
    assert httpx.get(f"{server.url}/api/report").status_code == 200  # its task sleeps 0.5 s
{%- if cookiecutter.use_metrics %}
    recorded: list[float] = []
    deadline = time.monotonic() + 10
    while not recorded and time.monotonic() < deadline:  # recorded once its task has run
        time.sleep(0.1)
        recorded = [
            sample.value
            for family in text_string_to_metric_families(httpx.get(f"{server.url}/metrics").text)
            for sample in family.samples
            if sample.name == "http_server_request_duration_seconds_sum"
            and sample.labels["http_route"] == "/api/report"
        ]
    assert len(recorded) == 1, "the request was recorded"
    assert recorded[0] < 0.4, "the histogram records the client's wait"
{%- endif %}
    stop(server)  # waits for the task
{%- if cookiecutter.use_json_logging %}
    (access,) = [r for r in records(server.lines) if r.get("route") == "/api/report"]
    assert isinstance(access["duration_ms"], float)
    assert access["duration_ms"] < 400, "the access line gives the client's wait"
{%- endif %}
{%- if cookiecutter.use_tracing %}
    (span,) = [s for s in extended.receiver.snapshot() if s.name == "GET /api/report"]
    assert (span.end_ns - span.start_ns) / 1e9 < 0.4, "the server span ends with the response"
{%- endif %}
{%- endif %}
{%- if cookiecutter.use_tracing %}


def test_a_mounted_fastapi_app_adds_no_second_server_span(extended: Extended) -> None:
    server = extended.server
    assert httpx.get(f"{server.url}/v2/widgets/3").status_code == 200
    stop(server)
    spans = [s for s in extended.receiver.snapshot() if s.kind == SERVER_KIND]
    assert [s.name for s in spans] == ["GET /v2/widgets/{widget_id}"]
{%- if cookiecutter.use_json_logging %}
    lines = records(server.lines)
    (served,) = [r for r in lines if r["message"] == "widget 3 served"]
    (access,) = [r for r in lines if r.get("route") == "/v2/widgets/{widget_id}"]
    assert served["trace_id"] == access["trace_id"] == spans[0].trace_id
{%- endif %}
{%- endif %}


def test_a_mounted_app_with_the_error_handlers_answers_one_request_id(extended: Extended) -> None:
    response = httpx.get(f"{extended.server.url}/v2/boom")
    assert response.status_code == 500
    assert response.json()["error"]["message"] == "Internal Server Error"
    assert len(response.headers.get_list("x-request-id")) == 1
