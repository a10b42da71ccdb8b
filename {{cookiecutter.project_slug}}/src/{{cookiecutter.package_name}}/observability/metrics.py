"""Metrics: RED metrics in Prometheus form of the OpenTelemetry HTTP conventions.

- `http_server_request_duration_seconds{http_request_method, http_route,
  http_response_status_code, url_scheme, error_type}`: a histogram with the semconv
  buckets{% if cookiecutter.use_tracing %} and, for sampled requests, an exemplar with the trace_id{% endif %}; `error_type` only on
  failures (the exception's class, or the status code of a 5xx response).
- `http_server_active_requests{http_request_method, url_scheme}`: requests in flight.
- `app_build_info{version, commit, python_version}`: always 1.
- `app_event_loop_lag_seconds`: the worst delay, over the last 15 s, of a timer the event
  loop should run every 50 ms: a blocking call in async code shows up here first.

Labels stay bounded: routes are templates (`/items/{item_id}`), unmatched paths are
`__unmatched__`, unknown methods `_OTHER`; probes and scrapes are not recorded.

With several workers (`APP_WORKERS` > 1) each process writes its samples to files in
`PROMETHEUS_MULTIPROC_DIR` and /metrics merges them, except {% if cookiecutter.use_tracing %}exemplars and {% endif %}process and GC
metrics, which the client library cannot merge: prefer one worker per container.
"""

import asyncio
import os
import platform
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress

from fastapi import FastAPI, Request, Response
from prometheus_client import REGISTRY, CollectorRegistry, Gauge, Histogram, start_http_server
from prometheus_client.exposition import choose_encoder
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

from ..settings import Settings
from .context import RequestInfo

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# OpenTelemetry's advisory buckets for http.server.request.duration, in seconds.
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)

REQUEST_DURATION = Histogram(
    "http_server_request_duration_seconds",
    "Duration of HTTP server requests.",
    ["http_request_method", "http_route", "http_response_status_code", "url_scheme", "error_type"],
    buckets=DURATION_BUCKETS,
)
ACTIVE_REQUESTS = Gauge(
    "http_server_active_requests",
    "Number of HTTP server requests in flight.",
    ["http_request_method", "url_scheme"],
    multiprocess_mode="livesum",
)
BUILD_INFO = Gauge(
    "app_build_info",
    "Version and commit of the running service; always 1.",
    ["version", "commit", "python_version"],
    multiprocess_mode="max",
)
EVENT_LOOP_LAG = Gauge(
    "app_event_loop_lag_seconds",
    "Worst delay of the event loop's timers over the last 15 seconds.",
    multiprocess_mode="livemax",
)
# Checked often, so that a stall of the loop always covers a check; kept as the worst of a window
# as long as Prometheus' scrape interval, so that no stall falls between two scrapes (the lag of
# the last check alone would show a scrape only what happened in its last 50 ms).
EVENT_LOOP_CHECK_SECONDS = 0.05
EVENT_LOOP_WINDOW_SECONDS = 15.0

# Label lookups take a lock; caching the children keeps the request path to a dict get.
_duration_children: dict[tuple[str, str, int, str, str | None], Histogram] = {}
_active_children: dict[tuple[str, str], Gauge] = {}


def request_started(method: str, scheme: str) -> None:
    key = (method, scheme)
    gauge = _active_children.get(key)
    if gauge is None:
        gauge = _active_children[key] = ACTIVE_REQUESTS.labels(method, scheme)
    gauge.inc()


def request_finished(info: RequestInfo) -> None:
    _active_children[info.method, info.scheme].dec()
    key = (info.method, info.route, info.status, info.scheme, info.error_type)
    histogram = _duration_children.get(key)
    if histogram is None:
        # An empty error_type is no label at all to Prometheus: requests that did not fail.
        histogram = _duration_children[key] = REQUEST_DURATION.labels(
            info.method, info.route, str(info.status), info.scheme, info.error_type or ""
        )
{%- if cookiecutter.use_tracing %}
    exemplar = {"trace_id": info.trace_id} if info.sampled and info.trace_id is not None else None
{%- endif %}
    histogram.observe(info.duration{% if cookiecutter.use_tracing %}, exemplar{% endif %})


def forget_this_process() -> None:
    """On a worker's way out: its live gauges leave the merged totals, its counters stay."""
    if os.environ.get(MULTIPROC_ENV):
        mark_process_dead(os.getpid())


@asynccontextmanager
async def event_loop_monitor(
    interval: float = EVENT_LOOP_CHECK_SECONDS, window: float = EVENT_LOOP_WINDOW_SECONDS
) -> AsyncIterator[None]:
    """Measure event-loop lag while the app runs (enter it in the lifespan)."""

    async def measure() -> None:
        loop = asyncio.get_running_loop()
        # (when, lag) of the checks that may still be the worst of the window:
        # lags in decreasing order, so the first is the window's maximum.
        candidates: deque[tuple[float, float]] = deque()
        while True:
            expected = loop.time() + interval
            await asyncio.sleep(interval)
            now = loop.time()
            lag = max(0.0, now - expected)
            while candidates and candidates[-1][1] <= lag:
                candidates.pop()
            candidates.append((now, lag))
            while candidates[0][0] < now - window:
                candidates.popleft()
            EVENT_LOOP_LAG.set(candidates[0][1])

    task = asyncio.create_task(measure(), name="event-loop-lag")
    try:
        yield
    finally:
        task.cancel()
        with suppress(asyncio.CancelledError):
            await task


def _scrape_registry() -> CollectorRegistry:
    if os.environ.get(MULTIPROC_ENV):
        registry = CollectorRegistry()
        MultiProcessCollector(registry)
        return registry
    return REGISTRY


def setup_metrics(app: FastAPI, settings: Settings) -> None:
    BUILD_INFO.labels(settings.version, settings.git_commit, platform.python_version()).set(1)
    if settings.metrics_port is not None:
        # A separate listener keeps /metrics off the port the public reaches. With several
        # workers the parent process serves it, once for all (see __main__.py).
        if settings.workers == 1:
            start_http_server(settings.metrics_port, settings.host, _scrape_registry())
        return

    def metrics(request: Request) -> Response:
        # OpenMetrics or the classic text format, as the scraper's Accept asks.
        encoder, content_type = choose_encoder(request.headers.get("accept", ""))
        return Response(encoder(_scrape_registry()), headers={"Content-Type": content_type})

    app.add_api_route("/metrics", metrics, methods=["GET"], include_in_schema=False)
