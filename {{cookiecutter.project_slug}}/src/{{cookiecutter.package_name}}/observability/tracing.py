"""Traces: the OpenTelemetry SDK, exporting over OTLP/HTTP with protobuf.

FastAPI (>= 0.142) records its own server span once a tracer provider is
given to it, so no instrumentation library is layered on top: that would
record every request twice. Its per-operation spans (dependencies, endpoint,
serialization) cost several spans per request and are opt-in through
`APP_TRACE_OPERATION_SPANS`.

Everything else follows the standard variables: OTEL_EXPORTER_OTLP_ENDPOINT
(the SDK appends /v1/traces), OTEL_TRACES_EXPORTER (`none` exports nothing), OTEL_TRACES_SAMPLER and _ARG (default:
parent-based always-on), OTEL_BSP_* for the batch queue, and
OTEL_RESOURCE_ATTRIBUTES / OTEL_SERVICE_NAME, which win over the settings.

Spans are exported from a background thread through a bounded queue: when
the collector is down or slow, requests do not wait for it, the oldest spans
are dropped once the queue is full, and the exporter logs the failure.
"""

import os

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

# Bounded by the span flush on shutdown; the compose stop grace period is longer.
_DEFAULT_EXPORT_TIMEOUT_MS = "5000"

_provider: TracerProvider | None = None


def setup_tracing(settings: Settings) -> TracerProvider:
    """Create the process's tracer provider once; later calls return it.

    Called from the app factory, so every worker process builds its own
    provider and export thread after the fork (never in a preloading parent).
    """
    global _provider  # noqa: PLW0603 - one provider per process
    if _provider is None:
        os.environ.setdefault("OTEL_BSP_EXPORT_TIMEOUT", _DEFAULT_EXPORT_TIMEOUT_MS)
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


def telemetry_config(settings: Settings, provider: TracerProvider) -> TelemetryConfig:
    """What FastAPI's native telemetry records: one server span per request."""
    return {
        "tracer_provider": provider,
        "tracing": True,
        "operation_spans": settings.trace_operation_spans,
        "metrics": False,  # prometheus-client owns the HTTP metrics
        "logs": False,  # logs go to stdout, where the log shipper collects them
        "auto_configure": False,
        "exclude": lambda scope: scope.get("path") in EXCLUDED_PATHS,
    }


def instrument_client(client: httpx.AsyncClient, provider: TracerProvider) -> None:
    """Outgoing requests get a client span and carry `traceparent` downstream."""
    HTTPXClientInstrumentor.instrument_client(client, tracer_provider=provider)


def shutdown_tracing() -> None:
    """Flush queued spans (bounded by OTEL_BSP_EXPORT_TIMEOUT) and stop exporting."""
    global _provider  # noqa: PLW0603
    if _provider is not None:
        _provider.shutdown()
        _provider = None
