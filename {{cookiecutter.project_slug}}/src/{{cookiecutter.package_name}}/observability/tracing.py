"""Traces: the OpenTelemetry SDK, exporting over OTLP/HTTP with protobuf.

One server span per request, named and attributed as the HTTP semantic
conventions say, is recorded by the request middleware (context.py): that
costs about half of what FastAPI's native per-request tracing does. FastAPI's
native tracing takes over only when its per-operation spans (dependencies,
endpoint, serialization) are asked for with `APP_TRACE_OPERATION_SPANS`. No
instrumentation library is layered on top: every request has one server span.

Everything else follows the standard variables: OTEL_EXPORTER_OTLP_ENDPOINT
(the SDK appends /v1/traces), OTEL_TRACES_EXPORTER (`none` exports nothing),
OTEL_TRACES_SAMPLER and _ARG (default: parent-based always-on), OTEL_BSP_* for
the batch queue, and OTEL_RESOURCE_ATTRIBUTES / OTEL_SERVICE_NAME, which win
over the settings.

Spans are exported from a background thread through a bounded queue
(OTEL_BSP_MAX_QUEUE_SIZE, 2048): when the collector is down or slow, requests
do not wait for it, the oldest spans are dropped once the queue is full, and
the export failures are logged at most once a minute per kind of message. On
shutdown the queue is flushed for at most OTEL_BSP_EXPORT_TIMEOUT; what a dead
collector cannot take by then is dropped rather than holding up the stop.
"""

import logging
import os
import threading
import time

import httpx
from fastapi.telemetry import TelemetryConfig
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
from opentelemetry.sdk.resources import OTELResourceDetector, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from ..settings import Settings
from .context import EXCLUDED_PATHS

# Bounds the span flush on shutdown; the compose stop grace period is longer.
_DEFAULT_EXPORT_TIMEOUT_MS = "5000"
_DEFAULT_EXPORT_BATCH_SIZE = "64"
# The SDK loggers that report export failures, once per retry of every batch.
_EXPORT_LOGGERS = (
    "opentelemetry.exporter.otlp.proto.http.trace_exporter",
    "opentelemetry.sdk._shared_internal",
    "opentelemetry.sdk.trace.export",
)

_provider: TracerProvider | None = None


class RateLimitFilter(logging.Filter):
    """Lets one record per message template through per interval, counting the rest.

    A filter runs only after the record exists (a stack walk and a LogRecord,
    several microseconds), and the SDK logs once per dropped span: thousands a
    second while a dead collector keeps the queue full. So a logger that
    repeats itself is also muted for `mute_seconds`; its records are then not
    even created, and the count of suppressed ones becomes a lower bound.
    """

    def __init__(self, interval_seconds: float = 60.0, mute_seconds: float = 1.0) -> None:
        super().__init__()
        self.interval = interval_seconds
        self.mute_seconds = mute_seconds
        self._last: dict[tuple[str, object], float] = {}
        self._suppressed: dict[tuple[str, object], int] = {}
        self._muted: set[str] = set()
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.name, record.msg)
        now = time.monotonic()
        with self._lock:
            if now - self._last.get(key, -self.interval) < self.interval:
                self._suppressed[key] = self._suppressed.get(key, 0) + 1
                self._mute(record.name)
                return False
            self._last[key] = now
            suppressed = self._suppressed.pop(key, 0)
        if suppressed:
            record.msg = f"{record.msg} (at least {suppressed} similar messages suppressed)"
        return True

    def _mute(self, name: str) -> None:
        if name in self._muted:
            return
        self._muted.add(name)
        logging.getLogger(name).disabled = True  # checked before a record is built
        unmute = threading.Timer(self.mute_seconds, self._unmute, (name,))
        unmute.daemon = True
        unmute.start()

    def _unmute(self, name: str) -> None:
        with self._lock:
            self._muted.discard(name)
            logging.getLogger(name).disabled = False


_rate_limit = RateLimitFilter()


def setup_tracing(settings: Settings) -> TracerProvider:
    """Create the process's tracer provider once; later calls return it.

    Called from the app factory, so every worker process builds its own
    provider and export thread after the fork (never in a preloading parent).
    """
    global _provider  # noqa: PLW0603 - one provider per process
    if _provider is None:
        os.environ.setdefault("OTEL_BSP_EXPORT_TIMEOUT", _DEFAULT_EXPORT_TIMEOUT_MS)
        # The exporter encodes each batch in Python while holding the GIL: batches of
        # 64 spans instead of the SDK's 512 cut the latency spikes this causes to a
        # quarter (benchmarks/faults.py in the template repository).
        os.environ.setdefault("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", _DEFAULT_EXPORT_BATCH_SIZE)
        for name in _EXPORT_LOGGERS:
            exporter_logger = logging.getLogger(name)
            if _rate_limit not in exporter_logger.filters:
                exporter_logger.addFilter(_rate_limit)
        resource = Resource.create(
            {
                "service.name": settings.service_name,
                "service.version": settings.version,
                "deployment.environment.name": settings.environment,
            }
        ).merge(OTELResourceDetector().detect())
        _provider = TracerProvider(resource=resource)
        # OTEL_TRACES_EXPORTER=none keeps trace ids in logs and exemplars with no backend.
        if os.environ.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower() != "none":
            _provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        if not isinstance(trace.get_tracer_provider(), TracerProvider):
            # The global provider can be set once per process; FastAPI and httpx get
            # theirs passed explicitly, this one serves `trace.get_tracer()` in app code.
            trace.set_tracer_provider(_provider)
    return _provider


def server_tracer(settings: Settings, provider: TracerProvider) -> trace.Tracer | None:
    """The tracer of the request middleware's server span; None leaves the span to FastAPI."""
    if settings.trace_operation_spans:
        return None
    return provider.get_tracer(__name__)


def telemetry_config(settings: Settings, provider: TracerProvider) -> TelemetryConfig:
    """FastAPI's native tracing, only when its per-operation spans are asked for.

    Otherwise the request middleware records the one server span per request,
    at about half the cost (see benchmarks/ in the template repository).
    """
    return {
        "tracer_provider": provider,
        "tracing": settings.trace_operation_spans,
        "operation_spans": settings.trace_operation_spans,
        "metrics": False,  # prometheus-client owns the HTTP metrics
        "logs": False,  # logs go to stdout, where the log shipper collects them
        "auto_configure": False,
        "exclude": lambda scope: scope.get("path") in EXCLUDED_PATHS,
    }


def instrument_client(client: httpx.AsyncClient, provider: TracerProvider) -> None:
    """Outgoing requests get a client span and carry `traceparent` downstream."""
    HTTPXClientInstrumentor.instrument_client(client, tracer_provider=provider)


def _export_timeout_seconds() -> float:
    try:
        return float(os.environ.get("OTEL_BSP_EXPORT_TIMEOUT", _DEFAULT_EXPORT_TIMEOUT_MS)) / 1000
    except ValueError:
        return float(_DEFAULT_EXPORT_TIMEOUT_MS) / 1000


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
    flush.join(_export_timeout_seconds())
    if flush.is_alive():
        logging.getLogger(__name__).warning(
            "span export did not finish within OTEL_BSP_EXPORT_TIMEOUT; dropping the rest"
        )
