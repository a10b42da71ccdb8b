{%- set observed = cookiecutter.use_json_logging or cookiecutter.use_metrics or cookiecutter.use_tracing -%}
"""The application factory: settings, then observability, then routes."""

import gc
{%- if cookiecutter.use_json_logging %}
import logging
{%- endif %}
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
from fastapi import FastAPI

from .api import health, items
from .errors import BodyLimit, install_error_handlers
{%- if observed %}
from .observability.context import RequestContextMiddleware, RouteResolver
{%- else %}
from .observability.context import RequestContextMiddleware
{%- endif %}
{%- if cookiecutter.use_json_logging %}
from .observability.logging import configure_logging, flush_logs, log_request
{%- endif %}
{%- if cookiecutter.use_metrics %}
from .observability.metrics import (
    event_loop_monitor,
    forget_this_process,
    request_finished,
    request_started,
    setup_metrics,
)
{%- endif %}
{%- if cookiecutter.use_tracing %}
from .observability.tracing import (
    configure_tracing,
    flush_spans,
    server_spans,
    telemetry_config,
    watch_export,
)
{%- endif %}
from .settings import Settings, get_settings{% if cookiecutter.use_json_logging %}, summary{% endif %}


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
{%- if cookiecutter.use_json_logging %}
    configure_logging(settings)
{%- endif %}
{%- if cookiecutter.use_tracing %}
    configure_tracing()  # once per process: a no-op under opentelemetry-instrument
    {% if cookiecutter.use_json_logging %}tracing = {% endif %}watch_export()
{%- endif %}

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
{%- if cookiecutter.use_metrics %}
        async with (
            event_loop_monitor(),
            httpx.AsyncClient(timeout=settings.downstream_timeout_seconds) as client,
        ):
{%- else %}
        async with httpx.AsyncClient(timeout=settings.downstream_timeout_seconds) as client:
{%- endif %}
            app.state.http_client = client
            # What startup built lives as long as the process. Frozen, it is left out of
            # the collector's full passes, each of which would otherwise walk all of it
            # and stall every request for about 30 ms.
            gc.collect()
            gc.freeze()
{%- if cookiecutter.use_json_logging %}
{%- if cookiecutter.use_tracing %}
            logging.getLogger(__name__).info("started: %s; %s", summary(settings), tracing)
{%- else %}
            logging.getLogger(__name__).info("started: %s", summary(settings))
{%- endif %}
{%- endif %}
            yield
{%- if cookiecutter.use_metrics %}
        forget_this_process()
{%- endif %}
{%- if cookiecutter.use_tracing %}
        flush_spans(settings.span_flush_seconds)
{%- endif %}
{%- if cookiecutter.use_json_logging %}
        flush_logs()
{%- endif %}

    app = FastAPI(
        title=settings.title,
        description=settings.description,
        version=settings.version,
        # Not `debug`: Starlette's debug page would replace the JSON error format, whose
        # handler (errors.py) adds the stack trace in debug mode instead.
        docs_url="/docs" if settings.api_docs else None,
        redoc_url="/redoc" if settings.api_docs else None,
        openapi_url="/openapi.json" if settings.api_docs else None,
        lifespan=lifespan,
{%- if cookiecutter.use_tracing %}
        telemetry=telemetry_config(settings),
{%- else %}
        telemetry={"tracing": False, "metrics": False, "logs": False},
{%- endif %}
    )
    # Routes that depend on get_settings see these settings, not a second copy from the environment.
    app.dependency_overrides[get_settings] = lambda: settings
    install_error_handlers(app, debug=settings.debug)
    app.add_middleware(
        BodyLimit, max_body_bytes=settings.max_body_bytes, timeout=settings.body_timeout_seconds
    )
{%- if observed %}
    app.add_middleware(
        RequestContextMiddleware,
{%- if cookiecutter.use_metrics %}
        on_start=[request_started],
{%- endif %}
{%- if cookiecutter.use_json_logging or cookiecutter.use_metrics %}
        on_finish=[
{%- if cookiecutter.use_metrics %}
            request_finished,
{%- endif %}
{%- if cookiecutter.use_json_logging %}
            log_request,
{%- endif %}
        ],
{%- endif %}
        resolve_route=RouteResolver(lambda: app.routes),
{%- if cookiecutter.use_tracing %}
        spans=server_spans(settings),
{%- endif %}
    )
{%- else %}
    app.add_middleware(RequestContextMiddleware)
{%- endif %}
{%- if cookiecutter.use_metrics %}
    setup_metrics(app, settings)
{%- endif %}
    app.include_router(health.router)
    app.include_router(items.router)
    return app
