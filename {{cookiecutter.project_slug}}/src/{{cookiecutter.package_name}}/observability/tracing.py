"""Traces: the OpenTelemetry SDK, exporting over OTLP/HTTP with protobuf.

One server span per request, named and attributed as the HTTP semantic
conventions say, is recorded by `ServerSpans`, which the request middleware
(context.py) calls around the app: that costs about half of what FastAPI's
native per-request tracing does. FastAPI's native tracing takes over only
when its per-operation spans (dependencies, endpoint, serialization) are
asked for with `APP_TRACE_OPERATION_SPANS`. No instrumentation library is
layered on top: every request has one server span.

Everything else follows the standard variables: OTEL_EXPORTER_OTLP_ENDPOINT
(the SDK appends /v1/traces), OTEL_TRACES_EXPORTER (`none` exports nothing),
OTEL_TRACES_SAMPLER and _ARG (default: parent-based always-on), OTEL_BSP_* for
the batch queue, and OTEL_RESOURCE_ATTRIBUTES / OTEL_SERVICE_NAME, which win
over the settings. One default differs from the SDK's: without
OTEL_PROPAGATORS only the W3C trace context (traceparent, tracestate) is read
from callers and sent on, not baggage: any client can write a baggage header,
and services downstream may trust what it says (`user.id=admin`). Behind a
gateway that strips it, set OTEL_PROPAGATORS=tracecontext,baggage.

Spans are exported from a background thread through a bounded queue
(OTEL_BSP_MAX_QUEUE_SIZE, 2048): when the collector is down or slow, requests
do not wait for it, new spans are turned away once the queue is full, and
the export failures are logged at most once a minute per kind of message. On
shutdown the queue is flushed for at most OTEL_BSP_EXPORT_TIMEOUT; what a dead
collector cannot take by then is dropped rather than holding up the stop.

That thread encodes spans in Python (about 30 us each) on the requests' core.
So that a request arriving meanwhile does not wait for a batch to be encoded,
the thread runs `APP_SPAN_EXPORT_NICE` (10) steps below the requests' CPU
priority on Linux, and the interpreter hands the GIL over every 0.2 ms instead
of 5 ms. The export then takes the core's idle time: with 100 % sampling on a
saturated core it falls behind and the queue drops spans (warned in the logs);
set 0 to export at the requests' priority instead.
"""

import logging
import os
import sys
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from contextvars import Token
from typing import Any

import httpx
from fastapi.telemetry import TelemetryConfig
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
from opentelemetry.sdk.resources import OTELResourceDetector, Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanLimits, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExportResult
from opentelemetry.trace import Span, SpanKind, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.util.http import PARAMS_TO_REDACT, redact_query_parameters
from starlette.types import Scope

from ..settings import DEFAULT_SPAN_EXPORT_TIMEOUT_MS, Settings, span_flush_seconds
from .context import EXCLUDED_PATHS, OTHER_METHOD, UNMATCHED_ROUTE, TraceIds

# Told how many spans the batch processor is done with, and whether it dropped them.
SpanCounter = Callable[[int, bool], None]

_DEFAULT_EXPORT_BATCH_SIZE = 64
_DEFAULT_QUEUE_SIZE = 2048  # the SDK's
_DEFAULT_ATTRIBUTE_VALUE_LENGTH = 4096
# The SDK loggers that repeat themselves: export failures, once per retry of every
# batch, and cut attribute values, once per request whose client sent a giant header.
_REPEATING_LOGGERS = (
    "opentelemetry.exporter.otlp.proto.http.trace_exporter",
    "opentelemetry.sdk._shared_internal",
    "opentelemetry.sdk.trace.export",
    "opentelemetry.attributes",
    # One warning per malformed member of a caller's baggage header (with baggage read).
    "opentelemetry.baggage.propagation",
    # One warning per span turned away by a full queue.
    f"{__name__}.queue",
)

# The GIL hand-over interval while spans are exported; CPython's default is 5 ms.
_SWITCH_INTERVAL_SECONDS = 0.0002
# The thread the batch span processor exports from (the SDK's name for it).
_EXPORT_THREAD_PREFIX = "OtelBatch"

_provider: TracerProvider | None = None


class RateLimitFilter(logging.Filter):
    """Lets one record per message template through per interval, counting the rest.

    A filter runs only after the record exists (a stack walk and a LogRecord,
    several microseconds), and a full span queue warns once per span turned
    away: thousands a second while a dead collector keeps it full. So a logger
    that repeats itself is also muted for `mute_seconds`; its records are then not
    even created, and the count of suppressed ones becomes a lower bound.

    A muted logger never reaches its filters again, so one thread per process
    unmutes it. `start` starts that thread off the request path: a thread
    started from the request that logged would stall it (about 1 ms).
    """

    def __init__(self, interval_seconds: float = 60.0, mute_seconds: float = 1.0) -> None:
        super().__init__()
        self.interval = interval_seconds
        self.mute_seconds = mute_seconds
        self._last: dict[tuple[str, object], float] = {}
        self._suppressed: dict[tuple[str, object], int] = {}
        self._muted: dict[str, float] = {}  # logger name -> when it speaks again
        self._lock = threading.Lock()
        self._muting = threading.Event()  # set when a logger is muted
        self._unmuter_pid = 0

    def start(self) -> None:
        """Start the unmuting thread of this process, if it does not run yet."""
        with self._lock:
            self._start_locked()

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.name, record.msg)
        now = time.monotonic()
        with self._lock:
            if now - self._last.get(key, -self.interval) < self.interval:
                self._suppressed[key] = self._suppressed.get(key, 0) + 1
                self._mute(record.name, now)
                return False
            self._last[key] = now
            suppressed = self._suppressed.pop(key, 0)
        if suppressed:
            record.msg = f"{record.msg} (at least {suppressed} similar messages suppressed)"
        return True

    def _mute(self, name: str, now: float) -> None:
        if name in self._muted:
            return
        self._muted[name] = now + self.mute_seconds
        logging.getLogger(name).disabled = True  # checked before a record is built
        self._start_locked()  # a no-op once `start` has run in this process
        self._muting.set()

    def _start_locked(self) -> None:
        # A forked worker inherits `_unmuter_pid` but not the thread: it starts its own.
        if self._unmuter_pid == os.getpid():
            return
        self._unmuter_pid = os.getpid()
        unmuter = threading.Thread(target=self._unmute_when_due, name="log-unmute", daemon=True)
        unmuter.start()

    def _unmute_when_due(self) -> None:
        while True:
            with self._lock:
                now = time.monotonic()
                for name, until in list(self._muted.items()):
                    if until <= now:
                        del self._muted[name]
                        logging.getLogger(name).disabled = False
                next_due = min(self._muted.values(), default=None)
                self._muting.clear()
            # Sleeps until the next logger is due, or until one is muted.
            self._muting.wait(None if next_due is None else next_due - now)


_rate_limit = RateLimitFilter()


class BackgroundExporter(OTLPSpanExporter):
    """The OTLP/HTTP exporter, lowering the CPU priority of the thread it exports from.

    On Linux a thread has a nice value of its own: the batch thread's is raised
    by `nice` the first time it exports, so the event loop preempts it as soon
    as a request comes in. Other threads that export (a flush from the main
    thread) are left alone. It counts the spans it is handed: the batch
    processor's queue has no other way out.
    """

    def __init__(self, nice: int, count_spans: SpanCounter | None = None) -> None:
        super().__init__()
        self.nice = nice if sys.platform == "linux" else 0
        self._lowered = threading.local()
        self.handed = 0  # written by one exporting thread at a time (the processor's export lock)
        self.count_spans = count_spans

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.handed += len(spans)
        if self.count_spans is not None:
            self.count_spans(len(spans), False)
        if self.nice and not getattr(self._lowered, "done", False):
            self._lowered.done = True
            if threading.current_thread().name.startswith(_EXPORT_THREAD_PREFIX):
                _lower_thread_priority(self.nice)
        return super().export(spans)


class BoundedBatchSpanProcessor(BatchSpanProcessor):
    """The SDK's batch processor, turning a new span away when the queue is full.

    The SDK's queue keeps the newest spans: while the collector is down or slow,
    each new span evicts the oldest, so the full queue is always young objects
    that every young-generation garbage collection walks and promotes. Pauses
    over 1 ms became 30 times as frequent, and the requests that met one took
    the p99 8-19 % above a working pipeline's (benchmarks/faults.py). A span
    turned away dies with its request instead. During an outage the spans kept
    are the first of it, not the last; either way the rest is lost, and a
    warning says so.

    The queue's length is counted from the outside: spans let in, minus spans
    handed to the exporter (the way out; a forked child starts empty). One lock
    makes the check and the append one step, so the queue never overflows and
    the SDK never evicts: a span it evicted would stay in the count for good.
    """

    def __init__(self, exporter: BackgroundExporter, max_queue_size: int, **options: Any) -> None:
        super().__init__(exporter, max_queue_size=max_queue_size, **options)
        self._counting_exporter = exporter
        self._queue_limit = max_queue_size
        self._let_in = 0
        self._let_in_lock = threading.Lock()
        self._closed = False
        # A forked child starts with an empty queue (the SDK clears it): so does the count.
        # Weakly: a processor must not live on for the hook's sake.
        if hasattr(os, "register_at_fork"):  # not on Windows, which does not fork
            forget = weakref.WeakMethod(self._forget_queue)
            os.register_at_fork(after_in_child=lambda: (method := forget()) and method())

    def on_end(self, span: ReadableSpan) -> None:
        if self._closed or not (span.context and span.context.trace_flags.sampled):
            return  # never queued
        with self._let_in_lock:
            if self._let_in - self._counting_exporter.handed < self._queue_limit:
                self._let_in += 1
                super().on_end(span)
                return
        if self._counting_exporter.count_spans is not None:
            self._counting_exporter.count_spans(1, True)
        _queue_logger.warning(
            "Span queue full (OTEL_BSP_MAX_QUEUE_SIZE=%d): spans end faster than they are exported "
            "(the collector is down or slow, or the export thread gets too little CPU); "
            "dropping new spans",
            self._queue_limit,
        )

    def shutdown(self) -> None:
        self._closed = True  # the SDK ignores later spans: they must not count as queued
        super().shutdown()  # type: ignore[no-untyped-call]  # unannotated in the SDK

    def _forget_queue(self) -> None:
        self._let_in_lock = threading.Lock()  # a lock held at the fork stays held in the child
        self._let_in = self._counting_exporter.handed


_queue_logger = logging.getLogger(f"{__name__}.queue")


def _lower_thread_priority(steps: int) -> None:
    thread_id = threading.get_native_id()
    try:
        current = os.getpriority(os.PRIO_PROCESS, thread_id)
        os.setpriority(os.PRIO_PROCESS, thread_id, min(19, current + steps))
    except OSError as error:  # a sandbox may forbid it; exporting matters more
        logging.getLogger(__name__).warning("could not lower the span export priority: %s", error)


def setup_tracing(settings: Settings, count_spans: SpanCounter | None = None) -> TracerProvider:
    """Create the process's tracer provider once; later calls return it.

    Called from the app factory, so every worker process builds its own
    provider and export thread after the fork (never in a preloading parent).
    `count_spans` hears of every span exported or dropped (the metrics).
    """
    global _provider  # noqa: PLW0603 - one provider per process
    if _provider is None:
        if "OTEL_PROPAGATORS" not in os.environ:
            # The trace context only: callers' baggage is not trusted (module docstring).
            propagate.set_global_textmap(TraceContextTextMapPropagator())
        for name in _REPEATING_LOGGERS:
            sdk_logger = logging.getLogger(name)
            if _rate_limit not in sdk_logger.filters:
                # First in line: the SDK's own DuplicateFilter drops repeats before later
                # filters see them, so ours would never learn to mute the logger.
                sdk_logger.filters.insert(0, _rate_limit)
        resource = Resource.create(
            {
                "service.name": settings.service_name,
                "service.version": settings.version,
                "deployment.environment.name": settings.environment,
            }
        ).merge(OTELResourceDetector().detect())
        # The client writes the path, the query and the User-Agent: a megabyte header
        # must not become a megabyte span in the trace backend.
        limits = SpanLimits(
            # OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT, read by the SDK, still wins for spans.
            max_attribute_length=_unless_set(
                _DEFAULT_ATTRIBUTE_VALUE_LENGTH, "OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT"
            )
        )
        _provider = TracerProvider(resource=resource, span_limits=limits)
        # OTEL_TRACES_EXPORTER=none: spans still get ids to correlate by, and go nowhere.
        if os.environ.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower() != "none":
            _rate_limit.start()
            exporter = BackgroundExporter(settings.span_export_nice, count_spans)
            if exporter.nice:
                sys.setswitchinterval(_SWITCH_INTERVAL_SECONDS)
            _provider.add_span_processor(_batch_processor(exporter))
        if not isinstance(trace.get_tracer_provider(), TracerProvider):
            # The global provider can be set once per process; FastAPI and httpx get
            # theirs passed explicitly, this one serves `trace.get_tracer()` in app code.
            trace.set_tracer_provider(_provider)
    return _provider


def _batch_processor(exporter: BackgroundExporter) -> BoundedBatchSpanProcessor:
    """The SDK's batch processor, with the service's defaults where no OTEL_BSP_* says otherwise."""
    # The exporter encodes each batch in Python while holding the GIL: batches of 64
    # spans instead of the SDK's 512 cut the latency spikes this causes to a quarter
    # (fewer if the queue is smaller: the SDK refuses a batch larger than its queue).
    try:
        queue_size = int(os.environ.get("OTEL_BSP_MAX_QUEUE_SIZE") or _DEFAULT_QUEUE_SIZE)
    except ValueError:  # refused at start (settings.py); an app served otherwise goes on
        logging.getLogger(__name__).warning(
            "OTEL_BSP_MAX_QUEUE_SIZE is not a whole number: using %d", _DEFAULT_QUEUE_SIZE
        )
        queue_size = _DEFAULT_QUEUE_SIZE
    return BoundedBatchSpanProcessor(
        exporter,
        max_queue_size=queue_size,
        max_export_batch_size=_unless_set(
            min(_DEFAULT_EXPORT_BATCH_SIZE, queue_size), "OTEL_BSP_MAX_EXPORT_BATCH_SIZE"
        ),
        export_timeout_millis=_unless_set(
            DEFAULT_SPAN_EXPORT_TIMEOUT_MS, "OTEL_BSP_EXPORT_TIMEOUT"
        ),
    )


def _unless_set(default: int, variable: str) -> int | None:
    """`default`, or None (the SDK reads the variable) when `variable` is set.

    Passed as arguments, not written into the environment: processes the service
    starts would inherit them, and the validation of their own variables with it.
    """
    return None if os.environ.get(variable, "").strip() else default


def current_trace_ids() -> TraceIds | None:
    """(trace_id, span_id, sampled) of the active span, ids in W3C hex form, if there is one."""
    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return None
    return (
        format(context.trace_id, "032x"),
        format(context.span_id, "016x"),
        context.trace_flags.sampled,
    )


class ServerSpans:
    """The request middleware's server span: one per request, as the HTTP semantic conventions say.

    With `tracer` None, FastAPI's native tracing records the span (operation
    spans asked for) and this only reads the ids of the current one.
    """

    def __init__(self, tracer: trace.Tracer | None) -> None:
        self.tracer = tracer
        # Only these headers can carry a parent context (traceparent, tracestate, baggage...).
        self._propagation_headers = frozenset(
            name.lower().encode("latin-1") for name in propagate.get_global_textmap().fields
        )

    def start(self, scope: Scope, method: str, route: str) -> tuple[Span, Token[Context]] | None:
        if self.tracer is None:
            return None
        carrier: dict[str, str] = {}
        host = user_agent = None
        for header, value in scope["headers"]:
            if header == b"host":
                host = value
            elif header == b"user-agent":
                user_agent = value
            elif header in self._propagation_headers:
                carrier[header.decode("latin-1")] = value.decode("latin-1")
        parent = propagate.extract(carrier) if carrier else None
        attributes = _request_attributes(scope, method, route, host, user_agent)
        name = method if route == UNMATCHED_ROUTE else f"{method} {route}"
        span = self.tracer.start_span(name, parent, kind=SpanKind.SERVER, attributes=attributes)
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
        if started is None:
            span_context = trace.get_current_span().get_span_context()
        else:
            span, token = started
            span_context = span.get_span_context()
            if span.is_recording():
                span.set_attribute("http.response.status_code", status)
                if error_type is not None:
                    span.set_attribute("error.type", error_type)
                    span.set_status(StatusCode.ERROR)
            # Ends with the response: what runs after it (background tasks) is off the clock.
            span.end(time.time_ns() - round(finished_ago * 1e9) if finished_ago > 1e-4 else None)
            if not keep_current:
                otel_context.detach(token)
        if not span_context.is_valid:
            return None
        return (
            format(span_context.trace_id, "032x"),
            format(span_context.span_id, "016x"),
            span_context.trace_flags.sampled,
        )


def _request_attributes(
    scope: Scope, method: str, route: str, host: bytes | None, user_agent: bytes | None
) -> dict[str, Any]:
    """The server span's attributes known when the request starts."""
    scheme = scope.get("scheme", "http")
    attributes: dict[str, Any] = {
        "http.request.method": method,
        "url.scheme": scheme,
        "url.path": scope["path"],
        "network.protocol.version": scope.get("http_version", "1.1"),
    }
    if method == OTHER_METHOD:
        attributes["http.request.method_original"] = scope["method"]
    if route != UNMATCHED_ROUTE:
        attributes["http.route"] = route
    query = scope.get("query_string")
    if query:
        attributes["url.query"] = _redacted_query(query.decode("latin-1"))
    if host:  # the server the client asked for, as the conventions prefer
        address, port = _split_host(host.decode("latin-1"), scheme)
    else:  # HTTP/1.0 without Host: the socket the request came in on
        address, port = scope.get("server") or ("", None)
    if address:
        attributes["server.address"] = address
        if port is not None:
            attributes["server.port"] = port
    client = scope.get("client")
    if client:
        # Behind a trusted proxy (FORWARDED_ALLOW_IPS), uvicorn puts the original client here.
        attributes["client.address"] = client[0]
    if user_agent:
        attributes["user_agent.original"] = user_agent.decode("latin-1")
    return attributes


_DEFAULT_PORTS = {"http": 80, "https": 443}


def _split_host(host: str, scheme: str) -> tuple[str, int | None]:
    """A Host header as (server.address, server.port): the scheme's port when it names none."""
    if host.startswith("["):  # an IPv6 literal: [::1]:8000
        address, _, rest = host[1:].partition("]")
        port = rest.removeprefix(":")
    else:
        address, _, port = host.partition(":")
    if not port:
        return address, _DEFAULT_PORTS.get(scheme)
    if port.isascii() and port.isdigit() and int(port) <= 65535:
        return address, int(port)
    return address, None  # malformed: no port rather than a wrong one


def _redacted_query(query: str) -> str:
    """The query, with the values of the parameters that carry credentials (signed URLs) replaced."""
    if not any(name in query for name in PARAMS_TO_REDACT):
        return query  # the usual case: no parsing
    return redact_query_parameters(f"?{query}").removeprefix("?")


def server_spans(settings: Settings, provider: TracerProvider) -> ServerSpans:
    """The request middleware's span recorder; with operation spans, FastAPI records the span."""
    return ServerSpans(None if settings.trace_operation_spans else provider.get_tracer(__name__))


def telemetry_config(settings: Settings, provider: TracerProvider) -> TelemetryConfig:
    """FastAPI's native tracing, only when its per-operation spans are asked for.

    Otherwise the request middleware records the one server span per request,
    at about half the cost.
    """
    return {
        "tracer_provider": provider,
        "tracing": settings.trace_operation_spans,
        "operation_spans": settings.trace_operation_spans,
        "metrics": False,  # {% if cookiecutter.use_metrics %}prometheus-client owns the HTTP metrics{% else %}the service exports no metrics{% endif %}
        "logs": False,  # logs go to stdout, for whatever collects the container's output
        "auto_configure": False,
        "exclude": lambda scope: scope.get("path") in EXCLUDED_PATHS,
    }


def instrument_client(client: httpx.AsyncClient, provider: TracerProvider) -> None:
    """Outgoing requests get a client span and carry `traceparent` downstream."""
    HTTPXClientInstrumentor.instrument_client(client, tracer_provider=provider)


def shutdown_tracing() -> None:
    """Flush queued spans, for at most OTEL_BSP_EXPORT_TIMEOUT, and stop exporting."""
    global _provider
    if _provider is None:
        return
    provider, _provider = _provider, None
    # The SDK would wait up to 30 s for a collector that does not answer; a
    # daemon thread lets the stop go ahead once the budget is spent.
    flush = threading.Thread(target=provider.shutdown, name="span-flush", daemon=True)
    flush.start()
    flush.join(span_flush_seconds())
    if flush.is_alive():
        logging.getLogger(__name__).warning(
            "span export did not finish within OTEL_BSP_EXPORT_TIMEOUT; dropping the rest"
        )
