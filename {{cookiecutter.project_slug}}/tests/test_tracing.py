"""Traces: spans decoded off the wire from a real OTLP/HTTP receiver."""

import contextlib
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from {{ cookiecutter.package_name }}.observability.tracing import RateLimitFilter, _split_host

from conftest import Server, StartServer, free_port, header_recorder
from otlp_receiver import OtlpReceiver, ReceivedSpan

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
            # 60 kB: as much as fits under the request head limit (APP_MAX_HEADER_BYTES, 64 KiB).
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
        "tracestate": "k=" + "v" * 40_000,  # the whole head stays under APP_MAX_HEADER_BYTES
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


def test_a_queue_smaller_than_the_default_batch_still_exports(
    start_server: StartServer, receiver: OtlpReceiver
) -> None:
    # The service's batch of 64 shrinks to fit: the SDK refuses a batch larger than its queue.
    server = start_server(tracing_env(receiver.endpoint, OTEL_BSP_MAX_QUEUE_SIZE="32"))
    assert httpx.get(f"{server.url}/api/items/1").status_code == 200
    wait_for_spans(receiver, lambda s: len(s) >= 1)
    assert server.stop() == 0


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


def thread_nice_values(pid: int) -> list[int]:
    """The nice value of each thread of a process: field 19 of /proc/PID/task/TID/stat."""
    values = []
    for stat in Path(f"/proc/{pid}/task").glob("*/stat"):
        fields = stat.read_text().rsplit(")", 1)[1].split()  # the name may hold spaces
        values.append(int(fields[16]))
    return values


@pytest.mark.skipif(
    sys.platform != "linux", reason="threads have nice values of their own on Linux"
)
@pytest.mark.parametrize("nice", [10, 0])
def test_spans_are_exported_below_the_requests_cpu_priority(
    start_server: StartServer, receiver: OtlpReceiver, nice: int
) -> None:
    server = start_server(tracing_env(receiver.endpoint, APP_SPAN_EXPORT_NICE=str(nice)))
    assert httpx.get(f"{server.url}/api/items/5").status_code == 200
    wait_for_spans(receiver, lambda s: len(s) >= 1)  # the export thread has exported
    base = os.getpriority(os.PRIO_PROCESS, server.process.pid)
    values = thread_nice_values(server.process.pid)
    lowered = [value for value in values if value != base]
    if nice:
        assert lowered == [min(19, base + nice)], f"only the export thread is lowered: {values}"
    else:
        assert lowered == [], f"every thread at the process's priority: {values}"


def run_after_setup(body: str, *, setup: str = "", **env: str) -> subprocess.CompletedProcess[str]:
    """Run `body` in a fresh interpreter once `setup_tracing(Settings(){setup})` made `provider`.

    Fresh, because the provider and the GIL switch interval are process-wide;
    the collector refuses connections.
    """
    code = (
        "from {{ cookiecutter.package_name }}.observability.tracing import setup_tracing\n"
        "from {{ cookiecutter.package_name }}.settings import Settings\n"
{%- if cookiecutter.use_metrics %}
        "from {{ cookiecutter.package_name }}.observability.metrics import spans_processed\n"
{%- endif %}
        f"provider = setup_tracing(Settings(){setup})\n"
    ) + body
    environ = {
        **os.environ,
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{free_port()}",
        "OTEL_EXPORTER_OTLP_TIMEOUT": "1",  # the exit's flush gives up quickly
        **env,
    }
    environ.pop("OTEL_TRACES_EXPORTER", None)
    return subprocess.run(
        [sys.executable, "-c", code],
        env=environ,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )


@pytest.mark.parametrize(("nice", "interval"), [("10", 0.0002), ("0", 0.005)])
def test_the_gil_changes_hands_sooner_while_spans_are_exported(nice: str, interval: float) -> None:
    out = run_after_setup("import sys\nprint(sys.getswitchinterval())\n", APP_SPAN_EXPORT_NICE=nice)
    expected = interval if sys.platform == "linux" else 0.005  # no per-thread nice elsewhere
    assert float(out.stdout.strip()) == pytest.approx(expected)


@pytest.fixture
def black_hole() -> Iterator[str]:
    """An endpoint that accepts connections and never answers."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                accepted.append(listener.accept()[0])

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    stop.set()
    thread.join()
    for connection in accepted:
        connection.close()
    listener.close()


@pytest.mark.parametrize("backend", ["refusing", "black-holed"])
def test_broken_backend_does_not_slow_or_fail_requests(
    start_server: StartServer, black_hole: str, backend: str
) -> None:
    endpoint = black_hole if backend == "black-holed" else f"http://127.0.0.1:{free_port()}"
    server: Server = start_server(
        tracing_env(endpoint, OTEL_BSP_EXPORT_TIMEOUT="2000", OTEL_EXPORTER_OTLP_TIMEOUT="1")
    )
    started = time.monotonic()
    with httpx.Client(base_url=server.url) as client:
        for i in range(300):
            assert client.get(f"/api/items/{i + 1}").status_code == 200
    assert time.monotonic() - started < 15
    time.sleep(2)  # let the exporter fail a few times
    started = time.monotonic()
    assert server.stop() == 0
    assert time.monotonic() - started < 6, "shutdown waits at most the export timeout"
    failures = [
        line for line in server.lines if "export" in line.lower() and "span" in line.lower()
    ]
    assert failures, "the export failure is reported"
    assert len(failures) <= 6, f"export failures are rate-limited, got {len(failures)}"


def test_slow_backend_does_not_slow_requests(start_server: StartServer) -> None:
    with OtlpReceiver(delay=3.0) as slow:
        server = start_server(tracing_env(slow.endpoint, OTEL_BSP_EXPORT_TIMEOUT="2000"))
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


def test_a_full_span_queue_builds_no_log_records() -> None:
    # The collector refuses, the queue fills, and every further span is turned away
    # with a warning that must not cost a LogRecord. The SDK's own queue never
    # overflows, so its "Queue full" warning (one per evicted span) never comes.
    body = (
        "import logging, time\n"
        "tracer = provider.get_tracer('test')\n"
        "for _ in range(200):\n"
        "    tracer.start_span('fill').end()\n"
        "time.sleep(0.2)\n"
        "built = []\n"
        "factory = logging.getLogRecordFactory()\n"
        "def counting(name, *args, **kwargs):\n"
        "    built.append(name)\n"
        "    return factory(name, *args, **kwargs)\n"
        "logging.setLogRecordFactory(counting)\n"
        "for _ in range(5000):\n"
        "    tracer.start_span('dropped').end()\n"
        "print(built.count('{{ cookiecutter.package_name }}.observability.tracing.queue'))\n"
        "print(built.count('opentelemetry.sdk._shared_internal'))\n"
    )
    out = run_after_setup(
        body,
        OTEL_SDK_DISABLED="false",
        OTEL_BSP_MAX_QUEUE_SIZE="64",
        OTEL_BSP_SCHEDULE_DELAY="60000",
    )
    assert "Span queue full" in out.stderr, "the drop is reported"
    built, built_by_sdk = (int(line) for line in out.stdout.split())
    assert built <= 1, f"muted after the first repeat: {built} built"
    assert built_by_sdk == 0, "the SDK's queue overflowed"
    assert "Queue full, dropping" not in out.stderr


def test_a_full_span_queue_turns_new_spans_away() -> None:
    """While the collector is slow, the queue keeps the spans it has; later ones are dropped.

    The SDK's own queue would evict its oldest span for each new one: a full
    queue of ever-young objects that the garbage collector keeps walking.
    """
    body = (
        "tracer = provider.get_tracer('test')\n"
        "for i in range(64):\n"  # a full batch: the export thread takes it to the slow collector
        "    tracer.start_span(f'first-{i}').end()\n"
        "import time; time.sleep(0.3)\n"
        "for i in range(200):\n"  # meanwhile: 64 fit in the queue, the rest are turned away
        "    tracer.start_span(f'later-{i}').end()\n"
        "provider.shutdown()\n"
{%- if cookiecutter.use_metrics %}
        "from prometheus_client import REGISTRY\n"
        "for error_type in ('', 'queue_full'):\n"
        "    print(REGISTRY.get_sample_value(\n"
        "        'otel_sdk_processor_span_processed_total', {'error_type': error_type}))\n"
{%- endif %}
    )
    # Slow enough that the later loop ends well within the first export, even on a loaded machine.
    with OtlpReceiver(delay=2.0) as slow:
        out = run_after_setup(
            body,
{%- if cookiecutter.use_metrics %}
            setup=", count_spans=spans_processed",  # as the app factory does
{%- endif %}
            OTEL_SDK_DISABLED="false",
            OTEL_EXPORTER_OTLP_ENDPOINT=slow.endpoint,
            OTEL_EXPORTER_OTLP_TIMEOUT="10",
            OTEL_BSP_MAX_QUEUE_SIZE="64",
            OTEL_BSP_MAX_EXPORT_BATCH_SIZE="64",
            OTEL_BSP_SCHEDULE_DELAY="60000",
            OTEL_BSP_EXPORT_TIMEOUT="10000",
        )
        names = [span.name for span in slow.snapshot()]
    first = sorted(int(n.removeprefix("first-")) for n in names if n.startswith("first-"))
    assert first == list(range(64))
    later = sorted(int(n.removeprefix("later-")) for n in names if n.startswith("later-"))
    assert "later-199" not in names, "the newest span evicted an older one"
    # One unbroken run: the later spans that fit once the export thread took its batch
    # (none if a loaded machine kept that thread from it for the whole loop).
    assert len(later) <= 64
    if later:
        assert later == list(range(later[0], later[0] + len(later))), later
    assert "Span queue full" in out.stderr, "the drop is reported"
{%- if cookiecutter.use_metrics %}
    # /metrics counts both: every span exported, and every one turned away.
    handed, turned_away = (float(line) for line in out.stdout.split())
    assert handed == len(names)
    assert turned_away == 200 - len(later)
{%- endif %}


@pytest.fixture
def flooded_logger() -> Iterator[tuple[logging.Logger, list[str], list[int]]]:
    """A logger with a rate limit, the messages that got out, and how many records were built."""
    logger = logging.getLogger("test.export-flood")
    emitted: list[str] = []
    built = [0]
    factory = logging.getLogRecordFactory()

    def counting_factory(*args: object, **kwargs: object) -> logging.LogRecord:
        built[0] += 1
        return factory(*args, **kwargs)

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            emitted.append(record.getMessage())

    handler = Collect()
    logging.setLogRecordFactory(counting_factory)
    logger.addHandler(handler)
    logger.propagate = False
    try:
        yield logger, emitted, built
    finally:
        logging.setLogRecordFactory(factory)
        logger.removeHandler(handler)
        logger.filters.clear()
        logger.disabled = False


def test_muted_loggers_are_unmuted_by_one_thread_started_ahead(
    flooded_logger: tuple[logging.Logger, list[str], list[int]],
) -> None:
    # A thread started from the request whose span was dropped stalled it for about 1 ms.
    logger, _, _ = flooded_logger
    limit = RateLimitFilter(interval_seconds=60.0, mute_seconds=0.05)
    limit.start()
    logger.addFilter(limit)
    threads = threading.active_count()
    for _ in range(5):
        for _ in range(100):
            logger.warning("Queue full, dropping %s.", "span")
        assert logger.disabled, "a repeating logger is muted"
        assert threading.active_count() == threads, "muting starts no thread"
        deadline = time.monotonic() + 5
        while logger.disabled and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not logger.disabled, "and speaks again once the mute is over"


def test_a_flood_of_export_warnings_is_cut_before_records_are_built(
    flooded_logger: tuple[logging.Logger, list[str], list[int]],
) -> None:
    # The SDK warns once per dropped span: thousands a second while the queue is full.
    logger, emitted, built = flooded_logger
    # Wide margins: a loaded machine may stall this thread for a few hundred ms.
    logger.addFilter(RateLimitFilter(interval_seconds=3.0, mute_seconds=0.2))
    first = time.monotonic()
    for _ in range(10_000):
        logger.warning("Queue full, dropping %s.", "span")
    assert emitted == ["Queue full, dropping span."]
    assert built[0] == 2, "after the first repeat the logger is muted: no record is even built"

    time.sleep(0.8)  # the mute is over, the interval is not
    logger.warning("Queue full, dropping %s.", "span")
    assert built[0] == 3
    assert len(emitted) == 1

    # The interval is over: the next one gets out, with the count.
    time.sleep(max(0.0, first + 3.2 - time.monotonic()))
    logger.warning("Queue full, dropping %s.", "span")
    assert emitted[1] == "Queue full, dropping span. (at least 2 similar messages suppressed)"
    logger.warning("Exception while exporting %s.", "span")
    assert emitted[2] == "Exception while exporting span.", "other messages have their own budget"
