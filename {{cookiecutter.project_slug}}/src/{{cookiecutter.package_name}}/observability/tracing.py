"""Traces: OpenTelemetry, set up the standard way, exporting over OTLP/HTTP.

`configure_tracing` runs what `opentelemetry-instrument` runs, with the defaults of distro.py:
the SDK reads the `OTEL_*` variables, and every instrumentation package installed instruments
its library (httpx here; a database driver or a cache client as the service grows).

`ServerSpans`, called by the request middleware (context.py), records one server span per
request at about half the cost of FastAPI's native tracing, which takes over only for its
per-operation spans (`APP_TRACE_OPERATION_SPANS`). An unsampled request costs ids, not a span.
Spans leave through the SDK's bounded queue, which drops them with its own warning when full.
"""

import logging
import os
import socket
import sys
import threading
import time
from contextvars import Token
from typing import Any
from urllib.parse import urlsplit

from fastapi.telemetry import TelemetryConfig
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.instrumentation import auto_instrumentation
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import Span, SpanKind, StatusCode
from opentelemetry.util.http import PARAMS_TO_REDACT, redact_query_parameters
from starlette.types import Scope

from ..settings import Settings, without_credentials
from . import distro
from .context import EXCLUDED_PATHS, OTHER_METHOD, UNMATCHED_ROUTE

# The SDK's loggers that repeat themselves: the exporter, once per retry of every
# batch; cut attribute values, once per request whose client sent a giant header;
# a malformed member of a caller's baggage header (with baggage read), once per request.
_EXPORT_LOGGER = "opentelemetry.exporter.otlp.proto.http.trace_exporter"
_REPEATING_LOGGERS = ("opentelemetry.attributes", "opentelemetry.baggage.propagation")

_logger = logging.getLogger(__name__)

TraceIds = tuple[str, str, bool]  # (trace_id, span_id, sampled), the ids in W3C hex form


def configure_tracing() -> None:
    """Set tracing up as `opentelemetry-instrument` does, unless that already happened."""
    if isinstance(trace.get_tracer_provider(), TracerProvider):
        return
    os.environ.setdefault("OTEL_PYTHON_DISTRO", distro.NAME)
    auto_instrumentation.initialize(swallow_exceptions=False)


def started_by_another_distro() -> str | None:
    """What to set under `opentelemetry-instrument` without this distro chosen, else None
    (unset, the first distro installed wins, in an order nothing defines)."""
    # The command puts the folder of its sitecustomize module on the path.
    folder = os.path.dirname(os.path.abspath(auto_instrumentation.__file__))
    launched = folder in (os.path.abspath(path) for path in sys.path if path)
    chosen = os.environ.get("OTEL_PYTHON_DISTRO") == distro.NAME
    return f"OTEL_PYTHON_DISTRO={distro.NAME}" if launched and not chosen else None


class RateLimitFilter(logging.Filter):
    """One record per logger and message template per interval; the next says how many were left out."""

    def __init__(self, interval_seconds: float = 60.0) -> None:
        super().__init__()
        self.interval = interval_seconds
        self._last: dict[tuple[str, object], float] = {}
        self._left_out: dict[tuple[str, object], int] = {}
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.name, record.msg)
        now = time.monotonic()
        with self._lock:
            if now - self._last.get(key, -self.interval) < self.interval:
                self._left_out[key] = self._left_out.get(key, 0) + 1
                return False
            self._last[key] = now
            left_out = self._left_out.pop(key, 0)
        if left_out:
            record.msg = f"{record.msg} ({left_out} similar messages left out)"
        return True


class ExportFailureFilter(RateLimitFilter):
    """The exporter's failures: none while nothing ever answered at the endpoint, then rate-limited.
    It runs in the export thread: its probe (a TCP connect) never delays a request."""

    def __init__(self, endpoint: str, *, reached: bool, probe_seconds: float = 5.0) -> None:
        super().__init__()
        self.endpoint = endpoint
        self.reached = reached
        self.probe_seconds = probe_seconds
        self._probed = time.monotonic()

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.reached and time.monotonic() - self._probed >= self.probe_seconds:
            self._probed = time.monotonic()
            self.reached = answers(self.endpoint)  # from then on, a failure is a real one
        return self.reached and super().filter(record)


_repeats = RateLimitFilter()  # of _REPEATING_LOGGERS; a logger adds a filter only once
_export_failures: ExportFailureFilter | None = None  # one per process, however many apps it builds


def answers(url: str, timeout: float = 0.5) -> bool:
    """Whether something accepts connections at the URL's host and port."""
    parts = urlsplit(url)
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
        with socket.create_connection((parts.hostname or "localhost", port), timeout=timeout):
            return True
    except (OSError, ValueError):
        return False


def watch_export() -> str:
    """Rate-limit the SDK's repeating warnings, say once if nothing answers where spans go;
    returns what the start line says of tracing."""
    global _export_failures  # noqa: PLW0603
    for name in _REPEATING_LOGGERS:
        logging.getLogger(name).addFilter(_repeats)
    sampler = os.environ.get("OTEL_TRACES_SAMPLER", "parentbased_always_on")
    if argument := os.environ.get("OTEL_TRACES_SAMPLER_ARG"):
        sampler = f"{sampler} {argument}"
    if os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return "tracing off (OTEL_SDK_DISABLED)"
    if os.environ.get("OTEL_TRACES_EXPORTER", "").strip().lower() == "none":
        return f"spans sampled {sampler}, sent nowhere"
    # Where the OTLP/HTTP exporter sends spans, as it works it out from the environment.
    endpoint = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "").strip()
    if not endpoint:
        base = os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip() or "http://localhost:4318"
        endpoint = f"{base.rstrip('/')}/v1/traces"
    shown = without_credentials(endpoint)
    if _export_failures is None:
        reached = answers(endpoint)
        _export_failures = ExportFailureFilter(endpoint, reached=reached)
        logging.getLogger(_EXPORT_LOGGER).addFilter(_export_failures)
        if not reached:
            _logger.warning(
                "Spans go to %s, where nothing answers yet: they are dropped until something "
                "listens there (the stack's Jaeger, `make up`), or set OTEL_TRACES_EXPORTER=none",
                shown,
            )
    return f"spans sampled {sampler}, sent over OTLP to {shown}"


def current_trace_ids(span: Span | None = None) -> TraceIds | None:
    """(trace_id, span_id, sampled) of `span`, else of the active one, if there is one."""
    context = (span or trace.get_current_span()).get_span_context()
    if not context.is_valid:
        return None
    trace_id, span_id = format(context.trace_id, "032x"), format(context.span_id, "016x")
    return trace_id, span_id, context.trace_flags.sampled


class ServerSpans:
    """The request middleware's server span: one per request, as the HTTP semantic conventions say
    (with operation spans asked for, FastAPI's native tracing records it; this reads its ids)."""

    def __init__(self, settings: Settings) -> None:
        self.tracer = None if settings.trace_operation_spans else trace.get_tracer(__name__)
        # Only these headers can carry a parent context (traceparent, tracestate, baggage...).
        fields = propagate.get_global_textmap().fields
        self._propagation_headers = frozenset(name.lower().encode("latin-1") for name in fields)

    def start(self, scope: Scope, method: str, route: str) -> tuple[Span, Token[Context]] | None:
        """Start the request's span and make it current; returns what `end` needs."""
        if self.tracer is None:
            return None
        carrier: dict[str, str] = {}
        for header, value in scope["headers"]:
            if header in self._propagation_headers:
                carrier[header.decode("latin-1")] = value.decode("latin-1")
        parent = propagate.extract(carrier) if carrier else None
        # What a sampler may decide on; the rest is worked out only for a span that records.
        attributes: dict[str, Any] = {
            "http.request.method": method,
            "url.scheme": scope.get("scheme", "http"),
            "url.path": scope["path"],
        }
        if route != UNMATCHED_ROUTE:
            attributes["http.route"] = route
        name = method if route == UNMATCHED_ROUTE else f"{method} {route}"
        span = self.tracer.start_span(name, parent, kind=SpanKind.SERVER, attributes=attributes)
        if span.is_recording():
            span.set_attributes(_request_attributes(scope, method))
        # A mounted FastAPI app would otherwise record a second server span of its own.
        scope.setdefault("fastapi.telemetry", None)
        return span, otel_context.attach(trace.set_span_in_context(span, parent))

    def end(
        self,
        started: tuple[Span, Token[Context]] | None,
        status: int,
        error_type: str | None,
        *,
        finished_ago: float = 0.0,
        keep_current: bool = False,
    ) -> TraceIds | None:
        """End the span as of the response, `finished_ago` seconds ago, failed if `error_type` is
        set (with `keep_current` it stays current for the rest of the task); return its ids."""
        if started is None:
            return current_trace_ids()
        span, token = started
        if span.is_recording():
            span.set_attribute("http.response.status_code", status)
            if error_type is not None:
                span.set_attribute("error.type", error_type)
                span.set_status(StatusCode.ERROR)
            # Ends with the response: what runs after it (background tasks) is off the clock.
            span.end(time.time_ns() - round(finished_ago * 1e9) if finished_ago > 1e-4 else None)
        if not keep_current:
            otel_context.detach(token)
        return current_trace_ids(span)


def _request_attributes(scope: Scope, method: str) -> dict[str, Any]:
    """The server span's attributes known when the request starts, besides the sampler's."""
    attributes: dict[str, Any] = {"network.protocol.version": scope.get("http_version", "1.1")}
    if method == OTHER_METHOD:
        attributes["http.request.method_original"] = scope["method"]
    if query := scope.get("query_string"):
        query = query.decode("latin-1")
        if any(name in query for name in PARAMS_TO_REDACT):  # a signed URL's credentials: replaced
            query = redact_query_parameters(f"?{query}").removeprefix("?")
        attributes["url.query"] = query
    host = user_agent = None
    for header, value in scope["headers"]:
        if header == b"host":
            host = value
        elif header == b"user-agent":
            user_agent = value
    if host:  # the server the client asked for, as the conventions prefer
        address, port = _split_host(host.decode("latin-1"), scope.get("scheme", "http"))
    else:  # HTTP/1.0 without Host: the socket the request came in on
        address, port = scope.get("server") or ("", None)
    if address:
        attributes["server.address"] = address
        if port is not None:
            attributes["server.port"] = port
    if client := scope.get("client"):
        # Behind a trusted proxy (FORWARDED_ALLOW_IPS), uvicorn puts the original client here.
        attributes["client.address"] = client[0]
    if user_agent:
        attributes["user_agent.original"] = user_agent.decode("latin-1")
    return attributes


def _split_host(host: str, scheme: str) -> tuple[str, int | None]:
    """A Host header as (server.address, server.port): the scheme's port when it names none."""
    if host.startswith("["):  # an IPv6 literal: [::1]:8000
        address, _, rest = host[1:].partition("]")
        port = rest.removeprefix(":")
    else:
        address, _, port = host.partition(":")
    if not port:
        return address, 443 if scheme == "https" else 80
    if port.isascii() and port.isdigit() and int(port) <= 65535:
        return address, int(port)
    return address, None  # malformed: no port rather than a wrong one


def telemetry_config(settings: Settings) -> TelemetryConfig:
    """FastAPI's native tracing, only when its per-operation spans are asked for."""
    return {
        "tracer_provider": trace.get_tracer_provider(),
        "tracing": settings.trace_operation_spans,
        "operation_spans": settings.trace_operation_spans,
        "metrics": False,  # {% if cookiecutter.use_metrics %}prometheus-client owns the HTTP metrics{% else %}the service exports no metrics{% endif %}
        "logs": False,  # logs go to stdout, for whatever collects the container's output
        "auto_configure": False,
        "exclude": lambda scope: scope.get("path") in EXCLUDED_PATHS,
    }


def flush_spans(budget_seconds: float) -> None:
    """Export what is queued for at most `budget_seconds` (the SDK's shutdown would wait 30 s)."""
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        return
    watch = _export_failures
    if watch is not None and not watch.reached and not answers(watch.endpoint):
        budget_seconds = 0  # nothing ever answered there: no flush to wait for, said at the start
    flush = threading.Thread(target=provider.shutdown, name="span-flush", daemon=True)
    flush.start()
    flush.join(budget_seconds)  # a daemon thread: the stop goes ahead once the budget is spent
    if flush.is_alive() and budget_seconds:
        _logger.warning("span export not done within APP_SPAN_FLUSH_SECONDS; dropping the rest")
