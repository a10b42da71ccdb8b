"""Traces: spans decoded off the wire from a real OTLP/HTTP receiver."""

import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from {{ cookiecutter.package_name }}.observability.tracing import RateLimitFilter, _split_host

from conftest import EXTENDED_APP, Server, StartServer, free_port, header_recorder
from otlp_receiver import OtlpReceiver, ReceivedSpan, silent_collector

SERVER_KIND = 2  # opentelemetry.proto.trace.v1.Span.SPAN_KIND_SERVER
CLIENT_KIND = 3
UNSET_STATUS, ERROR_STATUS = 0, 2  # opentelemetry.proto.trace.v1.Status.StatusCode


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as running:
        yield running


def tracing_env(endpoint: str, **extra: str) -> dict[str, str]:
    return {
        "OTEL_SDK_DISABLED": "false",
        "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
        "OTEL_BSP_SCHEDULE_DELAY": "50",
        **extra,
    }


def wait_for_spans(
    receiver: OtlpReceiver, predicate: Callable[[list[ReceivedSpan]], bool], timeout: float = 10.0
) -> list[ReceivedSpan]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        spans = receiver.snapshot()
        if predicate(spans):
            return spans
        time.sleep(0.05)
    raise AssertionError(f"spans never matched: {receiver.snapshot()}")


def test_one_server_span_per_request(start_server: StartServer, receiver: OtlpReceiver) -> None:
    server = start_server(tracing_env(receiver.endpoint))
    httpx.get(f"{server.url}/api/items/3")
    httpx.get(f"{server.url}/health")
    wait_for_spans(receiver, lambda s: len(s) >= 1)
    assert server.stop() == 0  # the shutdown flushes whatever is still queued
    spans = receiver.snapshot()
    assert len(spans) == 1, "one span per request, none for probes"
    (span,) = spans
    assert span.name == "GET /api/items/{item_id}"
    assert span.kind == SERVER_KIND
    assert span.attributes["http.route"] == "/api/items/{item_id}"
    assert span.attributes["http.response.status_code"] == 200
    assert span.resource["service.name"] == "{{ cookiecutter.project_slug }}"
    assert span.resource["deployment.environment.name"] == "test"
    assert span.resource["service.version"]


def test_the_operators_resource_attributes_win(
    start_server: StartServer, receiver: OtlpReceiver
) -> None:
    env = {"OTEL_RESOURCE_ATTRIBUTES": "deployment.environment.name=staging,team=payments"}
    server = start_server(tracing_env(receiver.endpoint, OTEL_SERVICE_NAME="orders", **env))
    httpx.get(f"{server.url}/api/items/3")
    (span,) = wait_for_spans(receiver, lambda s: len(s) >= 1)
    resource = span.resource
    assert resource["service.name"] == "orders"
    assert resource["deployment.environment.name"] == "staging"
    assert resource["team"] == "payments"
    assert resource["service.version"], "the service's own, where the operator says nothing"


def test_server_span_carries_the_http_semantic_convention_attributes(
    start_server: StartServer, receiver: OtlpReceiver
) -> None:
    server = start_server(tracing_env(receiver.endpoint))
    headers = {"Host": "api.example.test:8443", "User-Agent": "semconv-check/1.0"}
    httpx.get(f"{server.url}/api/items/3?view=full&sig=s3cr3t", headers=headers)
    httpx.get(f"{server.url}/api/items/4")
    spans = wait_for_spans(receiver, lambda s: len(s) >= 2)
    by_path = {span.attributes["url.path"]: span.attributes for span in spans}
    assert by_path["/api/items/3"] == {
        "http.request.method": "GET",
        "url.scheme": "http",
        "url.path": "/api/items/3",
        "url.query": "view=full&sig=REDACTED",  # a signed URL's credential never leaves the service
        "network.protocol.version": "1.1",
        "http.route": "/api/items/{item_id}",
        "http.response.status_code": 200,
        "server.address": "api.example.test",
        "server.port": 8443,
        "client.address": "127.0.0.1",
        "user_agent.original": "semconv-check/1.0",
    }
    plain = by_path["/api/items/4"]
    assert "url.query" not in plain, "url.query only when the request has one"
    assert (plain["server.address"], plain["server.port"]) == ("127.0.0.1", server.port)


def test_giant_client_headers_are_cut_in_the_span(
    start_server: StartServer, receiver: OtlpReceiver
) -> None:
    server = start_server(tracing_env(receiver.endpoint))
    with httpx.Client(base_url=server.url) as client:
        for _ in range(3):
            # 60 kB: as much as a proxy in front would let through (README.md, "Behind a proxy").
            response = client.get(
                "/api/items/5", params={"q": "q" * 20_000}, headers={"User-Agent": "u" * 40_000}
            )
            assert response.status_code == 200
    spans = wait_for_spans(receiver, lambda s: len(s) >= 3)
    for span in spans:
        assert span.attributes["user_agent.original"] == "u" * 4096
        assert span.attributes["url.query"] == "q=" + "q" * 4094
    assert server.stop() == 0
    cut = [line for line in server.lines if "exceeds max length" in line]
    assert len(cut) == 1, f"one warning for the six cut values, not one each: {cut}"


@pytest.mark.parametrize(
    ("host", "scheme", "expected"),
    [
        ("example.com", "http", ("example.com", 80)),
        ("example.com", "https", ("example.com", 443)),
        ("example.com:8443", "https", ("example.com", 8443)),
        ("[::1]:8000", "http", ("::1", 8000)),
        ("[2001:db8::1]", "https", ("2001:db8::1", 443)),
        ("example.com:http", "http", ("example.com", None)),
        ("example.com:99999", "http", ("example.com", None)),
        ("example.com:\u00b2", "http", ("example.com", None)),
    ],
)
def test_host_header_gives_server_address_and_port(
    host: str, scheme: str, expected: tuple[str, int | None]
) -> None:
    assert _split_host(host, scheme) == expected


def test_incoming_traceparent_continues_the_trace(
    start_server: StartServer, receiver: OtlpReceiver
) -> None:
    server = start_server(tracing_env(receiver.endpoint))
    trace_id, parent_id = "0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331"
    httpx.get(f"{server.url}/api/items/1", headers={"traceparent": f"00-{trace_id}-{parent_id}-01"})
    (span,) = wait_for_spans(receiver, lambda s: len(s) >= 1)
    assert span.trace_id == trace_id
    assert span.parent_span_id == parent_id


def test_malformed_trace_headers_start_a_new_trace(
    start_server: StartServer, receiver: OtlpReceiver
) -> None:
    server = start_server(tracing_env(receiver.endpoint))
    hostile = {
        "traceparent": "00-zzzz-{}-01'\"<script>",
        "tracestate": "k=" + "v" * 40_000,  # as much as a proxy would let through
        "baggage": "a=%ZZ;;;,=,\\" * 1000,
    }
    response = httpx.get(f"{server.url}/api/items/1", headers=hostile)
    assert response.status_code == 200
    (span,) = wait_for_spans(receiver, lambda s: len(s) >= 1)
    assert len(span.trace_id) == 32
    assert span.trace_id != "0" * 32
    assert span.parent_span_id == ""
    for value in hostile.values():
        assert value not in response.headers.values()


def test_downstream_call_carries_traceparent(
    start_server: StartServer, receiver: OtlpReceiver
) -> None:
    server = start_server(tracing_env(receiver.endpoint))
    assert httpx.get(f"{server.url}/api/downstream").status_code == 200
    spans = wait_for_spans(receiver, lambda s: len(s) >= 3)
    entry = next(s for s in spans if s.name == "GET /api/downstream")
    client = next(s for s in spans if s.kind == CLIENT_KIND)
    callee = next(s for s in spans if s.name == "GET /api/items/{item_id}")
    assert client.trace_id == entry.trace_id == callee.trace_id
    assert client.parent_span_id == entry.span_id
    assert callee.parent_span_id == client.span_id, "the callee continued the caller's trace"


@pytest.mark.parametrize("propagators", [None, "tracecontext,baggage"])
def test_callers_baggage_goes_downstream_only_when_asked(
    start_server: StartServer, receiver: OtlpReceiver, propagators: str | None
) -> None:
    # Any client can write baggage (`user.id=admin`); services downstream may believe it.
    with header_recorder() as (url, seen):
        extra = {"APP_DOWNSTREAM_URL": url}
        if propagators:
            extra["OTEL_PROPAGATORS"] = propagators
        server = start_server(tracing_env(receiver.endpoint, **extra))
        trace_id = "0af7651916cd43dd8448eb211c80319c"
        incoming = {
            "traceparent": f"00-{trace_id}-b7ad6b7169203331-01",
            "tracestate": "vendor=opaque",
            "baggage": "user.id=admin",
        }
        assert httpx.get(f"{server.url}/api/downstream", headers=incoming).status_code == 200
    (headers,) = seen
    assert headers["traceparent"].split("-")[1] == trace_id
    assert headers["tracestate"] == "vendor=opaque"
    assert headers.get("baggage") == ("user.id=admin" if propagators else None)


def test_a_malformed_baggage_header_logs_once(
    start_server: StartServer, receiver: OtlpReceiver
) -> None:
    # With baggage read, the SDK warns once per malformed member: 200 of them in 1 kB.
    server = start_server(tracing_env(receiver.endpoint, OTEL_PROPAGATORS="tracecontext,baggage"))
    hostile = {"baggage": ",".join(f"x{i}" for i in range(200))}
    for _ in range(3):
        assert httpx.get(f"{server.url}/api/items/1", headers=hostile).status_code == 200
    wait_for_spans(receiver, lambda s: len(s) >= 3)
    assert server.stop() == 0  # the log writer drains at exit
    warnings = [line for line in server.lines if "baggage" in line.lower()]
    assert 1 <= len(warnings) <= 3, warnings


def test_server_error_returns_its_trace_id(
    start_server: StartServer, receiver: OtlpReceiver
) -> None:
    server = start_server(tracing_env(receiver.endpoint))
    response = httpx.get(f"{server.url}/api/fail")
    assert response.status_code == 500
    trace_id = response.json()["error"]["trace_id"]
    assert response.headers["x-trace-id"] == trace_id
    (span,) = wait_for_spans(receiver, lambda s: len(s) >= 1)
    assert span.trace_id == trace_id
    assert span.attributes["error.type"] == "RuntimeError"
    assert span.status_code == ERROR_STATUS


def test_a_5xx_response_without_an_exception_fails_its_span(
    start_server: StartServer, receiver: OtlpReceiver
) -> None:
    # Nothing listens on the downstream port: the route answers 502 through an HTTPException,
    # which FastAPI turns into a response before the request middleware could see it raised.
    closed = f"http://127.0.0.1:{free_port()}/"
    server = start_server(tracing_env(receiver.endpoint, APP_DOWNSTREAM_URL=closed))
    assert httpx.get(f"{server.url}/api/downstream").status_code == 502
    spans = wait_for_spans(receiver, lambda s: any(x.name == "GET /api/downstream" for x in s))
    span = next(s for s in spans if s.name == "GET /api/downstream")
    assert span.attributes["http.response.status_code"] == 502
    assert span.attributes["error.type"] == "502"
    assert span.status_code == ERROR_STATUS


def test_a_4xx_response_leaves_its_span_unset(
    start_server: StartServer, receiver: OtlpReceiver
) -> None:
    server = start_server(tracing_env(receiver.endpoint))
    assert httpx.get(f"{server.url}/api/items/0").status_code == 422
    (span,) = wait_for_spans(receiver, lambda s: len(s) >= 1)
    assert "error.type" not in span.attributes, "a client's error is not the server's failure"
    assert span.status_code == UNSET_STATUS


def test_operation_spans_are_opt_in(start_server: StartServer, receiver: OtlpReceiver) -> None:
    server = start_server(tracing_env(receiver.endpoint, APP_TRACE_OPERATION_SPANS="true"))
    httpx.get(f"{server.url}/api/items/1")
    spans = wait_for_spans(receiver, lambda s: len(s) >= 2)
    assert len({s.trace_id for s in spans}) == 1


def test_queued_spans_are_flushed_on_shutdown(
    start_server: StartServer, receiver: OtlpReceiver
) -> None:
    # A schedule delay far beyond the test: only the shutdown flush can deliver these.
    server = start_server(tracing_env(receiver.endpoint, OTEL_BSP_SCHEDULE_DELAY="600000"))
    for i in range(5):
        httpx.get(f"{server.url}/api/items/{i + 1}")
    assert receiver.snapshot() == []
    assert server.stop() == 0
    assert len(receiver.snapshot()) == 5


@pytest.fixture
def black_hole() -> Iterator[str]:
    with silent_collector() as endpoint:
        yield endpoint


@pytest.mark.parametrize("backend", ["refusing", "black-holed"])
def test_broken_backend_does_not_slow_or_fail_requests(
    start_server: StartServer, black_hole: str, backend: str
) -> None:
    endpoint = black_hole if backend == "black-holed" else f"http://127.0.0.1:{free_port()}"
    server: Server = start_server(
        tracing_env(endpoint, APP_SPAN_FLUSH_SECONDS="2", OTEL_EXPORTER_OTLP_TIMEOUT="1")
    )
    started = time.monotonic()
    with httpx.Client(base_url=server.url) as client:
        for i in range(300):
            assert client.get(f"/api/items/{i + 1}").status_code == 200
    assert time.monotonic() - started < 15
    time.sleep(2)  # let the exporter fail a few times
    started = time.monotonic()
    assert server.stop() == 0
    assert time.monotonic() - started < 6, "shutdown waits at most APP_SPAN_FLUSH_SECONDS"
    failures = [line for line in server.lines if "export" in line.lower() and "batch" in line]
    if backend == "refusing":
        # Nothing ever answered there (a first run without the stack): said once, at the start.
        assert failures == [], failures
        assert sum("nothing answers yet" in line for line in server.lines) == 1, server.lines
    else:
        # It accepts connections: a collector that fails is reported, rate-limited.
        assert failures, "the export failure is reported"
        assert len(failures) <= 6, f"export failures are rate-limited, got {len(failures)}"


def test_slow_backend_does_not_slow_requests(start_server: StartServer) -> None:
    with OtlpReceiver(delay=3.0) as slow:
        server = start_server(tracing_env(slow.endpoint, APP_SPAN_FLUSH_SECONDS="2"))
        started = time.monotonic()
        with httpx.Client(base_url=server.url) as client:
            for i in range(200):
                assert client.get(f"/api/items/{i + 1}").status_code == 200
        assert time.monotonic() - started < 10, "requests do not wait for the collector"
        started = time.monotonic()
        assert server.stop() == 0
        assert time.monotonic() - started < 8


def test_export_resumes_when_the_backend_returns(start_server: StartServer) -> None:
    port = free_port()
    server = start_server(tracing_env(f"http://127.0.0.1:{port}"))
    with httpx.Client(base_url=server.url) as client:
        for i in range(20):  # exported into the void
            assert client.get(f"/api/items/{i + 1}").status_code == 200
        with OtlpReceiver(port=port) as receiver:
            assert client.get("/api/items/4242").status_code == 200
            spans = wait_for_spans(
                receiver,
                lambda s: any(x.attributes.get("url.path") == "/api/items/4242" for x in s),
                timeout=20,
            )
    assert any(span.name == "GET /api/items/{item_id}" for span in spans)


def test_a_first_run_without_a_collector_says_so_once_and_logs_no_error(
    start_server: StartServer,
) -> None:
    server = start_server(
        tracing_env(
            f"http://127.0.0.1:{free_port()}", APP_LOG_FORMAT="json", OTEL_EXPORTER_OTLP_TIMEOUT="1"
        )
    )
    with httpx.Client(base_url=server.url) as client:
        for i in range(50):
            assert client.get(f"/api/items/{i + 1}").status_code == 200
    time.sleep(3)  # several export rounds, each failing
    started = time.monotonic()
    assert server.stop() == 0
    assert time.monotonic() - started < 3, "no flush to wait for where nothing ever answered"
    records = [json.loads(line) for line in server.lines]
    assert [r["level"] for r in records if r["level"] in ("ERROR", "CRITICAL")] == []
    (warning,) = [r for r in records if r["level"] == "WARNING"]
    assert "nothing answers yet" in warning["message"]
    assert "OTEL_TRACES_EXPORTER=none" in warning["message"]


def test_a_collector_that_answered_once_is_reported_when_it_fails(
    start_server: StartServer,
) -> None:
    with OtlpReceiver() as receiver:
        server = start_server(
            tracing_env(receiver.endpoint, APP_LOG_FORMAT="json", OTEL_EXPORTER_OTLP_TIMEOUT="1")
        )
        assert httpx.get(f"{server.url}/api/items/1").status_code == 200
        wait_for_spans(receiver, lambda s: len(s) >= 1)
    # The collector has gone: its absence is a failure now.
    deadline = time.monotonic() + 20
    with httpx.Client(base_url=server.url) as client:
        while not any("Failed to export" in line for line in server.lines):
            assert time.monotonic() < deadline, server.lines
            assert client.get("/api/items/2").status_code == 200
            time.sleep(0.5)
    assert server.stop() == 0
    assert not any("nothing answers yet" in line for line in server.lines)


def test_repeated_warnings_are_rate_limited() -> None:
    logger = logging.getLogger("test.rate-limited")
    logger.propagate = False
    seen: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record.getMessage())

    logger.addHandler(Collect())
    limit = RateLimitFilter(interval_seconds=0.5)
    logger.addFilter(limit)
    for _ in range(100):
        logger.warning("export failed: %s", "refused")
    logger.warning("another message")
    assert seen == ["export failed: refused", "another message"]
    time.sleep(0.6)
    logger.warning("export failed: %s", "refused")
    assert seen[-1] == "export failed: refused (99 similar messages left out)"


def run_service(*command: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """The service's start, run to its end (here: a refusal), output collected."""
    return subprocess.run(
        list(command),
        cwd=Path(__file__).parent,
        env={**os.environ, "APP_PORT": str(free_port()), **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


INSTRUMENT = str(Path(sys.executable).parent / "opentelemetry-instrument")


def test_opentelemetry_instrument_without_the_distro_stops_with_one_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("OTEL_PYTHON_DISTRO", raising=False)  # set by an in-process app here
    env = {"OTEL_SDK_DISABLED": "false"}
    result = run_service(INSTRUMENT, sys.executable, "-m", "{{ cookiecutter.package_name }}", env=env)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        "invalid setting opentelemetry-instrument needs OTEL_PYTHON_DISTRO={{ cookiecutter.package_name }}"
    )


@pytest.mark.parametrize(
    ("variable", "value"),
    [("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"), ("OTEL_BSP_MAX_QUEUE_SIZE", "16")],
)
def test_a_setting_the_sdk_refuses_stops_the_start_with_one_line(variable: str, value: str) -> None:
    # The SDK reads OTEL_*: gRPC needs an exporter not installed; a queue smaller than a batch.
    env = {"OTEL_SDK_DISABLED": "false", variable: value}
    result = run_service(sys.executable, "-m", "{{ cookiecutter.package_name }}", env=env)
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("invalid OpenTelemetry setting: "), line


# Where the service's environments set it (.env, the image, compose, the deployment files).
DISTRO = {"OTEL_PYTHON_DISTRO": "{{ cookiecutter.package_name }}"}
LAUNCHERS = {"python -m": [], "opentelemetry-instrument": [INSTRUMENT]}


def test_both_launch_modes_trace_alike(start_server: StartServer) -> None:
    """`python -m` and `opentelemetry-instrument python -m`: one provider, the same spans."""
    seen: dict[str, tuple[list[tuple[int, str]], dict[str, object]]] = {}
    for mode, launcher in LAUNCHERS.items():
        with OtlpReceiver() as receiver:
            env = tracing_env(receiver.endpoint, APP_LOG_FORMAT="json", **DISTRO)
            server = start_server(env, launcher=launcher)
            with httpx.Client(base_url=server.url) as client:
                for path in (
                    "/api/items/1",
                    "/api/items/2",
                    "/api/downstream",  # calls /api/items/1 of this service
                    "/health",
                    "/health/ready",
{%- if cookiecutter.use_metrics %}
                    "/metrics",
{%- endif %}
                ):
                    assert client.get(path).status_code == 200, (mode, path)
            assert server.stop() == 0, mode
            spans = receiver.snapshot()
        names = sorted((span.kind, span.name) for span in spans)
        assert names == [
            (SERVER_KIND, "GET /api/downstream"),
            *[(SERVER_KIND, "GET /api/items/{item_id}")] * 3,
            (CLIENT_KIND, "GET"),
        ], (mode, names)
        (call,) = (span for span in spans if span.kind == CLIENT_KIND)
        # The stable HTTP conventions, as the server span speaks them (OTEL_SEMCONV_STABILITY_OPT_IN).
        assert call.attributes["http.request.method"] == "GET"
        assert call.attributes["url.full"].endswith("/api/items/1")
        assert call.attributes["http.response.status_code"] == 200
        assert not {"http.method", "http.url", "http.status_code"} & call.attributes.keys()
        assert len({repr(sorted(span.resource.items())) for span in spans}) == 1
{%- if cookiecutter.use_json_logging %}
        access = [json.loads(line) for line in server.lines if '"logger":"access"' in line]
        assert {line["trace_id"] for line in access} == {
            span.trace_id for span in spans if span.kind == SERVER_KIND
        }
{%- endif %}
        # One process, one random service.instance.id: the rest of the resource is the same.
        seen[mode] = (names, {**spans[0].resource, "service.instance.id": "per process"})
    assert seen["python -m"] == seen["opentelemetry-instrument"]
    assert seen["python -m"][1]["service.name"] == "{{ cookiecutter.project_slug }}"


@pytest.mark.parametrize("mode", LAUNCHERS)
def test_an_installed_instrumentation_traces_its_library_with_no_code(
    start_server: StartServer, receiver: OtlpReceiver, mode: str
) -> None:
    # sqlalchemy's instrumentation is a dev dependency, and nothing else: see extended_app.py.
    env = tracing_env(receiver.endpoint, APP_LOG_FORMAT="json", **DISTRO)
    server = start_server(env, module=EXTENDED_APP, launcher=LAUNCHERS[mode])
    assert httpx.get(f"{server.url}/api/stock/7").json() == {"id": 7, "stock": 7}
    spans = wait_for_spans(receiver, lambda s: any(x.name.startswith("SELECT") for x in s))
    (request,) = (s for s in spans if s.kind == SERVER_KIND)
    (own,) = (s for s in spans if s.name == "count stock")
    (query,) = (s for s in spans if s.name.startswith("SELECT"))
    assert query.kind == CLIENT_KIND
    assert own.parent_span_id == request.span_id, "the span of trace.get_tracer() is the request's"
    assert query.parent_span_id == own.span_id
    assert query.trace_id == own.trace_id == request.trace_id
    assert "sqlite" in (query.attributes.get("db.system.name"), query.attributes.get("db.system"))
{%- if cookiecutter.use_json_logging %}
    server.stop()
    (access,) = (json.loads(line) for line in server.lines if '"logger":"access"' in line)
    assert access["trace_id"] == query.trace_id
{%- endif %}
